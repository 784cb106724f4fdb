"""The train loop of one cell, and the objects techniques see: `Batch`, `RunSettings`, `TrainContext`.

Timing rules (AlgoPerf / MLPerf): the clock runs over training steps only; evaluation pauses it and
is reported separately (`eval_time_s`); lazy initialisation and compilation are paid before the
clock starts by one warm-up step that is the same for every cell and is undone afterwards
(`warmup_time_s`, see ``benchbed.worker.offclock``), so every training step, the first included, is
on the clock with everything its techniques do (SNIP's scoring, SAM's second pass, importance
sampling's scoring forward). Time-to-target is the training time at the first evaluation whose
validation loss is at or below the target. Data generation happens outside the clock (the synthetic
generator is an artefact of the benchmark, not of the technique). Sampled steps are measured (FLOPs,
saved activations) on a replica off the clock before the timed step runs.

Evaluation runs in float32 for every cell (no autocast), with the workload's loss, so a
reduced-precision cell is judged against the target exactly as a float32 one.

Budget: tokens trained on over all processes, counted from the batch each step actually trains on
(for importance sampling the selected batch, not the pool it was chosen from).

The learning-rate schedule is budget-aware: linear warm-up, then cosine decay to zero exactly at
the end of the budget, where "progress" is the largest fraction used of any budget given (tokens,
steps, seconds).
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable
from typing import Any

import torch

from benchbed.measure.flops import FlopSampler
from benchbed.worker.context import TrainContext, compose_step, run_step
from benchbed.worker.offclock import measure_step, warm_up
from benchbed.workloads import Batch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def evaluate(ctx: TrainContext, val_batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """The workload's evaluation metric on the validation batches (the target is on it), in float32
    for every cell: no autocast, whatever precision the cell trains in."""
    return ctx.workload.evaluate(ctx.model, val_batches, ctx.device)


class Diverged(RuntimeError):
    pass


def seed_everything(seed: int, device: torch.device) -> None:
    """Same seed -> identical curves on the CPU (its kernels are deterministic; a test checks it).
    `torch.use_deterministic_algorithms` is not called: it imports the compiler stack (1.5 s per
    cell) and on a GPU would swap in slower kernels than users train with."""
    torch.manual_seed(seed)


WARMUP_SEED = 7_777_777  # the warm-up batch's stream, apart from every training stream


def train(
    ctx: TrainContext,
    data,
    telemetry,
    emit: Callable[[dict], None] = lambda event: None,
    clock: Callable[[], float] = time.perf_counter,
    measure: bool = True,
) -> dict:
    """Train until the budget is spent (or the target is reached, if `stop_at_target`).

    Returns a dict with the cell's outcome columns, `curves` (list of dicts) and `measured` (the
    FLOP sampler and the memory figures of the sampled steps; `measure=False` skips them)."""
    run = ctx.run
    device = run.device
    val_batches = data.val_batches(run.batch_size, run.seq_len, ctx.workload.val_sequences)
    # each data-parallel rank reads its own stream; rank 0's is the single-process stream
    train_iter = data.train_batches(run.loaded_batch_size, run.seq_len, run.seed + 1_000_003 * run.rank)
    step_fn = compose_step(ctx)
    # a step whose FLOPs are drawn at random (layer drop) needs more counted steps for its mean
    sampler = FlopSampler(fractions=16 if any(t.stochastic_flops for t in ctx.techniques) else 4)
    measured: dict[str, Any] = {"sampler": sampler, "errors": []}
    peaks = {"saved_activation_bytes": 0, "grad_bytes": 0, "optimizer_state_bytes": 0}
    model_changes = ctx.model_changes
    cuda_peak = 0.0
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
    # lazy initialisation and compilation: one step, the same for every cell, undone afterwards
    warm_inputs, warm_targets = next(data.train_batches(run.batch_size, run.seq_len, WARMUP_SEED + run.rank))
    sync(device)
    t0 = clock()
    warm_up(ctx, Batch(warm_inputs, warm_targets).to(device))
    sync(device)
    warmup_time_s = clock() - t0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    while True:
        inputs, targets = next(train_iter)
        batch = Batch(inputs, targets).to(device)
        if measure and sampler.due(ctx.step, ctx.progress()):
            if device.type == "cuda":  # the replica's copies must not count in the cell's allocated peak
                # (the caching allocator keeps their blocks reserved: max_memory_reserved_bytes says so)
                sync(device)
                cuda_peak = max(cuda_peak, torch.cuda.max_memory_allocated(device))
            try:  # on a replica, off the clock; a failure costs the figures, never the cell
                m = measure_step(ctx, batch)
                sampler.add(m.count, ctx.progress())
                for key in peaks:
                    peaks[key] = max(peaks[key], getattr(m, key))
            except Exception as exc:  # noqa: BLE001
                measure = False
                measured["errors"].append(f"step {ctx.step}: {type(exc).__name__}: {exc}")
            finally:
                if device.type == "cuda":
                    gc.collect()
                    torch.cuda.reset_peak_memory_stats(device)
        sync(device)
        telemetry.window_start()
        t0 = clock()
        loss, trained = run_step(ctx, batch, step_fn)
        sync(device)
        ctx.train_time_s += clock() - t0
        telemetry.window_end()
        if ctx.model_changes != model_changes:
            model_changes = ctx.model_changes
            sampler.model_changed()
        ctx.step += 1
        ctx.tokens += trained * run.world_size
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
        tokens_per_s=ctx.tokens / ctx.train_time_s if ctx.train_time_s > 0 else math.nan,
        curves=curves,
        measured=measured,
    )
    if sampler.counts:
        measured.update(peaks)
    if device.type == "cuda":
        measured["cuda_peak_allocated_bytes"] = float(max(cuda_peak, torch.cuda.max_memory_allocated(device)))
    return result
