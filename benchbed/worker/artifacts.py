"""What a cell reads and leaves for others in the results directory's ``artifacts/``: pretrained
bases and pipeline-stage checkpoints.

* A **base** (`ensure_base`) is the model a fine-tuning workload starts from: its `base` workload
  trained once with AdamW through the real train loop (the same clock and energy windows as a
  cell), saved as ``artifacts/bases/<name>-<key>/model.pt`` (a state dict, read back with
  ``torch.load(weights_only=True)``) beside ``base.json`` (its time, energy, tokens and loss). The
  key hashes everything that defines it (model, data fingerprint, optimizer settings, budget, seed,
  device type), so a second run, or the next cell, trains no base; a file lock makes concurrent
  cells wait for the one that trains it. Its time and energy are reported in every row that uses
  it (`pretrain_time_s`, `pretrain_energy_j`) and never added to a fine-tuning cell's clock.
* A **stage checkpoint** (`save_stage`, `stage_inputs`) is a cell's trained model that a later
  stage reads (the reward model, then the policy tuned against it): ``artifacts/stages/...`` (see
  `Cell.output_dir`), with ``stage.json`` (the producing cell, its status, time and energy to
  target). A cell whose input is not there fails at once with one line (`InputMissing`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from benchbed.measure.telemetry import Telemetry
from benchbed.plan import Cell
from benchbed.results.schema import now_iso
from benchbed.techniques import REGISTRY
from benchbed.worker.assemble import build, run_settings
from benchbed.worker.context import TrainContext
from benchbed.worker.loop import train
from benchbed.workloads import InputMissing, Workload

MODEL_FILE = "model.pt"
BASE_JSON = "base.json"
STAGE_JSON = "stage.json"
#: stage outcomes a later stage may read (an errored or diverged stage leaves no checkpoint)
SAVED_STATUSES = ("reached", "budget_exhausted")


@dataclass
class BaseInfo:
    key: str
    path: str  # the state dict
    reused: bool
    pretrain_time_s: float
    pretrain_energy_j: float
    pretrain_tokens: float

    def columns(self) -> dict[str, Any]:
        return {
            "base_key": self.key,
            "base_reused": self.reused,
            "pretrain_time_s": self.pretrain_time_s,
            "pretrain_energy_j": self.pretrain_energy_j,
            "pretrain_tokens": self.pretrain_tokens,
        }


def base_config(workload: Workload, device: torch.device) -> dict[str, Any]:
    """Everything that defines a base: its workload's model and data, optimizer settings, budget,
    seed and device type (a base trained in bf16 on a GPU is not the CPU's fp32 one)."""
    base = workload.base
    model = getattr(base, "model", None)
    return {
        "workload": base.name,
        "model": dataclasses.asdict(model) if dataclasses.is_dataclass(model) else base.describe_model(),
        "data": base.make_data().fingerprint(),
        "batch_size": base.batch_size,
        "lr": base.lr,
        "weight_decay": base.weight_decay,
        "warmup_frac": base.warmup_frac,
        "betas": list(base.betas),
        "grad_clip": base.grad_clip,
        "budget_tokens": base.budget_tokens,
        "seed": workload.base_seed,
        "precision": "bf16_autocast" if device.type == "cuda" else "fp32",
        "device": device.type,
    }


def base_key(workload: Workload, device: torch.device) -> str:
    blob = json.dumps(base_config(workload, device), sort_keys=True, default=str)
    return f"{workload.base.name}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


@contextlib.contextmanager
def file_lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def pretrain(workload: Workload, device: torch.device) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Train `workload.base` for its budget with AdamW (bf16 autocast on a GPU); (state dict, facts)."""
    base = workload.base
    run = run_settings(base, device, seed=workload.base_seed, stop_at_target=False)
    names = ["adamw"] + (["bf16_autocast"] if device.type == "cuda" else [])
    techniques = [REGISTRY[n]() for n in names]
    for t in techniques:
        t.configure(run)
    torch.manual_seed(workload.base_seed)
    ctx = TrainContext(run, base, techniques)
    build(ctx)
    telemetry = Telemetry(device=device, cell_id=f"base-{base.name}")
    telemetry.start()
    try:
        result = train(ctx, base.make_data(), telemetry)
    finally:
        summary = telemetry.stop()
    if result["status"] == "diverged":
        raise RuntimeError(f"pretraining the base {base.name} diverged: {result.get('error')}")
    model = getattr(ctx.model, "module", ctx.model)
    facts = {
        "pretrain_time_s": result["train_time_s"] + result["warmup_time_s"],
        "pretrain_energy_j": summary.get("energy_j", math.nan),
        "energy_source": summary.get("energy_source"),
        "pretrain_tokens": result["tokens"],
        "final_val_loss": result["final_val_loss"],
    }
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}, facts


def ensure_base(workload: Workload, device: torch.device, artifacts: Path | None) -> BaseInfo:
    """The workload's pretrained base from the cache, pretrained (and cached) first if absent."""
    if artifacts is None:
        raise InputMissing(
            f"{workload.name}: fine-tunes a pretrained base, which is cached in a results directory; none given"
        )
    key = base_key(workload, device)
    directory = Path(artifacts) / "bases" / key
    with file_lock(directory.parent / f".{key}.lock"):
        reused = (directory / BASE_JSON).is_file()
        if not reused:
            state, facts = pretrain(workload, device)
            directory.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{key}."))
            try:
                torch.save(state, tmp / MODEL_FILE)
                meta = {"key": key, "config": base_config(workload, device), "created_at": now_iso(), **facts}
                (tmp / BASE_JSON).write_text(json.dumps(meta, indent=2, default=str))
                os.replace(tmp, directory)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
    meta = json.loads((directory / BASE_JSON).read_text())
    return BaseInfo(
        key=key,
        path=str(directory / MODEL_FILE),
        reused=reused,
        pretrain_time_s=_num(meta.get("pretrain_time_s")),
        pretrain_energy_j=_num(meta.get("pretrain_energy_j")),
        pretrain_tokens=_num(meta.get("pretrain_tokens")),
    )


def _num(value) -> float:
    return math.nan if value is None else float(value)


def stage_inputs(cell: Cell, artifacts: Path | None) -> tuple[dict[str, str], dict[str, dict]]:
    """(workload -> checkpoint directory, workload -> its stage.json) for the stages `cell` reads;
    raises `InputMissing` naming the first one that is not there."""
    paths, metas = {}, {}
    for name in sorted(cell.inputs):
        if artifacts is None:
            raise InputMissing(f"{cell.workload}: reads stage '{name}' from a results directory; none given")
        directory = Path(artifacts).parent / cell.input_dir(name)
        if not (directory / STAGE_JSON).is_file():
            raise InputMissing(
                f"{cell.workload}: input missing: stage '{name}' (seed {cell.seed}) left no checkpoint at "
                f"{cell.input_dir(name)}/ -- its cell has not run, or it failed (run it first; see its row)"
            )
        paths[name] = str(directory)
        metas[name] = json.loads((directory / STAGE_JSON).read_text())
    return paths, metas


def pipeline_columns(row: dict[str, Any], metas: dict[str, dict]) -> dict[str, Any]:
    """This stage's time and energy to target plus its earlier stages' (their own pipelines)."""
    if not metas:
        return {}
    time_s, energy_j = row.get("time_to_target_s", math.nan), row.get("energy_to_target_j", math.nan)
    for meta in metas.values():
        time_s += _num(meta.get("pipeline_time_to_target_s"))
        energy_j += _num(meta.get("pipeline_energy_to_target_j"))
    summary = {
        name: {k: meta.get(k) for k in ("cell_id", "status", "time_to_target_s", "energy_to_target_j")}
        for name, meta in metas.items()
    }
    return {
        "stage_inputs_json": json.dumps(summary, sort_keys=True, default=str),
        "pipeline_time_to_target_s": time_s,
        "pipeline_energy_to_target_j": energy_j,
    }


def save_stage(model: torch.nn.Module, cell: Cell, artifacts: Path, row: dict[str, Any]) -> None:
    """Save a stage's trained model for the stages after it (only when it trained to the end)."""
    if row.get("status") not in SAVED_STATUSES:
        return
    directory = Path(artifacts).parent / cell.output_dir
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=".stage."))
    try:
        inner = getattr(model, "module", model)
        torch.save({k: v.detach().cpu() for k, v in inner.state_dict().items()}, tmp / MODEL_FILE)
        own = {k: row.get(k) for k in ("cell_id", "status", "time_to_target_s", "energy_to_target_j")}
        pipe_t = row.get("pipeline_time_to_target_s")
        pipe_e = row.get("pipeline_energy_to_target_j")
        own["pipeline_time_to_target_s"] = row.get("time_to_target_s") if _nan(pipe_t) else pipe_t
        own["pipeline_energy_to_target_j"] = row.get("energy_to_target_j") if _nan(pipe_e) else pipe_e
        own["created_at"] = now_iso()
        (tmp / STAGE_JSON).write_text(json.dumps(own, indent=2, default=_json_float))
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _nan(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _json_float(value):
    return None if isinstance(value, float) and math.isnan(value) else str(value)
