"""What techniques see: the run settings and the train context with its step primitives.

`RunSettings` is what `Technique.configure(run)` may change (precision, batch size, learning rate,
process count); `TrainContext` holds the model, optimizer, loss and the primitives techniques compose
(SAM calls `forward_backward` twice, then `optimizer_step`); `compose_step` chains the techniques'
`train_step` wrappers around `default_step`. The loss is the workload's unless a technique replaces
`ctx.loss_fn`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch

from benchbed.techniques.base import Technique
from benchbed.workloads import Batch, Workload


@dataclass
class RunSettings:
    """Settings techniques may change in `configure(run)`."""

    device: torch.device
    seed: int
    batch_size: int
    base_batch_size: int  # the workload's batch size, for learning-rate scaling rules
    seq_len: int
    lr: float
    weight_decay: float
    betas: tuple[float, float]
    warmup_frac: float
    grad_clip: float | None
    budget_tokens: int | None
    budget_steps: int | None
    budget_seconds: float | None
    eval_every_tokens: int
    target_loss: float
    stop_at_target: bool = True
    autocast_dtype: torch.dtype | None = None
    grad_scaling: bool = False  # fp16 needs a GradScaler; bf16 does not
    world_size: int = 1  # processes training together
    rank: int = 0
    # data parallelism: ranks reading distinct slices of each global batch, and this rank's slice
    # (None: every process is a data-parallel rank). Tensor and pipeline parallel ranks share a slice.
    data_parallel_size: int | None = None
    data_parallel_rank: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # technique-to-loop notes, recorded in results
    # result columns a technique measured itself (each declared in results/schema.py)
    columns: dict[str, Any] = field(default_factory=dict)

    @property
    def dp_size(self) -> int:
        return self.world_size if self.data_parallel_size is None else self.data_parallel_size

    @property
    def dp_rank(self) -> int:
        return self.rank if self.data_parallel_rank is None else self.data_parallel_rank

    @property
    def global_batch_size(self) -> int:
        """Sequences per optimizer step over all data-parallel ranks (`batch_size` is per rank)."""
        return self.batch_size * self.dp_size

    @property
    def tokens_per_step(self) -> int:
        """Global tokens per optimizer step: the budget counts every data-parallel rank's batch."""
        return self.global_batch_size * self.seq_len

    @property
    def total_steps(self) -> int | None:
        limits = []
        if self.budget_tokens is not None:
            limits.append(max(1, self.budget_tokens // self.tokens_per_step))
        if self.budget_steps is not None:
            limits.append(self.budget_steps)
        return min(limits) if limits else None


class TrainContext:
    """What hooks see: the run settings, the model and optimizer, and step primitives that
    techniques compose (SAM calls `forward_backward` twice, then `optimizer_step`)."""

    def __init__(self, run: RunSettings, workload: Workload | None, techniques: list[Technique]):
        self.run = run
        self.workload = workload
        self.techniques = techniques
        self.device = run.device
        self.model: torch.nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        # the workload's loss unless a technique replaces it (tests may pass workload=None and set it)
        self.loss_fn: Callable[[torch.nn.Module, Batch], torch.Tensor] | None = (
            workload.loss if workload is not None else None
        )
        self.scaler: torch.amp.GradScaler | None = None
        # seams parallel techniques replace: evaluation (a pipeline evaluates across its stages) and
        # gradient clipping (the norm of sharded or staged gradients is a collective)
        self.evaluate_fn = workload.evaluate if workload is not None else None
        self.clip_grads: Callable[[float], Any] = lambda max_norm: torch.nn.utils.clip_grad_norm_(
            self.model.parameters(), max_norm
        )
        self.step = 0
        self.tokens = 0
        self.train_time_s = 0.0

    # -- primitives ----------------------------------------------------------------------------
    def autocast(self):
        if self.run.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.run.autocast_dtype)

    def forward_loss(self, batch: Batch) -> torch.Tensor:
        with self.autocast():
            return self.loss_fn(self.model, batch)

    def forward_backward(self, batch: Batch) -> torch.Tensor:
        """Loss and gradients for `batch` (gradients accumulate); returns the detached loss."""
        loss = self.forward_loss(batch)
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
        return loss.detach()

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def optimizer_step(self) -> None:
        """Unscale (fp16), clip, step, update the scaler."""
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if self.run.grad_clip:
            self.clip_grads(self.run.grad_clip)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()

    def progress(self) -> float:
        """Fraction of the budget used, in [0, 1]: the largest over the budgets given."""
        fractions = [0.0]
        total = self.run.total_steps
        if total:
            fractions.append(self.step / total)
        if self.run.budget_seconds:
            fractions.append(self.train_time_s / self.run.budget_seconds)
        return min(1.0, max(fractions))

    def lr_factor(self) -> float:
        p, w = self.progress(), self.run.warmup_frac
        if w > 0 and p < w:
            return (p + 1e-3) / w
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (p - w) / max(1e-9, 1.0 - w))))


def default_step(ctx: TrainContext, batch: Batch) -> torch.Tensor:
    ctx.zero_grad()
    loss = ctx.forward_backward(batch)
    ctx.optimizer_step()
    return loss


def compose_step(ctx: TrainContext) -> Callable[[Batch, int], torch.Tensor]:
    """Chain the techniques' `train_step` wrappers around the default step, first technique outermost."""

    def run(batch: Batch, step: int) -> torch.Tensor:
        def call(i: int, b: Batch) -> torch.Tensor:
            if i == len(ctx.techniques):
                return default_step(ctx, b)
            return ctx.techniques[i].train_step(ctx, b, step, lambda nb: call(i + 1, nb))

        return call(0, batch)

    return run
