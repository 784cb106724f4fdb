"""A workload that is not a GPT, in one file: a two-layer MLP regressing a noisy linear map.

y = x @ w_true + noise, noise ~ N(0, sigma^2), so the loss floor of the mean squared error is
exactly sigma^2. It exists to show that the train loop calls the workload and never names a model
family; the tests register it and train it through the real loop.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
from torch import nn

from benchbed.workloads import Batch, DataSource, Workload, register

FEATURES = 8
NOISE_STD = 0.1


class NoisyLinearSource(DataSource):
    vocab_size = 0  # not a token source

    def __init__(self, seed: int = 4321):
        g = torch.Generator().manual_seed(seed)
        self.w_true = torch.randn(FEATURES, 1, generator=g)
        self.loss_floor = NOISE_STD**2

    def _sample(self, n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(n, FEATURES, generator=g)
        return x, x @ self.w_true + NOISE_STD * torch.randn(n, 1, generator=g)

    def train_batches(self, batch_size, seq_len, seed):
        g = torch.Generator().manual_seed(int(seed) + 1)
        while True:
            yield self._sample(batch_size, g)

    def val_batches(self, batch_size, seq_len, n_sequences):
        x, y = self._sample(n_sequences, torch.Generator().manual_seed(99))
        return list(zip(x.split(batch_size), y.split(batch_size), strict=True))

    def fingerprint(self) -> str:
        return hashlib.sha256(self.w_true.numpy().tobytes()).hexdigest()[:16]


@dataclass(frozen=True, kw_only=True)
class MLPRegression(Workload):
    hidden: int = 32
    family: str = "mlp"

    @property
    def seq_len(self) -> int:
        return 1  # one target per example: the budget counts examples

    def build_model(self) -> nn.Module:
        return nn.Sequential(nn.Linear(FEATURES, self.hidden), nn.GELU(), nn.Linear(self.hidden, 1))

    def per_sequence_loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        return ((model(batch.inputs) - batch.targets) ** 2).mean(dim=1)

    def flops_per_token(self, model: nn.Module) -> float:
        return 6.0 * sum(p.numel() for p in model.parameters())

    def describe_model(self) -> str:
        return f"MLP {FEATURES}-{self.hidden}-1"


MLP_REGRESSION = register(
    MLPRegression(
        name="mlp-regression-test",
        description="two-layer MLP on a noisy linear map (a test workload that is not a GPT)",
        make_data=NoisyLinearSource,
        data_label="noisy linear map, sigma 0.1",
        batch_size=32,
        lr=1e-2,
        weight_decay=0.0,
        warmup_frac=0.05,
        budget_tokens=32 * 300,
        target_loss=0.05,
        eval_every_tokens=32 * 25,
        val_sequences=512,
        grad_clip=None,
    )
)
