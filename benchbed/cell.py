"""One cell, in its own process: `python -m benchbed.cell SPEC.json OUT_DIR`.

Builds the techniques from the spec, trains, samples telemetry, and writes `OUT_DIR/parts/<cell_id>/`
atomically. Progress goes to stdout as JSON lines (`{"event": "eval", ...}`) for the runner's
progress bar. A Python exception inside training is caught and recorded with its status (`oom` for
an out-of-memory error, `error` otherwise) together with the curve so far; a hard crash is recorded
by the runner from the exit code and the tail of stderr.
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import torch

from benchbed import store
from benchbed.config import Cell
from benchbed.data import DataError
from benchbed.measure.flops import mfu
from benchbed.techniques import REGISTRY, build_config
from benchbed.train import (
    RunSettings,
    TrainContext,
    build,
    default_device,
    seed_everything,
    train,
)
from benchbed.workloads import WORKLOADS, with_data


def git_sha() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=os.path.dirname(__file__),
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, (torch.cuda.OutOfMemoryError, MemoryError)) or "out of memory" in str(exc).lower()


def base_row(spec: dict) -> dict:
    cell = Cell.from_spec(spec)
    return {
        "run_id": spec.get("run_id"),
        "cell_id": spec["cell_id"],
        "config_key": spec["config_key"],
        "variant": spec["variant"],
        "scenario": cell.scenario,
        "workload": cell.workload,
        "techniques": spec["techniques_label"],
        "options_json": json.dumps(cell.options, sort_keys=True),
        "batch_size": cell.batch_size,
        "lr": cell.lr,
        "seed": cell.seed,
        "repeat": cell.repeat,
        "device": cell.device,
        "baseline": cell.baseline,
        "is_baseline": bool(spec["is_baseline"]),
        "target_loss": cell.target_loss,
        "config_json": json.dumps(cell.config(), sort_keys=True, default=str),
        "torch_version": torch.__version__,
        "git_sha": spec.get("git_sha"),
        "error": None,
        "started_at": now_iso(),
    }


def failure_row(spec: dict, status: str, error: str) -> dict:
    """The row of a cell that produced no results (crash, timeout, bad data)."""
    row = base_row(spec)
    nan = math.nan
    row.update(
        status=status,
        error=error,
        time_to_target_s=nan,
        tokens_to_target=nan,
        steps_to_target=nan,
        energy_to_target_j=nan,
        energy_source="unavailable",
        final_val_loss=nan,
        best_val_loss=nan,
        train_time_s=nan,
        eval_time_s=nan,
        warmup_time_s=nan,
        tokens_per_s=nan,
        peak_mem_bytes=nan,
        mem_source="unavailable",
        mfu=nan,
        params=nan,
    )
    return row


def train_cell(spec: dict, emit=lambda event: None) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    """Run one cell in this process: (cells row, curves frame, telemetry frame)."""
    from benchbed.measure.telemetry import Telemetry

    wall0 = time.perf_counter()
    started = now_iso()
    cell = Cell.from_spec(spec)
    device = default_device(cell.device)
    seed_everything(cell.seed, device)
    workload = with_data(WORKLOADS[cell.workload], cell.data, cell.base_dir)
    techniques = [
        REGISTRY[n](build_config(REGISTRY[n], cell.options.get(n, {}), f"techniques.{n}"))
        for n in cell.techniques
    ]
    run = RunSettings(
        device=device,
        seed=cell.seed,
        batch_size=cell.batch_size,
        base_batch_size=workload.batch_size,
        seq_len=workload.seq_len,
        lr=cell.lr,
        weight_decay=workload.weight_decay,
        betas=workload.betas,
        warmup_frac=workload.warmup_frac,
        grad_clip=workload.grad_clip,
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
    row = base_row(spec)
    row.update(
        device_name=torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or platform.machine(),
        loss_floor=math.nan,
        started_at=started,
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
    for key in store.CURVE_COLUMNS:
        if key not in curves:
            curves[key] = pd.Series(dtype=float)
    failure = failure_row(spec, outcome.get("status", "error"), outcome.get("error"))
    row = {**failure, **row, **outcome, **summary}
    row["error"] = outcome.get("error")
    model = ctx.model
    params = sum(p.numel() for p in model.parameters())
    flops_per_token = _flops_per_token(model)
    row.update(
        params=params,
        trainable_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
        flops_per_token=flops_per_token,
        mfu=mfu(flops_per_token, row.get("tokens_per_s", math.nan), device),
        wall_time_s=time.perf_counter() - wall0,
        finished_at=now_iso(),
        run_extra=json.dumps(run.extra, default=str),
    )
    return row, curves[store.CURVE_COLUMNS], telemetry.samples()


def _flops_per_token(model: torch.nn.Module) -> float:
    inner = getattr(model, "module", model)  # parallel wrappers keep the model as .module
    fn = getattr(inner, "flops_per_token", None)
    return float(fn()) if fn is not None else math.nan


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m benchbed.cell SPEC.json OUT_DIR", file=sys.stderr)
        return 2
    spec = json.loads(Path(argv[0]).read_text())
    out_dir = Path(argv[1])
    threads = os.environ.get("BENCHBED_THREADS")
    if threads:
        torch.set_num_threads(int(threads))

    def emit(event: dict) -> None:
        print(json.dumps(event, default=float), flush=True)

    leader = int(os.environ.get("RANK", "0")) == 0  # under torchrun only rank 0 reports
    try:
        row, curves, telemetry = train_cell(spec, emit=emit if leader else lambda event: None)
    except DataError as exc:
        if leader:
            store.write_part(out_dir, spec["cell_id"], failure_row(spec, "error", str(exc)), None, None)
        print(f"benchbed cell: {exc}", file=sys.stderr)
        return 1
    if leader:
        store.write_part(out_dir, spec["cell_id"], row, curves, telemetry)
        emit({"event": "done", "status": row["status"]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
