"""The results directory: Parquet tables and run.json, written atomically, read as DataFrames.

Each cell writes `parts/<cell_id>/` (row.json, curves.parquet, telemetry.parquet) into a temporary
directory renamed into place, so a part is either complete or absent. The run-level tables
(`cells.parquet`, `curves.parquet`, `telemetry.parquet`) are rebuilt from the parts, also through a
temporary file and a rename; a killed run therefore leaves every finished cell exactly once.

Files are created with the permissions the umask allows (0644 under the usual 022), not the 0600 of
a bare temporary file. What a kill can leave behind -- temporary files, a part renamed aside halfway
through its replacement -- is tidied by `clean_stray`, and a part that cannot be read back is moved
to `parts/.corrupt/` by `quarantine_damaged` (never deleted) so its cell runs again; the runner calls
both, under its lock, before the first cell.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd

from benchbed import SCHEMA_VERSION
from benchbed.results.schema import CURVE_COLUMN_NAMES, STATUSES, TELEMETRY_COLUMN_NAMES

CELLS = "cells.parquet"
CURVES = "curves.parquet"
TELEMETRY = "telemetry.parquet"
RUN_JSON = "run.json"
PARTS = "parts"
CORRUPT = ".corrupt"  # under parts/: damaged parts, moved aside
SPEC_PREFIX = ".spec-"  # a cell's spec file in the results directory while the cell runs
RUN_JSON_MAX_BYTES = 64 << 20

#: the columns every reader relies on (the gate, the report, the dashboard); a table without them
#: was not written by this benchbed and is refused with one line naming the file and the column
REQUIRED_COLUMNS = {
    CELLS: ("cell_id", "config_key", "variant", "workload", "device", "seed", "status"),
    CURVES: ("cell_id", "val_loss"),
    TELEMETRY: ("cell_id", "t_s"),
}

_UMASK = os.umask(0)
os.umask(_UMASK)
FILE_MODE = 0o666 & ~_UMASK
DIR_MODE = 0o777 & ~_UMASK


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
        os.fchmod(fd, FILE_MODE)
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
    os.fchmod(fd, FILE_MODE)
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
        os.chmod(tmp, DIR_MODE)
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


def write_part_files(out_dir: Path, cell_id: str, files: dict[str, bytes]) -> Path:
    """Write a part given as {relative path: bytes} (a part made elsewhere: a Ray worker's), as
    atomically as `write_part`."""
    parts = Path(out_dir) / PARTS
    parts.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=parts, prefix=f".{cell_id}.", suffix=".tmp"))
    try:
        for relative, data in files.items():
            path = (tmp / relative).resolve()
            if tmp.resolve() not in path.parents:
                raise ValueError(f"part file {relative!r} of {cell_id} is outside its part")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
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


def _read_row(part: Path) -> dict:
    """The row of one part; ValueError saying what is wrong with it."""
    try:
        row = json.loads((part / "row.json").read_bytes())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"row.json: {getattr(exc, 'msg', None) or exc}") from None
    if not isinstance(row, dict):
        raise ValueError(f"row.json: expected a JSON object, got {type(row).__name__}")
    if row.get("cell_id") != part.name:
        raise ValueError(f"row.json: cell_id is {row.get('cell_id')!r}, not the part's {part.name!r}")
    if row.get("status") not in STATUSES:
        raise ValueError(f"row.json: status {row.get('status')!r} is not one of {', '.join(STATUSES)}")
    return row


def read_parts(out_dir: Path) -> dict[str, dict]:
    """cell_id -> row of every complete part (one whose row.json reads back; `quarantine_damaged`
    moves the others aside)."""
    parts = Path(out_dir) / PARTS
    rows = {}
    if not parts.is_dir():
        return rows
    for d in sorted(parts.iterdir()):
        if d.name.startswith(".") or not (d / "row.json").is_file():
            continue
        try:
            rows[d.name] = _read_row(d)
        except ValueError:
            continue
    return rows


def part_damage(part: Path) -> str | None:
    """Why a part cannot be used (its row or one of its tables does not read back), or None."""
    try:
        _read_row(part)
    except ValueError as exc:
        return str(exc)
    for name in (CURVES, TELEMETRY):
        if (part / name).exists():
            try:
                table = pd.read_parquet(part / name)
            except Exception as exc:  # pyarrow raises several types for a damaged file
                return f"{name}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            missing = [c for c in REQUIRED_COLUMNS[name] if c not in table.columns]
            if len(table) and missing:
                return f"{name}: column(s) {', '.join(missing)} missing"
    return None


def _aside(src: Path, dest_dir: Path, name: str) -> Path:
    dest_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    dest = dest_dir / f"{name}-{stamp}"
    n = 1
    while dest.exists():
        n += 1
        dest = dest_dir / f"{name}-{stamp}-{n}"
    os.rename(src, dest)
    return dest


def quarantine_damaged(out_dir: Path) -> list[str]:
    """Move every part that cannot be read back to ``parts/.corrupt/<cell_id>-<time>`` (its cell
    then runs again); one line per part moved, naming the file and what is wrong."""
    parts = Path(out_dir) / PARTS
    moved: list[str] = []
    if not parts.is_dir():
        return moved
    for d in sorted(parts.iterdir()):
        if d.name.startswith(".") or not d.is_dir() or not (d / "row.json").exists():
            continue
        why = part_damage(d)
        if why is None:
            continue
        dest = _aside(d, parts / CORRUPT, d.name)
        moved.append(f"{d}: damaged ({why}); moved to {dest}, the cell runs again")
    return moved


def quarantine_run_json(out_dir: Path) -> str | None:
    """A run.json that cannot be read back is moved aside as ``run.json.corrupt-<time>``; the
    line that says so, or None."""
    path = Path(out_dir) / RUN_JSON
    try:
        read_run_json(out_dir)
        return None
    except StoreError as exc:
        dest = _aside(path, Path(out_dir), f"{RUN_JSON}.corrupt")
        return f"{exc}; moved to {dest}, a new one is written"


_STRAY_TMP = re.compile(r"^\..+\.tmp$")  # atomic_write_* and write_part temporaries
_OLD_PART = re.compile(r"^\.(?P<cell>.+)\.old\.\d+$")  # write_part's replaced part, mid-swap


def clean_stray(out_dir: Path) -> list[str]:
    """Remove what a killed writer left: temporary files and directories, spec files of cells that
    no longer run, and a part renamed aside mid-replacement (put back when its replacement never
    arrived). Only safe while holding the results directory's lock. Returns what was done."""
    out_dir = Path(out_dir)
    done: list[str] = []
    places = [out_dir, out_dir / PARTS]
    for place in places:
        if not place.is_dir():
            continue
        for p in sorted(place.iterdir()):
            old = _OLD_PART.match(p.name) if place.name == PARTS else None
            if old:
                final = place / old["cell"]
                if not final.exists() and (p / "row.json").is_file():
                    os.rename(p, final)
                    done.append(f"{final}: restored from {p.name}")
                    continue
            elif not (_STRAY_TMP.match(p.name) or p.name.startswith(SPEC_PREFIX)):
                continue
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            done.append(f"{p}: removed (left by an interrupted run)")
    return done


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


#: run.json fields the readers use, and the types they must have when present
RUN_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "schema_version": (int,),
    "run_id": (str,),
    "scenario": (str,),
    "started_at": (str,),
    "finished_at": (str,),
    "env": (dict,),
}


def read_run_json(out_dir: Path) -> dict:
    """The run's metadata ({} when there is no run.json); StoreError naming the file and field for
    one that is not valid JSON, not an object, too large, or has a field of the wrong type."""
    path = Path(out_dir) / RUN_JSON
    if not path.exists():
        return {}
    try:
        with open(path, "rb") as f:
            raw = f.read(RUN_JSON_MAX_BYTES + 1)
    except OSError as exc:
        raise StoreError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if len(raw) > RUN_JSON_MAX_BYTES:
        raise StoreError(f"{path}: larger than {RUN_JSON_MAX_BYTES >> 20} MiB (not a run.json benchbed wrote)")
    try:
        meta = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        where = f" at line {exc.lineno}" if isinstance(exc, json.JSONDecodeError) else ""
        raise StoreError(f"{path}: not valid JSON ({getattr(exc, 'msg', None) or exc.reason}{where})") from None
    if not isinstance(meta, dict):
        raise StoreError(f"{path}: expected a JSON object, got {type(meta).__name__}")
    for key, types in RUN_JSON_TYPES.items():
        value = meta.get(key)
        if value is not None and (not isinstance(value, types) or isinstance(value, bool)):
            raise StoreError(
                f"{path}: {key}: expected {' or '.join(t.__name__ for t in types)}, got {type(value).__name__}"
            )
    host = meta.get("env", {}).get("host")
    if host is not None and not isinstance(host, str):
        raise StoreError(f"{path}: env.host: expected str, got {type(host).__name__}")
    return meta


def _read_table(path: Path) -> pd.DataFrame | None:
    if not path.is_file():
        return None
    try:
        table = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for a corrupt file
        raise StoreError(
            f"{path}: cannot read Parquet ({type(exc).__name__}: {str(exc).splitlines()[0]})"
        ) from None
    missing = [c for c in REQUIRED_COLUMNS.get(path.name, ()) if c not in table.columns]
    if missing and len(table):
        raise StoreError(
            f"{path}: column{'s' if len(missing) > 1 else ''} {', '.join(missing)} missing "
            "(not a table this benchbed wrote)"
        )
    return table


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
