"""The cell's process: ``python -m benchbed.worker SPEC.json OUT_DIR``.

Trains the cell the spec describes and writes ``OUT_DIR/parts/<cell_id>/`` atomically; while it
trains, its curves and telemetry are streamed to ``OUT_DIR/parts/.live/<cell_id>/`` (removed once
the part is written). Progress goes to stdout as JSON lines (``{"event": "eval", ...}``) for the
runner's progress bar. Under torchrun only rank 0 reports and writes.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

from benchbed.results import live, store
from benchbed.results.schema import failure_row
from benchbed.worker.cell import identity_row, train_cell
from benchbed.workloads import DataError


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m benchbed.worker SPEC.json OUT_DIR", file=sys.stderr)
        return 2
    spec = json.loads(Path(argv[0]).read_text())
    out_dir = Path(argv[1])
    # the scenario's `threads` is part of the cell's configuration; BENCHBED_THREADS sets the
    # rest (cells that leave it to torch)
    threads = spec.get("threads") or os.environ.get("BENCHBED_THREADS")
    if threads:
        torch.set_num_threads(int(threads))

    def emit(event: dict) -> None:
        print(json.dumps(event, default=float), flush=True)

    leader = int(os.environ.get("RANK", "0")) == 0  # under torchrun only rank 0 reports
    try:
        row, curves, telemetry = train_cell(
            spec, emit=emit if leader else lambda event: None, out_dir=out_dir if leader else None
        )
    except DataError as exc:
        if leader:
            row = failure_row(identity_row(spec), "error", str(exc)) | {"partial": False}
            store.write_part(out_dir, spec["cell_id"], row, None, None)
            live.remove(out_dir, spec["cell_id"])
        print(f"benchbed cell: {exc}", file=sys.stderr)
        return 1
    if leader:
        store.write_part(out_dir, spec["cell_id"], row, curves, telemetry)
        live.remove(out_dir, spec["cell_id"])
        emit({"event": "done", "status": row["status"]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
