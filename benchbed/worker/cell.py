"""One cell, in this process: build it from its spec, train it, sample telemetry, make its row.

A Python exception inside training is caught and recorded with its status (`oom` for an
out-of-memory error, `error` otherwise) together with the curve so far; a hard crash is recorded by
the runner from the exit code and the tail of stderr.
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
import traceback
from pathlib import Path

import pandas as pd
import torch

from benchbed.measure import carbon, machine, ranks
from benchbed.measure.flops import utilisation
from benchbed.measure.machine import cpu_model
from benchbed.measure.memory import storage_bytes
from benchbed.measure.telemetry import Telemetry
from benchbed.plan import Cell
from benchbed.results.schema import CELL_COLUMN_NAMES, CURVE_COLUMN_NAMES, new_row, now_iso
from benchbed.worker import artifacts
from benchbed.worker.assemble import build, configure, default_device, run_settings
from benchbed.worker.context import TrainContext
from benchbed.worker.loop import seed_everything, train
from benchbed.worker.stream import LiveStream
from benchbed.workloads import WORKLOADS


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, (torch.cuda.OutOfMemoryError, MemoryError)) or "out of memory" in str(exc).lower()


def effective_hyperparameters(optimizer: torch.optim.Optimizer | None) -> dict:
    """The learning rate, weight decay and betas (or momentum) the optimizer actually used, from its
    first parameter group (the decayed matrices)."""
    nan = math.nan
    if optimizer is None or not optimizer.param_groups:
        return {"effective_lr": nan, "effective_weight_decay": nan, "effective_betas": None}
    group = optimizer.param_groups[0]
    betas = group.get("betas")
    if betas is None and "momentum" in group:
        betas = (group["momentum"],)
    return {
        "effective_lr": float(group.get("initial_lr", group.get("lr", nan))),
        "effective_weight_decay": float(group.get("weight_decay", nan)),
        "effective_betas": None if betas is None else json.dumps([float(b) for b in betas]),
    }


def identity_row(spec: dict) -> dict:
    """The row with what the spec says of the cell (configuration, provenance)."""
    return new_row(
        **spec["identity"],
        run_id=spec.get("run_id"),
        git_sha=spec.get("git_sha"),
        torch_version=torch.__version__,
        threads=torch.get_num_threads(),
        started_at=now_iso(),
    )


def _per_rank(ctx: TrainContext, saved_bytes: float) -> list[dict]:
    """Every rank's memory figures (a collective under torch.distributed: every rank calls it after
    training), with the per-rank numbers a technique left in ``run.extra["per_rank"]`` (a dict, or a
    callable giving one now); the table goes into the run notes too."""
    run = ctx.run
    extra = run.extra.pop("per_rank", None)
    if callable(extra):
        extra = extra()
    per_rank = ranks.gather(
        ranks.rank_figures(ctx.model, ctx.optimizer, saved_bytes, run.device, run.rank, extra)
    )
    if run.world_size > 1:
        run.extra["memory_per_rank"] = "\n" + ranks.table(per_rank)
    return per_rank


def _rank_means(per_rank: list[dict]) -> dict:
    """A technique's per-rank figure named like a declared column (e.g. ``pipeline_idle_frac``)
    fills that column with its mean over ranks."""
    keys = {k for r in per_rank for k in r} & set(CELL_COLUMN_NAMES) - set(ranks.RANK_FIGURES)
    out = {}
    for key in keys:
        values = [float(r[key]) for r in per_rank if isinstance(r.get(key), (int, float))]
        out[key] = sum(values) / len(values) if values else math.nan
    return out


def emulated_precision(cell: Cell) -> str | None:
    """The reduced precisions of the cell's techniques that its device only emulates ('+'-joined),
    or None. Such a cell is refused when the scenario is checked unless the technique's
    `allow_emulated` is set."""
    precisions = {cell.technique(n).precision for n in cell.techniques} - {None}
    if not precisions:
        return None
    if cell.device == "cpu":
        states = machine.cpu_capability()["precision"]
    else:
        states = machine.cuda_precision(torch.cuda.current_device())
    return "+".join(sorted(p for p in precisions if states.get(p) != "native")) or None


def cell_run_settings(cell: Cell, workload, device: torch.device):
    """The run settings of a cell (the train loop's, and the profiler's short run of the same cell)."""
    return run_settings(
        workload,
        device,
        seed=cell.seed,
        batch_size=cell.batch_size,
        lr=cell.lr,
        warmup_frac=workload.warmup_frac if cell.warmup_frac is None else cell.warmup_frac,
        budget_tokens=cell.budget_tokens,
        budget_steps=cell.budget_steps,
        budget_seconds=cell.budget_seconds,
        eval_every_tokens=cell.eval_every_tokens,
        target_loss=cell.target_loss,
        stop_at_target=cell.stop_at_target,
        world_size=int(os.environ.get("WORLD_SIZE", "1")),
        rank=int(os.environ.get("RANK", "0")),
    )


def train_cell(
    spec: dict, emit=lambda event: None, out_dir: Path | None = None, stream: bool = True
) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    """Run one cell in this process: (cells row, curves frame, telemetry frame). `out_dir` is the
    results directory, where pretrained bases and stage checkpoints live (worker/artifacts.py);
    with `stream`, the cell's curves and telemetry are also streamed to its live files there while
    it trains (``results.live``; only one rank of a multi-process cell streams)."""
    wall0 = time.perf_counter()
    row = identity_row(spec)
    cell = Cell.from_spec(spec)
    row["emulated_precision"] = emulated_precision(cell)
    row["launcher"] = os.environ.get("BENCHBED_LAUNCHER", "in-process")
    row["partial"] = False
    device = default_device(cell.device)
    seed_everything(cell.seed, device)
    workload = WORKLOADS[cell.workload].with_data(cell.data, cell.base_dir)
    artifacts_dir = None if out_dir is None else Path(out_dir) / "artifacts"
    # inputs first (a missing stage fails before anything trains), then the base (off the clock)
    input_paths, input_metas = artifacts.stage_inputs(cell, artifacts_dir)
    base = artifacts.ensure_base(workload, device, artifacts_dir) if workload.base is not None else None
    if base is not None or input_paths:
        workload = workload.with_inputs(base.path if base else None, input_paths)
        row.update(base.columns() if base else {})
        seed_everything(cell.seed, device)
    techniques = [cell.technique(n) for n in cell.techniques]
    run = cell_run_settings(cell, workload, device)
    view = {**cell.view(), "device": device.type, "launched": True}
    for t in techniques:
        t.validate(view)
    configure(techniques, run)
    # the host kind the gate matches cells by: the GPU's name, or the CPU's model
    row["device_name"] = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()
    row["host"] = socket.gethostname()
    data = workload.make_data()
    if data.loss_floor is not None:
        row["loss_floor"] = float(data.loss_floor)
    row["data_fingerprint"] = data.fingerprint()
    ctx = TrainContext(run, workload, techniques)
    build(ctx)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    telemetry = Telemetry(
        device=device,
        cell_id=cell.cell_id,
        **({"idle_power_w": spec["idle_power_w"]} if "idle_power_w" in spec else {}),
    )
    telemetry.start()
    live = LiveStream(out_dir if stream else None, cell.cell_id, telemetry)
    live.start()

    def emit_and_keep(event: dict) -> None:
        live.on_event(event)
        emit(event)

    outcome: dict
    try:
        outcome = train(ctx, data, telemetry, emit=emit_and_keep)
    except Exception as exc:  # recorded, not raised: the curve so far is still worth keeping
        outcome = {
            "status": "oom" if _is_oom(exc) else "error",
            "error": "".join(traceback.format_exception_only(type(exc), exc)).strip()[-2000:],
            "curves": list(live.curves),
        }
        traceback.print_exc()
    finally:
        summary = telemetry.stop()
        live.stop()
    measured = outcome.pop("measured", {})
    if "cuda_peak_allocated_bytes" in measured and summary.get("mem_source") == "cuda_max_allocated":
        summary["peak_mem_bytes"] = measured["cuda_peak_allocated_bytes"]  # the replicas' copies left out
    per_rank = _per_rank(
        ctx, outcome.pop("saved_activation_peak_bytes", measured.get("saved_activation_bytes", math.nan))
    )
    curves = pd.DataFrame(outcome.pop("curves", []))
    if len(curves):
        curves.insert(0, "cell_id", cell.cell_id)
    for key in CURVE_COLUMN_NAMES:
        if key not in curves:
            curves[key] = pd.Series(dtype=float)
    row.update(outcome)
    row.update(summary)
    if live.errors:
        row["sensor_errors"] = "; ".join(filter(None, [row.get("sensor_errors"), *live.errors]))
    row["error"] = outcome.get("error")
    model = ctx.model
    intensity, _ = carbon.grid_intensity(cell.grid_intensity)
    row["grid_intensity_g_per_kwh"] = intensity
    row["co2_kg"] = carbon.co2_kg(row.get("energy_j"), intensity)  # an estimate; NaN without energy
    row.update(workload.result_columns(model))
    row.update(artifacts.pipeline_columns(row, input_metas))
    if workload.saves_checkpoint and artifacts_dir is not None and int(os.environ.get("RANK", "0")) == 0:
        artifacts.save_stage(model, cell, artifacts_dir, row)
    row.update(measured_columns(ctx, workload, measured, row["steps"], row["tokens_per_s"], per_rank))
    row.update(
        memory_per_rank_json=json.dumps(per_rank, default=float),
        **_rank_means(per_rank),
        **run.columns,
        wall_time_s=time.perf_counter() - wall0,
        finished_at=now_iso(),
        run_extra=json.dumps({**run.extra, "batch_changes": run.batch_changes}, default=str),
        **effective_hyperparameters(ctx.optimizer),
    )
    return row, curves[CURVE_COLUMN_NAMES], telemetry.samples()


def measured_columns(
    ctx: TrainContext,
    workload,
    measured: dict,
    steps: float,
    tokens_per_s: float,
    per_rank: list[dict] | None = None,
) -> dict:
    """Batch, FLOPs and memory columns of a cell: the budget unit, the counted FLOPs per token with
    MFU/HFU, and the bytes of parameters, gradients, optimizer state and saved activations. A model
    split over processes (no counted step) takes rank 0's own figures from `per_rank`."""
    run, model = ctx.run, ctx.model
    nan = math.nan
    split = any(t.splits_model for t in ctx.techniques)
    # a pipeline stage holds part of the model and says how large the whole is
    params, trainable = getattr(model, "whole_model_params", None) or (
        sum(p.numel() for p in model.parameters()),
        sum(p.numel() for p in model.parameters() if p.requires_grad),
    )
    cols = {
        "global_batch_size": run.global_batch_size,
        "world_size": run.world_size,
        "lr_rule": run.lr_rule,
        "params": params,
        "trainable_params": trainable,
        "param_bytes": nan if split else float(storage_bytes(model.parameters())),
        "flops_per_token": workload.flops_per_token(model),
    }
    sampler = measured.get("sampler")
    steps_taken = int(steps) if isinstance(steps, (int, float)) and math.isfinite(steps) else 0
    model_fpt, hardware_fpt = sampler.per_token(steps_taken) if sampler is not None else (nan, nan)
    counted = sampler is not None and bool(sampler.counts)
    cols.update(
        model_flops_per_token=model_fpt,
        hardware_flops_per_token=hardware_fpt,
        flops_counted_steps=json.dumps(sampler.steps) if counted else None,
        mfu=utilisation(model_fpt, tokens_per_s, run.device, run.world_size),
        hfu=utilisation(hardware_fpt, tokens_per_s, run.device, run.world_size),
        saved_activation_bytes=float(measured["saved_activation_bytes"]) if counted else nan,
        grad_bytes=float(measured["grad_bytes"]) if counted else nan,
        optimizer_state_bytes=float(measured["optimizer_state_bytes"]) if counted else nan,
    )
    if split and not counted and per_rank:
        mine = per_rank[0]  # rank 0's own tensors; every rank's are in memory_per_rank_json
        for key in ("param_bytes", "grad_bytes", "optimizer_state_bytes", "saved_activation_bytes"):
            value = mine.get(key)
            cols[key] = float(value) if isinstance(value, (int, float)) else nan
    if measured.get("errors"):
        run.extra["measure_errors"] = measured["errors"]
    return cols
