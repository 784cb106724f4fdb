"""The profiler files of a results directory (``parts/<cell_id>/profile/``) and a trace's summary.

``profile_files`` lists what ``benchbed/worker/profile.py`` recorded for each cell; ``trace_summary``
reads a Chrome trace (JSON: it must parse) into the operators that took the most time, by the sum
of their complete events' durations. Both only read files.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from benchbed.results import store

PROFILE_DIR = "profile"
KINDS = {
    "trace.json": "trace (Chrome/Perfetto JSON)",
    "memory_snapshot.pickle": "CUDA memory snapshot",
    "summary.txt": "operator table",
    "profile.json": "what was recorded",
}
COLUMNS = ["run_dir", "cell_id", "file", "kind", "path", "bytes", "status"]


def profile_files(directories) -> pd.DataFrame:
    """One row per profiler file of every cell in ``directories``; ``status`` is profile.json's
    ``skipped`` or ``error`` text where the profile was not recorded, else "recorded"."""
    rows = []
    for directory in directories:
        parts = Path(directory) / store.PARTS
        if not parts.is_dir():
            continue
        for folder in sorted(parts.glob(f"*/{PROFILE_DIR}")):
            cell_id = folder.parent.name
            if cell_id.startswith("."):
                continue
            status = "recorded"
            meta_path = folder / "profile.json"
            if meta_path.is_file():
                try:
                    meta = json.loads(meta_path.read_text())
                    status = meta.get("skipped") or meta.get("error") or "recorded"
                except json.JSONDecodeError:
                    status = "profile.json unreadable"
            for path in sorted(folder.iterdir()):
                if path.is_file():
                    rows.append(
                        {
                            "run_dir": str(directory),
                            "cell_id": cell_id,
                            "file": path.name,
                            "kind": KINDS.get(path.name, "other"),
                            "path": str(path),
                            "bytes": path.stat().st_size,
                            "status": status,
                        }
                    )
    return pd.DataFrame(rows, columns=COLUMNS)


def trace_summary(path: str | Path, top: int = 15) -> pd.DataFrame:
    """The ``top`` event names of a Chrome trace by total duration (ms), with their counts.
    Raises ValueError naming the file when it is not a JSON trace."""
    path = Path(path)
    try:
        trace = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a JSON trace ({exc})") from None
    events = trace.get("traceEvents") if isinstance(trace, dict) else trace
    if not isinstance(events, list):
        raise ValueError(f"{path}: no traceEvents list")
    complete = [e for e in events if isinstance(e, dict) and e.get("ph") == "X" and "dur" in e]
    if not complete:
        return pd.DataFrame(columns=["name", "category", "count", "total_ms"])
    frame = pd.DataFrame(
        {
            "name": [str(e.get("name")) for e in complete],
            "category": [str(e.get("cat", "")) for e in complete],
            "dur_us": [float(e["dur"]) for e in complete],
        }
    )
    table = (
        frame.groupby(["name", "category"], as_index=False)
        .agg(count=("dur_us", "size"), total_ms=("dur_us", "sum"))
        .assign(total_ms=lambda t: t["total_ms"] / 1000.0)
        .sort_values("total_ms", ascending=False)
        .head(top)
    )
    return table.reset_index(drop=True)
