"""Importance sampling by an upper bound of the per-sample gradient norm (Katharopoulos & Fleuret
2018, "Not All Samples Are Created Equal: Deep Learning with Importance Sampling", ICML).

What it changes: which sequences each step trains on, and their loss weights. Each step reads a
pool of ``pool_factor * B`` candidate sequences (``configure`` multiplies the loaded batch size),
scores every candidate with a gradient-free forward pass, samples B of them with replacement with
probability p_i proportional to the score, and weights each chosen sample's loss by 1 / (N * p_i)
(N = pool size), which makes the weighted mean gradient an unbiased estimate of the pool's mean
gradient (eq. 2-3). The paper's score is an upper bound of the gradient norm computed from the
last layer; here the score is the per-sequence loss, the cheaper proxy the paper compares against
(its "loss" baseline), as the technique's option ``score = "loss"`` says. The paper switches
sampling on only once the estimated variance reduction is large enough; here it is on from step 0.

Charging: the scoring forward runs in ``select_batch``, inside the training clock. Tokens count the
whole pool (every candidate was read and scored). The learning-rate schedule and budget see the
loaded (pool) batch size, so with a token budget this cell takes ``pool_factor`` times fewer steps.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal

import torch

from benchbed.techniques.base import Technique, TechniqueError, register
from benchbed.workloads import Batch


def unbiased_weighted_loss(per_sequence_loss, model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """mean_i w_i * loss_i with w_i = 1 / (N p_i): unbiased for the pool mean (not self-normalised).
    `per_sequence_loss(model, batch)` is the workload's per-sequence loss."""
    if batch.weights is None:
        return per_sequence_loss(model, batch).mean()
    return (per_sequence_loss(model, batch) * batch.weights).mean()


@dataclass(frozen=True)
class GradNormSamplingConfig:
    pool_factor: int = 3  # candidates per trained sequence (the paper's presampling size B / b)
    score: Literal["loss"] = "loss"

    def check(self) -> None:
        if self.pool_factor < 2:
            raise ValueError(
                f"pool_factor: must be >= 2 (a pool larger than the batch), got {self.pool_factor}"
            )
        if self.score != "loss":
            raise ValueError(f"score: only 'loss' is implemented, got {self.score!r}")


@register
class GradNormSampling(Technique):
    """Importance sampling of sequences by per-sample loss from a larger candidate pool."""

    name = "grad_norm_sampling"
    category = "data/importance_sampling"
    paper = "Katharopoulos & Fleuret 2018, Not All Samples Are Created Equal: Deep Learning with Importance Sampling"
    Config = GradNormSamplingConfig
    conflicts = ("lr_scaling",)  # it changes the loaded batch size, which lr_scaling would read

    def __init__(self, config=None):
        super().__init__(config)
        self.train_batch_size = 0
        self.generator: torch.Generator | None = None

    def validate(self, cell):
        if "token_dropping" in cell.get("techniques", ()):
            raise TechniqueError(
                "techniques: grad_norm_sampling scores whole sequences; combine it without token_dropping"
            )

    def configure(self, run):
        self.train_batch_size = run.batch_size
        run.batch_size = run.batch_size * self.config.pool_factor
        run.extra["importance_sampling_pool"] = run.batch_size

    def build_model(self, model, ctx):
        ctx.loss_fn = functools.partial(unbiased_weighted_loss, ctx.workload.per_sequence_loss)
        self.generator = torch.Generator(device=ctx.device)
        self.generator.manual_seed(ctx.run.seed + 2)
        return model

    @torch.no_grad()
    def select_batch(self, batch, ctx):
        with ctx.autocast():
            scores = ctx.workload.per_sequence_loss(ctx.model, batch).float()
        n = scores.numel()
        probs = scores.clamp_min(1e-12) / scores.clamp_min(1e-12).sum()
        chosen = torch.multinomial(probs, self.train_batch_size, replacement=True, generator=self.generator)
        weights = 1.0 / (n * probs[chosen])
        return Batch(batch.inputs[chosen], batch.targets[chosen], weights)
