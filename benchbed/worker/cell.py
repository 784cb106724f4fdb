"""One cell, in this process: build it from its spec, train it, sample telemetry, make its row.

A Python exception inside training is caught and recorded with its status (`oom` for an
out-of-memory error, `error` otherwise) together with the curve so far; a hard crash is recorded by
the runner from the exit code and the tail of stderr.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
import traceback

import pandas as pd
import torch

from benchbed.measure.flops import mfu
from benchbed.measure.telemetry import Telemetry
from benchbed.plan import Cell
from benchbed.results.schema import CURVE_COLUMN_NAMES, new_row, now_iso
from benchbed.worker.assemble import build, default_device, run_settings
from benchbed.worker.context import TrainContext
from benchbed.worker.loop import seed_everything, train
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
        started_at=now_iso(),
    )


def train_cell(spec: dict, emit=lambda event: None) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    """Run one cell in this process: (cells row, curves frame, telemetry frame)."""
    wall0 = time.perf_counter()
    row = identity_row(spec)
    cell = Cell.from_spec(spec)
    device = default_device(cell.device)
    seed_everything(cell.seed, device)
    workload = WORKLOADS[cell.workload].with_data(cell.data, cell.base_dir)
    techniques = [cell.technique(n) for n in cell.techniques]
    run = run_settings(
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
    view = {**cell.view(), "device": device.type, "launched": True}
    for t in techniques:
        t.validate(view)
    for t in techniques:
        t.configure(run)
    row["device_name"] = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or platform.machine()
    )
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
    outcome: dict
    try:
        outcome = train(ctx, data, telemetry, emit=emit)
    except Exception as exc:  # recorded, not raised: the curve so far is still worth keeping
        outcome = {
            "status": "oom" if _is_oom(exc) else "error",
            "error": "".join(traceback.format_exception_only(type(exc), exc)).strip()[-2000:],
            "curves": [],
        }
        traceback.print_exc()
    finally:
        summary = telemetry.stop()
    curves = pd.DataFrame(outcome.pop("curves", []))
    if len(curves):
        curves.insert(0, "cell_id", cell.cell_id)
    for key in CURVE_COLUMN_NAMES:
        if key not in curves:
            curves[key] = pd.Series(dtype=float)
    row.update(outcome)
    row.update(summary)
    row["error"] = outcome.get("error")
    model = ctx.model
    flops_per_token = workload.flops_per_token(model)
    row.update(
        params=sum(p.numel() for p in model.parameters()),
        trainable_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
        flops_per_token=flops_per_token,
        mfu=mfu(flops_per_token, row["tokens_per_s"], device),
        wall_time_s=time.perf_counter() - wall0,
        finished_at=now_iso(),
        run_extra=json.dumps(run.extra, default=str),
        **effective_hyperparameters(ctx.optimizer),
    )
    return row, curves[CURVE_COLUMN_NAMES], telemetry.samples()
