"""What techniques see: the run settings and the train context with its step primitives.

`RunSettings` is what `Technique.configure(run)` may change (precision, batch size, learning rate,
process count); a technique that changes the batch says so through `RunSettings.change_batch`, which
records the change and the learning-rate rule it applied. `TrainContext` holds the model, optimizer,
loss and the primitives techniques compose (SAM calls `forward_backward` twice, then
`optimizer_step`); `compose_step` chains the techniques' `train_step` wrappers around `default_step`.
The loss is the workload's unless a technique replaces `ctx.loss_fn`.

The budget unit is the same for every cell: tokens actually trained on, over all processes
(``world_size x batch_size x seq_len`` per step; for a technique that selects its batch from a
larger pool, the selected batch, the pool's reading and scoring still on the clock).

Measurement seams techniques use (no-ops unless the worker is measuring a sampled step, see
``benchbed.measure``): `extra_work()` marks work that is not the model's forward and backward of
the step (SAM's ascent pass, SNIP's scoring, importance-sampling scores), `recompute()` marks a
rematerialisation (activation checkpointing), `hold_for_backward(t)` names a tensor kept alive for
backward outside autograd's saved tensors (a checkpoint's inputs), `count_opaque_flops(n)` reports
the FLOPs of a kernel the counter cannot see (a Triton launch).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch

from benchbed.measure import flops, memory
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
    world_size: int = 1  # processes training together (data parallelism); tokens count all of them
    rank: int = 0
    # sequences read per step and process when a technique trains on a selection from a larger pool
    # (importance sampling); None: batch_size. Only the trained (selected) batch counts against the budget.
    read_batch_size: int | None = None
    lr_rule: str = "none"  # the learning-rate rule applied for a changed batch (recorded as `lr_rule`)
    batch_changes: list[dict[str, Any]] = field(default_factory=list)  # who changed the batch, how
    extra: dict[str, Any] = field(default_factory=dict)  # technique-to-loop notes, recorded in results

    @property
    def global_batch_size(self) -> int:
        """Sequences trained per optimizer step over all processes."""
        return self.batch_size * self.world_size

    @property
    def loaded_batch_size(self) -> int:
        """Sequences read per step by each process (the pool of a selecting technique)."""
        return self.read_batch_size if self.read_batch_size is not None else self.batch_size

    @property
    def tokens_per_step(self) -> int:
        """Tokens trained per optimizer step over all processes: the budget's unit."""
        return self.global_batch_size * self.seq_len

    def batch_shape(self) -> tuple[int, int, int | None]:
        return (self.batch_size, self.world_size, self.read_batch_size)

    def change_batch(
        self,
        by: str,
        *,
        batch_size: int | None = None,
        world_size: int | None = None,
        read_batch_size: int | None = None,
        lr_rule: str = "none",
    ) -> None:
        """The one way `configure` changes the batch: the trained batch per process, the process
        count, or the pool read per step; `lr_rule` names the learning-rate rule the technique applied
        for it ("none" when it left the learning rate alone). Recorded in the results (`lr_rule`,
        `global_batch_size`, `world_size`, and `run_extra.batch_changes`); a technique that changes
        the batch without saying so is refused when the cell is assembled."""
        before = {
            "batch_size": self.batch_size,
            "world_size": self.world_size,
            "read_batch_size": self.read_batch_size,
        }
        if batch_size is not None:
            self.batch_size = batch_size
        if world_size is not None:
            self.world_size = world_size
        if read_batch_size is not None:
            self.read_batch_size = read_batch_size
        after = {
            "batch_size": self.batch_size,
            "world_size": self.world_size,
            "read_batch_size": self.read_batch_size,
        }
        if lr_rule != "none":
            self.lr_rule = lr_rule if self.lr_rule == "none" else f"{self.lr_rule}+{lr_rule}"
        self.batch_changes.append(
            {"by": by, "before": before, "after": after, "lr_rule": lr_rule, "lr": self.lr}
        )

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
        self.step = 0
        self.tokens = 0
        self.train_time_s = 0.0
        self.model_changes = 0  # bumped by `note_model_changed`: the FLOP counter counts again

    def note_model_changed(self) -> None:
        """A schedule changed the model's structure (growth, a different depth): the next step's
        FLOPs are counted again."""
        self.model_changes += 1

    def make_optimizer(self) -> torch.optim.Optimizer | None:
        """The optimizer of the model's trainable parameters, from the first technique that supplies
        one; sets it as `self.optimizer` and returns the one it replaces (None at the start)."""
        params = [p for p in self.model.parameters() if p.requires_grad]
        previous = self.optimizer
        for t in self.techniques:
            opt = t.build_optimizer(params, self)
            if opt is not None:
                self.optimizer = opt
                break
        if self.optimizer is previous:
            raise RuntimeError("no technique supplied an optimizer (the runner adds adamw by default)")
        for group in self.optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        return previous

    def replace_model(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        """Train `model` from the next step on (a technique that rebuilds the network mid-run: a
        compressed model, a structured ticket): a new optimizer is built for it through the
        techniques; the old one is returned so its state can be carried over."""
        self.model = model
        return self.make_optimizer()

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
        """Unscale (fp16), let techniques edit the gradients (`on_gradients`: pruning masks), clip,
        step, update the scaler. Clipping sees the gradients the optimizer will use."""
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        for t in self.techniques:
            t.on_gradients(self)
        if self.run.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.run.grad_clip)
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
        """Linear warm-up over `warmup_frac` of the budget, then cosine decay to zero at its end.

        With a step budget the warm-up is (step + 1) / warmup_steps, never above 1 (the peak is
        reached, not overshot, on the last warm-up step); with only a seconds budget the first step's
        offset is 1e-3 of the budget."""
        p, w = self.progress(), self.run.warmup_frac
        if w > 0 and p < w:
            total = self.run.total_steps
            offset = 1.0 / total if total else 1e-3
            return min(1.0, (p + offset) / w)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (p - w) / max(1e-9, 1.0 - w))))

    # -- measurement seams (no-ops unless the worker is measuring a sampled step) ---------------
    @staticmethod
    def extra_work():
        """Context: FLOPs inside are hardware work, not the model's useful forward and backward."""
        return flops.extra_work()

    @staticmethod
    @contextmanager
    def recompute():
        """Context: a rematerialisation (hardware FLOPs; its tensors count as saved while alive)."""
        with flops.extra_work(), memory.recompute_scope():
            yield

    @staticmethod
    def count_opaque_flops(n: float, extra: float = 0.0) -> None:
        """FLOPs of a kernel the counter cannot see (a Triton launch), by the equivalent op's formula;
        `extra` of them are hardware-only work (a recomputation)."""
        flops.add_opaque(n, extra)

    @staticmethod
    def hold_for_backward(tensor: torch.Tensor) -> None:
        """`tensor` is kept alive for backward outside autograd's saved tensors (a checkpoint's input)."""
        memory.hold(tensor)


def default_step(ctx: TrainContext, batch: Batch) -> torch.Tensor:
    ctx.zero_grad()
    loss = ctx.forward_backward(batch)
    ctx.optimizer_step()
    return loss


def run_step(
    ctx: TrainContext, batch: Batch, step_fn: Callable[[Batch, int], torch.Tensor] | None = None
) -> tuple[torch.Tensor, int]:
    """One training step as the clock sees it: the techniques' batch selection, the learning rate
    of this step, the composed step, the techniques' after-step schedules. Returns the detached
    loss and the tokens the step trained on in this process (the selected batch)."""
    for t in ctx.techniques:
        batch = t.select_batch(batch, ctx)
    factor = ctx.lr_factor()
    for group in ctx.optimizer.param_groups:
        group["lr"] = group["initial_lr"] * factor
    loss = (step_fn or compose_step(ctx))(batch, ctx.step)
    for t in ctx.techniques:
        t.after_step(ctx)
    return loss, batch.n_tokens


def compose_step(ctx: TrainContext) -> Callable[[Batch, int], torch.Tensor]:
    """Chain the techniques' `train_step` wrappers around the default step, first technique outermost."""

    def run(batch: Batch, step: int) -> torch.Tensor:
        def call(i: int, b: Batch) -> torch.Tensor:
            if i == len(ctx.techniques):
                return default_step(ctx, b)
            return ctx.techniques[i].train_step(ctx, b, step, lambda nb: call(i + 1, nb))

        return call(0, batch)

    return run
