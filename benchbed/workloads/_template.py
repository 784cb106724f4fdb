"""Copy me to benchbed/workloads/<name>.py to add a workload (files starting with _ are skipped).

A workload owns its model factory, data, loss, evaluation (the metric the target is on), target and
default budget, and FLOPs formula; the train loop calls these and never names a model family. Say
where the target comes from (the data's loss floor, a calibration run) and what the budget unit is
(`seq_len` target positions per example). tests/workloads/mlp_regression.py is a complete example
that is not a language model. See docs/workloads.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from benchbed.workloads.base import Workload, register
from benchbed.workloads.batch import Batch
from benchbed.workloads.data import MarkovCopySource


@dataclass(frozen=True, kw_only=True)
class TemplateWorkload(Workload):
    width: int = 64
    family: str = "template"  # techniques that edit a model check the family

    @property
    def seq_len(self) -> int:
        return 63  # target positions per example: the token unit of the budget

    def build_model(self) -> nn.Module:
        return nn.Sequential(nn.Embedding(32, self.width), nn.Linear(self.width, 32))

    def per_sequence_loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        logits = model(batch.inputs)
        per_token = nn.functional.cross_entropy(logits.transpose(1, 2), batch.targets, reduction="none")
        return per_token.mean(dim=1)

    # optional: importance sampling's score, ||d loss_i / d logits_i|| per example, from one forward
    # (see LanguageModelWorkload.output_gradient_norm for softmax cross-entropy's closed form)
    # def output_gradient_norm(self, model, batch) -> torch.Tensor: ...

    def flops_per_token(self, model: nn.Module) -> float:
        # a formula, recorded beside the FLOPs the worker counts on real steps (for comparison)
        return 6.0 * sum(p.numel() for p in model.parameters())


def _register() -> None:  # call at module level in the copy: register(TemplateWorkload(...))
    register(
        TemplateWorkload(
            name="template",
            description="what it trains, on what, for which device",
            make_data=lambda: MarkovCopySource(vocab_size=32, prefix_len=32),
            data_label="markov-copy V=32 prefix=32",
            batch_size=32,
            lr=1e-2,
            weight_decay=0.1,
            warmup_frac=0.05,
            budget_tokens=2_000_000,
            target_loss=0.70,
            eval_every_tokens=64 * 32 * 63,
            val_sequences=256,
        )
    )
