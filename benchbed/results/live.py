"""The live part of a running cell: its curves and telemetry, appended while it trains.

A cell's part (``parts/<cell_id>/``) appears only when the cell ends, atomically; until then the
cell appends what it has measured to ``parts/.live/<cell_id>/curves.jsonl`` and
``telemetry.jsonl`` (one JSON object a line, flushed every few seconds by the worker). A cell the
runner has to stop (timeout, crash, an external kill) therefore keeps what it measured up to then:
the runner reads the live files back (`read`), writes them into the cell's part with the failure
row, labelled ``partial``, and removes them. A cell that ends normally writes its part from memory
and removes its live files.

A line cut short by a kill mid-write is skipped when read. The ``.live`` folder starts with a dot,
so nothing that reads parts sees it.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import pandas as pd

from benchbed.results.schema import CURVE_COLUMN_NAMES

LIVE = ".live"
CURVES = "curves.jsonl"
TELEMETRY = "telemetry.jsonl"


def live_dir(out_dir: str | Path, cell_id: str) -> Path:
    return Path(out_dir) / "parts" / LIVE / cell_id


def _default(value: Any):
    if hasattr(value, "item"):  # numpy and torch scalars
        return value.item()
    return str(value)


class LiveWriter:
    """Appends a cell's rows to its live files. Not thread-safe: one thread calls `append`."""

    def __init__(self, out_dir: str | Path, cell_id: str):
        self.dir = live_dir(out_dir, cell_id)
        shutil.rmtree(self.dir, ignore_errors=True)  # a rerun starts clean
        self.dir.mkdir(parents=True, exist_ok=True)

    def append(self, name: str, rows: list[dict[str, Any]]) -> None:
        """Append rows to `name` (CURVES or TELEMETRY) and flush them to the operating system, so a
        kill of the process loses nothing already appended."""
        if not rows:
            return
        text = "".join(json.dumps(row, default=_default, allow_nan=True) + "\n" for row in rows)
        with open(self.dir / name, "a", encoding="utf-8") as f:
            f.write(text)
            f.flush()


def _read_lines(path: Path) -> list[dict[str, Any]]:
    rows = []
    if not path.is_file():
        return rows
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # the last line of a killed writer
            if isinstance(row, dict):
                rows.append(row)
    return rows


def read(out_dir: str | Path, cell_id: str) -> tuple[pd.DataFrame | None, pd.DataFrame | None]:
    """(curves, telemetry) the cell streamed, as the frames its part would hold; None where it
    streamed nothing."""
    d = live_dir(out_dir, cell_id)
    curve_rows = _read_lines(d / CURVES)
    curves = None
    if curve_rows:
        curves = pd.DataFrame(curve_rows)
        curves["cell_id"] = cell_id
        for column in CURVE_COLUMN_NAMES:
            if column not in curves:
                curves[column] = math.nan
        curves = curves[CURVE_COLUMN_NAMES]
        numeric = [c for c in CURVE_COLUMN_NAMES if c != "cell_id"]
        curves[numeric] = curves[numeric].apply(pd.to_numeric, errors="coerce")
    sample_rows = _read_lines(d / TELEMETRY)
    telemetry = None
    if sample_rows:
        telemetry = pd.DataFrame(sample_rows)
        telemetry["cell_id"] = cell_id
        telemetry = telemetry[["cell_id", *[c for c in telemetry.columns if c != "cell_id"]]]
        numeric = [c for c in telemetry.columns if c not in ("cell_id", "in_window")]
        telemetry[numeric] = telemetry[numeric].apply(pd.to_numeric, errors="coerce").astype("float64")
        if "in_window" in telemetry:
            telemetry["in_window"] = telemetry["in_window"].fillna(False).astype(bool)
    return curves, telemetry


def remove(out_dir: str | Path, cell_id: str) -> None:
    """Delete a cell's live files, and the live folder once it is empty."""
    d = live_dir(out_dir, cell_id)
    shutil.rmtree(d, ignore_errors=True)
    try:
        d.parent.rmdir()
    except OSError:
        pass  # another cell's live files are still there, or it is gone already
