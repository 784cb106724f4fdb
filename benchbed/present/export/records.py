"""What every tracker export writes for a cell: parameters, summary metrics, curves, identity."""

from __future__ import annotations

import dataclasses
import math
import numbers
from pathlib import Path

import numpy as np
import pandas as pd

from benchbed.results import store
from benchbed.results.schema import CELL_COLUMNS

#: configuration and provenance columns exported as parameters (strings); long JSON goes to an artifact
PARAM_COLUMNS = (
    "scenario", "workload", "variant", "techniques", "categories", "options_json", "batch_size", "lr",
    "seed", "repeat", "device", "device_name", "host", "target_loss", "baseline", "is_baseline",
    "config_key", "cell_id", "run_id", "git_sha", "torch_version", "status", "energy_source",
    "mem_source", "grid_intensity_g_per_kwh", "ruleset", "study", "trial", "world_size", "threads",
)  # fmt: skip
#: numeric columns that are configuration, not results (exported as parameters above)
NOT_METRICS = {"batch_size", "lr", "seed", "repeat", "target_loss", "grid_intensity_g_per_kwh", "world_size",
               "threads", "trial"}  # fmt: skip
#: a column exported under another name, so that a tracker's reader sees what it is
RENAMED = {"co2_kg": "co2_kg_estimate"}
#: curves.parquet columns exported as step series (x: the optimizer step)
CURVE_SERIES = ("val_loss", "train_loss", "energy_j", "train_time_s", "tokens")
FAILED = ("oom", "error", "timeout", "killed")


@dataclasses.dataclass
class CellRecord:
    """One cell as a tracker run."""

    name: str  # the tracker run's name: the cell id
    key: str  # run_id/cell_id: what makes an export idempotent
    params: dict[str, str]
    metrics: dict[str, float]  # summary metrics, finite values only
    not_measured: list[str]  # summary metrics that are NaN (never logged as a number)
    curves: pd.DataFrame  # step + CURVE_SERIES columns
    config_json: str  # the full configuration (an artifact where the tracker keeps files)
    failed: bool
    experiment: str  # the scenario name
    started_at: str | None


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _param(value) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return str(value)


def records(dirs: list[str | Path]) -> list[CellRecord]:
    """Every cell of the results directories as a CellRecord. Raises store.StoreError naming a file."""
    declared = {c.name: c for c in CELL_COLUMNS}
    out = []
    for directory in dirs:
        results = store.load(directory)
        cells, curves = results.cells, results.curves
        by_cell = {cid: frame for cid, frame in curves.groupby("cell_id")} if "cell_id" in curves else {}
        for row in cells.to_dict(orient="records"):
            cell_id = str(row["cell_id"])
            params = {k: p for k in PARAM_COLUMNS if k in row and (p := _param(row[k])) is not None}
            metrics, missing = {}, []
            for column, value in row.items():
                column_kind = declared[column].kind if column in declared else None
                if column in NOT_METRICS or column in PARAM_COLUMNS or column_kind not in ("float", "int"):
                    continue
                name = RENAMED.get(column, column)
                if _is_number(value) and math.isfinite(float(value)):
                    metrics[name] = float(value)
                else:
                    missing.append(name)
            frame = by_cell.get(cell_id, pd.DataFrame(columns=["step", *CURVE_SERIES]))
            frame = frame[[c for c in ("step", *CURVE_SERIES) if c in frame.columns]].sort_values("step")
            out.append(
                CellRecord(
                    name=cell_id,
                    key=f"{row.get('run_id')}/{cell_id}",
                    params=params,
                    metrics=metrics,
                    not_measured=sorted(missing),
                    curves=frame.reset_index(drop=True),
                    config_json=str(row.get("config_json") or "{}"),
                    failed=row.get("status") in FAILED,
                    experiment=str(row.get("scenario") or "benchbed"),
                    started_at=row.get("started_at"),
                )
            )
    return out


def finite_points(curves: pd.DataFrame, series: str) -> list[tuple[int, float]]:
    """(step, value) of one curve where the value is a finite number (NaN: not measured, skipped)."""
    if series not in curves.columns:
        return []
    points = []
    for step, value in zip(curves["step"], curves[series], strict=True):
        if value is not None and _is_number(value) and math.isfinite(float(value)):
            points.append((int(step), float(value)))
    return points
