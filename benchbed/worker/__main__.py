"""The cell's process: ``python -m benchbed.worker SPEC.json OUT_DIR``.

Trains the cell the spec describes and writes ``OUT_DIR/parts/<cell_id>/`` atomically. Progress
goes to stdout as JSON lines (``{"event": "eval", ...}``) for the runner's progress bar. Under
torchrun only rank 0 reports and writes. A part that cannot be written (disk full) is reported as
``{"event": "write_failed", "errno", "filename", "reason"}``: that says nothing about the cell, so
the runner stops the run without a row for it, and a resume runs it again. A scenario's
``[profile]`` adds a profiler trace of the cell after its part is written (``worker/profile.py``).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from pathlib import Path

import torch

from benchbed.results import store
from benchbed.results.schema import failure_row
from benchbed.text import os_error_reason
from benchbed.worker.cell import identity_row, train_cell
from benchbed.workloads import DataError


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m benchbed.worker SPEC.json OUT_DIR", file=sys.stderr)
        return 2
    started = time.perf_counter()
    spec = json.loads(Path(argv[0]).read_text())
    out_dir = Path(argv[1])
    threads = os.environ.get("BENCHBED_THREADS")
    if threads:
        torch.set_num_threads(int(threads))

    def emit(event: dict) -> None:
        print(json.dumps(event, default=float), flush=True)

    leader = int(os.environ.get("RANK", "0")) == 0  # under torchrun only rank 0 reports

    def write(row, curves=None, telemetry=None) -> bool:
        try:
            store.write_part(out_dir, spec["cell_id"], row, curves, telemetry)
            return True
        except OSError as exc:  # disk full, read-only: one line, and the runner stops the run
            where, reason = str(exc.filename or out_dir), os_error_reason(exc)
            if leader:
                emit({"event": "write_failed", "errno": exc.errno, "filename": where, "reason": reason})
            with contextlib.suppress(OSError):  # stderr may be on the full disk too
                print(f"benchbed cell: {where}: cannot write results ({reason})", file=sys.stderr)
            return False

    try:
        row, curves, telemetry = train_cell(
            spec, emit=emit if leader else lambda event: None, out_dir=out_dir
        )
    except DataError as exc:
        if leader:
            write(failure_row(identity_row(spec), "error", str(exc)))
        print(f"benchbed cell: {exc}", file=sys.stderr)
        return 1
    if leader:
        if not write(row, curves, telemetry):
            return 1
        emit({"event": "done", "status": row["status"]})
    if spec.get("profile"):  # after the row is written: a profile never touches the timed run
        from benchbed.worker.profile import add_profile

        add_profile(out_dir, spec, spec["profile"], row, started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
