"""A cell that wrote its row and then did not exit cleanly keeps its row, labelled.

Rank 0 writes a multi-process cell's row before the ranks tear down the process group
(`benchbed.worker.distributed`); a failure after that point (a rank dying at exit, a barrier that
never returns until the timeout) says nothing about the training, which finished. The runner keeps
that row and says what went wrong in `teardown_error` instead of replacing it with a crash row.
"""

from __future__ import annotations

from pathlib import Path

from benchbed.results import store
from benchbed.results.schema import DONE_STATUSES


def label_teardown(part: Path, row: dict, reason: str) -> dict:
    """`row`, which this launch of the cell wrote to `part` before its processes ended badly:
    labelled with `reason` in `teardown_error` when the training finished (a failure the cell
    recorded itself, bad data or an error in training, stays as written)."""
    if row.get("status") not in DONE_STATUSES:
        return row
    row["teardown_error"] = reason
    store.atomic_write_json(Path(part) / "row.json", row)  # the part's other files stay as written
    return row
