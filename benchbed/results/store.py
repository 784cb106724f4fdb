"""The results directory: Parquet tables and run.json, written atomically, read as DataFrames.

Each cell writes `parts/<cell_id>/` (row.json, curves.parquet, telemetry.parquet) into a temporary
directory renamed into place, so a part is either complete or absent. While it runs, it streams its
curves and telemetry to `parts/.live/<cell_id>/` (`results.live`); a cell the runner stops gets a
part built from those (`write_failed_part`). The run-level tables
(`cells.parquet`, `curves.parquet`, `telemetry.parquet`) are rebuilt from the parts, also through a
temporary file and a rename; a killed run therefore leaves every finished cell exactly once.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd

from benchbed import SCHEMA_VERSION
from benchbed.results import live
from benchbed.results.schema import CURVE_COLUMN_NAMES, TELEMETRY_COLUMN_NAMES

CELLS = "cells.parquet"
CURVES = "curves.parquet"
TELEMETRY = "telemetry.parquet"
RUN_JSON = "run.json"
PARTS = "parts"



class StoreError(ValueError):
    """A results directory that cannot be read; the message names the file."""


class Results(NamedTuple):
    cells: pd.DataFrame
    curves: pd.DataFrame
    telemetry: pd.DataFrame
    runs: pd.DataFrame


def _json_default(value: Any):
    if isinstance(value, float) and math.isnan(value):
        return None
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=2, default=_json_default, allow_nan=True).encode())


def atomic_write_parquet(path: Path, frame: pd.DataFrame) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        frame.to_parquet(tmp, index=False)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_part(
    out_dir: Path, cell_id: str, row: dict, curves: pd.DataFrame | None, telemetry: pd.DataFrame | None
) -> Path:
    """Write one cell's results as a directory that appears atomically (replacing an older one)."""
    parts = Path(out_dir) / PARTS
    parts.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=parts, prefix=f".{cell_id}.", suffix=".tmp"))
    try:
        if curves is not None and len(curves):
            curves.to_parquet(tmp / CURVES, index=False)
        if telemetry is not None and len(telemetry):
            telemetry.to_parquet(tmp / TELEMETRY, index=False)
        (tmp / "row.json").write_text(json.dumps(row, default=_json_default, allow_nan=True))
        final = parts / cell_id
        if final.exists():
            old = parts / f".{cell_id}.old.{os.getpid()}"
            os.rename(final, old)
            os.rename(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, final)
        return final
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_failed_part(out_dir: Path, cell_id: str, row: dict) -> Path:
    """Write the part of a cell the runner had to stop (timeout, crash, kill): its failure row,
    labelled ``partial``, with the curves and telemetry the cell streamed until then
    (``results.live``), whose live files are then removed."""
    curves, telemetry = live.read(out_dir, cell_id)
    final = write_part(out_dir, cell_id, {**row, "partial": True}, curves, telemetry)
    live.remove(out_dir, cell_id)
    return final


def read_parts(out_dir: Path) -> dict[str, dict]:
    """cell_id -> row of every complete part."""
    parts = Path(out_dir) / PARTS
    rows = {}
    if not parts.is_dir():
        return rows
    for d in sorted(parts.iterdir()):
        if d.name.startswith(".") or not (d / "row.json").is_file():
            continue
        rows[d.name] = json.loads((d / "row.json").read_text())
    return rows


def _rows_frame(rows: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(rows)
    for col in frame.columns:
        if (
            frame[col].dtype == object
            and frame[col].map(lambda v: v is None or isinstance(v, (int, float))).all()
        ):
            frame[col] = pd.to_numeric(frame[col], errors="coerce")  # None (NaN in JSON) -> NaN
    return frame


def consolidate(out_dir: Path, tables: tuple[str, ...] = (CELLS, CURVES, TELEMETRY)) -> pd.DataFrame:
    """Rebuild the run-level tables from the parts; returns the cells table."""
    out_dir = Path(out_dir)
    rows = read_parts(out_dir)
    cells = _rows_frame(list(rows.values())) if rows else pd.DataFrame({"cell_id": pd.Series(dtype=str)})
    if CELLS in tables:
        atomic_write_parquet(out_dir / CELLS, cells)
    for name, empty_cols in ((CURVES, CURVE_COLUMN_NAMES), (TELEMETRY, TELEMETRY_COLUMN_NAMES)):
        if name not in tables:
            continue
        frames = [
            pd.read_parquet(out_dir / PARTS / cid / name)
            for cid in rows
            if (out_dir / PARTS / cid / name).is_file()
        ]
        frames = [f for f in frames if len(f)]
        table = (
            pd.concat(frames, ignore_index=True)
            if frames
            else pd.DataFrame({c: pd.Series(dtype=float) for c in empty_cols})
        )
        atomic_write_parquet(out_dir / name, table)
    return cells


def read_run_json(out_dir: Path) -> dict:
    path = Path(out_dir) / RUN_JSON
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise StoreError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None


def _read_table(path: Path) -> pd.DataFrame | None:
    if not path.is_file():
        return None
    try:
        return pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for a corrupt file
        raise StoreError(
            f"{path}: cannot read Parquet ({type(exc).__name__}: {str(exc).splitlines()[0]})"
        ) from None


def load(*dirs: str | os.PathLike) -> Results:
    """Read one or more results directories into DataFrames (concatenated, `run_dir` column added).

    Raises StoreError naming the file for a missing directory, a corrupt table, or a schema
    version this code does not read."""
    cells, curves, telemetry, runs = [], [], [], []
    for d in dirs:
        d = Path(d)
        if not d.is_dir():
            raise StoreError(f"{d}: not a results directory (it does not exist)")
        meta = read_run_json(d)
        version = meta.get("schema_version", SCHEMA_VERSION)
        if version != SCHEMA_VERSION:
            raise StoreError(
                f"{d / RUN_JSON}: schema_version {version} is not {SCHEMA_VERSION}, which this benchbed reads"
            )
        c = _read_table(d / CELLS)
        if c is None:
            raise StoreError(
                f"{d / CELLS}: missing (not a benchbed results directory, or no cell has finished)"
            )
        c = c.assign(run_dir=str(d))
        cells.append(c)
        for target, name in ((curves, CURVES), (telemetry, TELEMETRY)):
            t = _read_table(d / name)
            if t is not None and len(t):
                target.append(t.assign(run_dir=str(d)))
        runs.append(
            {
                "dir": str(d),
                "run_id": meta.get("run_id"),
                "scenario": meta.get("scenario"),
                "schema_version": version,
                "started_at": meta.get("started_at"),
                "finished_at": meta.get("finished_at"),
                "host": meta.get("env", {}).get("host"),
            }
        )

    def cat(frames, cols):
        return (
            pd.concat(frames, ignore_index=True)
            if frames
            else pd.DataFrame({c: pd.Series(dtype=float) for c in cols})
        )

    return Results(
        cells=cat(cells, ["cell_id"]),
        curves=cat(curves, CURVE_COLUMN_NAMES),
        telemetry=cat(telemetry, TELEMETRY_COLUMN_NAMES),
        runs=pd.DataFrame(runs),
    )
