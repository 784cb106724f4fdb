"""Importance sampling by an upper bound of the per-sample gradient norm (Katharopoulos & Fleuret
2018, "Not All Samples Are Created Equal: Deep Learning with Importance Sampling", ICML).

What it changes: which sequences each step trains on, and their loss weights. Each step reads a
pool of ``pool_factor * B`` candidate sequences, scores every candidate with one gradient-free
forward pass, samples B of them with replacement with probability p_i proportional to the score,
and weights each chosen sample's loss by 1 / (N p_i) (N = pool size), so the weighted mean loss and
gradient are unbiased estimates of the pool's means (eq. 2-3).

The score (``score = "grad_norm_bound"``, the default) is the paper's upper bound of the
per-sample gradient norm (section 3.2, eq. 20): the norm of the loss gradient with respect to the
last layer's pre-activation output, i.e. the logits. For softmax cross-entropy it is
softmax(z) - onehot(y) per token, so it comes from the scoring forward at almost no cost (the
workload's ``output_gradient_norm``). ``score = "loss"`` samples by the per-sequence loss instead
(the paper's "loss" baseline). The paper switches sampling on only once the estimated variance
reduction is large enough; here it is on from step 0.

Budget and charging: the trained (selected) batch counts against the token budget, the same B
sequences per step as the baseline, so the cell takes the baseline's number of steps on the
baseline's schedule; the pool is declared in ``configure`` (``run.change_batch(read_batch_size=)``,
no learning-rate rule). Reading and scoring the pool runs in ``select_batch``, inside the training
clock, and as extra work for the FLOP counter (hardware FLOPs, not model FLOPs).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal

import torch

from benchbed.techniques.base import Technique, TechniqueError, register
from benchbed.workloads import WORKLOADS, Batch, Workload

SCORES = ("grad_norm_bound", "loss")


def unbiased_weighted_loss(per_sequence_loss, model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """mean_i w_i * loss_i with w_i = 1 / (N p_i): unbiased for the pool mean (not self-normalised).
    `per_sequence_loss(model, batch)` is the workload's per-sequence loss."""
    if batch.weights is None:
        return per_sequence_loss(model, batch).mean()
    return (per_sequence_loss(model, batch) * batch.weights).mean()


def sample(
    scores: torch.Tensor, k: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """k indices drawn with replacement with p_i proportional to `scores`, and their weights
    1 / (N p_i)."""
    positive = scores.float().clamp_min(1e-12)
    probs = positive / positive.sum()
    chosen = torch.multinomial(probs, k, replacement=True, generator=generator)
    return chosen, 1.0 / (scores.numel() * probs[chosen])


@dataclass(frozen=True)
class GradNormSamplingConfig:
    pool_factor: int = 3  # candidates per trained sequence (the paper's presampling size B / b)
    score: Literal["grad_norm_bound", "loss"] = "grad_norm_bound"

    def check(self) -> None:
        if self.pool_factor < 2:
            raise ValueError(
                f"pool_factor: must be >= 2 (a pool larger than the batch), got {self.pool_factor}"
            )
        if self.score not in SCORES:
            raise ValueError(f"score: one of {', '.join(SCORES)}, got {self.score!r}")


@register
class GradNormSampling(Technique):
    """Importance sampling by the per-sample gradient-norm bound, from a larger candidate pool."""

    name = "grad_norm_sampling"
    category = "data/importance_sampling"
    paper = "Katharopoulos & Fleuret 2018, Not All Samples Are Created Equal: Deep Learning with Importance Sampling"
    Config = GradNormSamplingConfig

    def __init__(self, config=None):
        super().__init__(config)
        self.generator: torch.Generator | None = None

    def validate(self, cell):
        workload = WORKLOADS.get(cell.get("workload", ""))
        no_bound = (
            workload is not None and type(workload).output_gradient_norm is Workload.output_gradient_norm
        )
        if self.config.score == "grad_norm_bound" and no_bound:
            raise TechniqueError(
                f"techniques.grad_norm_sampling.score: workload '{workload.name}' has no output-gradient "
                'norm to score by; use score = "loss" there'
            )

    def configure(self, run):
        run.change_batch(self.name, read_batch_size=run.batch_size * self.config.pool_factor)
        run.extra["importance_sampling_pool"] = run.loaded_batch_size

    def build_model(self, model, ctx):
        workload = ctx.workload
        if (
            self.config.score == "grad_norm_bound"
            and type(workload).output_gradient_norm is Workload.output_gradient_norm
        ):
            raise TechniqueError(
                f"techniques.grad_norm_sampling.score: workload '{workload.name}' has no output-gradient "
                'norm; use score = "loss"'
            )
        ctx.loss_fn = functools.partial(unbiased_weighted_loss, workload.per_sequence_loss)
        self.generator = torch.Generator(device=ctx.device)
        self.generator.manual_seed(ctx.run.seed + 2)
        return model

    def scores(self, ctx, batch: Batch) -> torch.Tensor:
        """The pool's scores, [N]: the gradient-norm bound, or the per-sequence loss."""
        if self.config.score == "loss":
            return ctx.workload.per_sequence_loss(ctx.model, batch).float()
        return ctx.workload.output_gradient_norm(ctx.model, batch).float()

    @torch.no_grad()
    def select_batch(self, batch, ctx):
        with ctx.extra_work(), ctx.autocast():
            scores = self.scores(ctx, batch)
        chosen, weights = sample(scores, ctx.run.batch_size, self.generator)
        return Batch(batch.inputs[chosen], batch.targets[chosen], weights)
