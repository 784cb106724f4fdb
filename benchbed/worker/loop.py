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
import time
from collections.abc import Callable
from typing import Any

import torch

from benchbed.measure.ranks import SavedActivations
from benchbed.worker.context import TrainContext, compose_step
from benchbed.workloads import Batch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def evaluate(ctx: TrainContext, val_batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """The workload's evaluation metric on the validation batches (the target is on it)."""
    return ctx.evaluate_fn(ctx.model, val_batches, ctx.device, ctx.autocast)


def data_shard(batches, rank: int, size: int):
    """This data-parallel rank's slice of each global batch: ranks together train on exactly the
    batches a single process reads at the global batch size (same seed), so a parallel cell and a
    single-process cell at the same global batch see the same data."""
    for inputs, targets in batches:
        yield inputs[rank * size : (rank + 1) * size], targets[rank * size : (rank + 1) * size]


class Diverged(RuntimeError):
    pass


def seed_everything(seed: int, device: torch.device) -> None:
    """Same seed -> identical curves on the CPU (its kernels are deterministic; a test checks it).
    `torch.use_deterministic_algorithms` is not called: it imports the compiler stack (1.5 s per
    cell) and on a GPU would swap in slower kernels than users train with."""
    torch.manual_seed(seed)


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
    # every rank reads the global stream and keeps its data-parallel slice (all of it when alone)
    train_iter = data.train_batches(run.global_batch_size, run.seq_len, run.seed)
    if run.dp_size > 1:
        train_iter = data_shard(train_iter, run.dp_rank, run.batch_size)
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
        n_tokens = batch.n_tokens * run.dp_size  # global tokens
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
        if warmup:  # the activations kept for backward, counted on the step timed apart
            with SavedActivations(device) as saved:
                loss = step_fn(batch, ctx.step)
            result["saved_activation_peak_bytes"] = float(saved.peak)
        else:
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
        tokens_per_s=(ctx.tokens - run.tokens_per_step) / ctx.train_time_s
        if ctx.train_time_s > 0
        else math.nan,
        curves=curves,
    )
    return result
