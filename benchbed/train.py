"""The train loop of one cell, and the objects techniques see: `Batch`, `RunSettings`, `TrainContext`.

Timing rules (AlgoPerf / MLPerf): the clock runs over training steps only; evaluation pauses it and
is reported separately (`eval_time_s`); the first step, which pays for lazy initialisation and
compilation, is timed separately (`warmup_time_s`; its tokens still count); time-to-target is the
training time at the first evaluation whose validation loss is at or below the target. Data
generation happens outside the clock (the synthetic generator is an artefact of the benchmark, not
of the technique); everything a technique does inside a step is inside it.

The learning-rate schedule is budget-aware: linear warm-up, then cosine decay to zero exactly at
the end of the budget, where "progress" is the largest fraction used of any budget given (tokens,
steps, seconds).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from benchbed.models.gpt import GPT
from benchbed.techniques.base import Technique
from benchbed.workloads import Workload

IGNORE_INDEX = -100


@dataclass
class Batch:
    inputs: torch.Tensor  # [B, T] int64
    targets: torch.Tensor  # [B, T] int64; IGNORE_INDEX positions carry no loss
    weights: torch.Tensor | None = None  # optional per-sequence loss weights [B] (importance sampling)

    @property
    def n_tokens(self) -> int:
        return self.inputs.numel()

    def to(self, device: torch.device) -> Batch:
        w = None if self.weights is None else self.weights.to(device, non_blocking=True)
        return Batch(self.inputs.to(device, non_blocking=True), self.targets.to(device, non_blocking=True), w)


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
    extra: dict[str, Any] = field(default_factory=dict)  # technique-to-loop notes, recorded in results

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len

    @property
    def total_steps(self) -> int | None:
        limits = []
        if self.budget_tokens is not None:
            limits.append(max(1, self.budget_tokens // self.tokens_per_step))
        if self.budget_steps is not None:
            limits.append(self.budget_steps)
        return min(limits) if limits else None


def per_sequence_loss(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """Mean next-token cross-entropy of each sequence over its non-ignored targets, [B]."""
    logits = model(batch.inputs)
    per_token = F.cross_entropy(
        logits.view(-1, logits.size(-1)).float(),
        batch.targets.view(-1),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    ).view(batch.targets.shape)
    mask = (batch.targets != IGNORE_INDEX).float()
    return (per_token * mask).sum(1) / mask.sum(1).clamp_min(1.0)


def default_loss(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """Mean next-token cross-entropy over non-ignored targets; with per-sequence weights, their
    self-normalised weighted mean of per-sequence losses."""
    if batch.weights is None:
        logits = model(batch.inputs)
        return F.cross_entropy(
            logits.view(-1, logits.size(-1)).float(), batch.targets.view(-1), ignore_index=IGNORE_INDEX
        )
    return (per_sequence_loss(model, batch) * batch.weights).sum() / batch.weights.sum()


class TrainContext:
    """What hooks see: the run settings, the model and optimizer, and step primitives that
    techniques compose (SAM calls `forward_backward` twice, then `optimizer_step`)."""

    def __init__(self, run: RunSettings, workload: Workload, techniques: list[Technique]):
        self.run = run
        self.workload = workload
        self.techniques = techniques
        self.device = run.device
        self.model: torch.nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.loss_fn: Callable[[torch.nn.Module, Batch], torch.Tensor] = default_loss
        self.scaler: torch.amp.GradScaler | None = None
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


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def evaluate(ctx: TrainContext, val_batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    model = ctx.model
    was_training = model.training
    model.eval()
    total, count = torch.zeros((), dtype=torch.float64, device=ctx.device), 0
    for inputs, targets in val_batches:
        b = Batch(inputs, targets).to(ctx.device)
        n = int((targets != IGNORE_INDEX).sum())
        with ctx.autocast():
            logits = model(b.inputs)
        loss = F.cross_entropy(
            logits.view(-1, logits.size(-1)).float(), b.targets.view(-1), ignore_index=IGNORE_INDEX
        )
        total += loss.double() * n
        count += n
    model.train(was_training)
    return float(total / max(count, 1))


class Diverged(RuntimeError):
    pass


def seed_everything(seed: int, device: torch.device) -> None:
    """Same seed -> identical curves on the CPU (its kernels are deterministic; a test checks it).
    `torch.use_deterministic_algorithms` is not called: it imports the compiler stack (1.5 s per
    cell) and on a GPU would swap in slower kernels than users train with."""
    torch.manual_seed(seed)


def build(ctx: TrainContext) -> None:
    """Model and optimizer through the technique lifecycle (wrappers last)."""
    run = ctx.run
    torch.manual_seed(run.seed)
    model: torch.nn.Module = GPT(ctx.workload.model).to(run.device)
    ctx.model = model
    ordered = [t for t in ctx.techniques if not t.wraps_model] + [t for t in ctx.techniques if t.wraps_model]
    for t in ordered:
        ctx.model = t.build_model(ctx.model, ctx)
    params = [p for p in ctx.model.parameters() if p.requires_grad]
    for t in ctx.techniques:
        opt = t.build_optimizer(params, ctx)
        if opt is not None:
            ctx.optimizer = opt
            break
    if ctx.optimizer is None:
        raise RuntimeError("no technique supplied an optimizer (the runner adds adamw by default)")
    for group in ctx.optimizer.param_groups:
        group.setdefault("initial_lr", group["lr"])
    if run.grad_scaling:
        ctx.scaler = torch.amp.GradScaler(run.device.type)


def train(
    ctx: TrainContext,
    data,
    telemetry,
    emit: Callable[[dict], None] = lambda event: None,
    clock: Callable[[], float] = time.perf_counter,
) -> dict:
    """Train until the budget is spent (or the target is reached, if `stop_at_target`).

    Returns a dict with the cell's outcome columns and `curves` (list of dicts)."""
    run = ctx.run
    device = run.device
    val_batches = data.val_batches(run.batch_size, run.seq_len, ctx.workload.val_sequences)
    # each data-parallel rank reads its own stream; rank 0's is the single-process stream
    train_iter = data.train_batches(run.batch_size, run.seq_len, run.seed + 1_000_003 * run.rank)
    step_fn = compose_step(ctx)
    curves: list[dict] = []
    result: dict[str, Any] = {
        "time_to_target_s": math.nan,
        "tokens_to_target": math.nan,
        "steps_to_target": math.nan,
        "energy_to_target_j": math.nan,
    }
    eval_time_s = warmup_time_s = 0.0
    train_losses: list[torch.Tensor] = []
    best = math.inf
    status = "budget_exhausted"

    def do_eval() -> float:
        nonlocal eval_time_s, best
        sync(device)
        t0 = clock()
        val = evaluate(ctx, val_batches)
        eval_time_s += clock() - t0
        train_loss = float(torch.stack(train_losses).float().mean()) if train_losses else math.nan
        train_losses.clear()
        row = {
            "step": ctx.step,
            "tokens": ctx.tokens,
            "train_time_s": ctx.train_time_s,
            "energy_j": telemetry.training_energy_j(),
            "train_loss": train_loss,
            "val_loss": val,
        }
        curves.append(row)
        best = min(best, val)
        emit({"event": "eval", **row, "progress": ctx.progress()})
        return val

    initial = do_eval()
    divergence_limit = max(2.0 * initial, initial + 2.0)
    next_eval = run.eval_every_tokens
    ctx.model.train()
    while True:
        inputs, targets = next(train_iter)
        batch = Batch(inputs, targets).to(device)
        n_tokens = batch.n_tokens * run.world_size
        warmup = ctx.step == 0  # lazy init / compilation: timed separately, outside the energy windows
        sync(device)
        if not warmup:
            telemetry.window_start()
        t0 = clock()
        for t in ctx.techniques:
            batch = t.select_batch(batch, ctx)
        factor = ctx.lr_factor()
        for group in ctx.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor
        loss = step_fn(batch, ctx.step)
        for t in ctx.techniques:
            t.after_step(ctx)
        sync(device)
        elapsed = clock() - t0
        if warmup:
            warmup_time_s = elapsed
        else:
            telemetry.window_end()
            ctx.train_time_s += elapsed
        ctx.step += 1
        ctx.tokens += n_tokens
        train_losses.append(loss.float())
        loss_value = float(loss) if (device.type == "cpu" or ctx.step % 10 == 0) else None
        if loss_value is not None and (not math.isfinite(loss_value) or loss_value > divergence_limit):
            status = "diverged"
            result["error"] = f"training loss {loss_value:.4g} at step {ctx.step} (start {initial:.4g})"
            break
        done = ctx.progress() >= 1.0
        if ctx.tokens >= next_eval or done:
            next_eval = (ctx.tokens // run.eval_every_tokens + 1) * run.eval_every_tokens
            val = do_eval()
            if not math.isfinite(val) or val > divergence_limit:
                status = "diverged"
                result["error"] = f"validation loss {val:.4g} at step {ctx.step} (start {initial:.4g})"
                break
            if val <= run.target_loss and math.isnan(result["time_to_target_s"]):
                status = "reached"
                result.update(
                    time_to_target_s=ctx.train_time_s,
                    tokens_to_target=ctx.tokens,
                    steps_to_target=ctx.step,
                    energy_to_target_j=curves[-1]["energy_j"],
                )
                if run.stop_at_target:
                    break
        if done:
            break

    final = curves[-1]["val_loss"] if curves else math.nan
    result.update(
        status=status,
        final_val_loss=final,
        best_val_loss=best,
        train_time_s=ctx.train_time_s,
        eval_time_s=eval_time_s,
        warmup_time_s=warmup_time_s,
        steps=ctx.step,
        tokens=ctx.tokens,
        tokens_per_s=(ctx.tokens - run.tokens_per_step * run.world_size) / ctx.train_time_s
        if ctx.train_time_s > 0
        else math.nan,
        curves=curves,
    )
    return result


def default_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def cpu_threads() -> int:
    return int(os.environ.get("BENCHBED_THREADS", "0")) or torch.get_num_threads()
