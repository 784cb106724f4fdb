"""A cell that wrote its row and then did not exit cleanly keeps its row, labelled.

Rank 0 writes a multi-process cell's row before the ranks tear down the process group
(`benchbed.worker.distributed`); a failure after that point (a rank dying at exit, a barrier that
never returns until the timeout) says nothing about the training, which finished. The runner keeps
that row and says what went wrong in `teardown_error` instead of replacing it with a crash row.
"""

from __future__ import annotations

import json
from pathlib import Path

from benchbed.results import store
from benchbed.results.schema import DONE_STATUSES


def mtime(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return None


def written_row(
    out_dir: Path, cell_id: str, before: int | None, returncode: int, timed_out: bool, reason: str
) -> dict | None:
    """The row this launch of the cell wrote (None when it wrote none: a part older than the launch
    is a previous attempt's); labelled with `reason` when its processes did not end cleanly."""
    part = Path(out_dir) / store.PARTS / cell_id / "row.json"
    if not part.is_file() or mtime(part) == before:
        return None
    row = json.loads(part.read_text())
    clean = returncode == 0 and not timed_out
    if clean or row.get("status") not in DONE_STATUSES:
        # a clean exit, or the cell recorded its own failure (bad data, an error in training): as written
        return row
    row["teardown_error"] = reason
    store.atomic_write_json(part, row)  # the part's other files stay as written
    return row
