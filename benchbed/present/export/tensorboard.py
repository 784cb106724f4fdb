"""TensorBoard: one run (a subdirectory of TARGET, default ``tensorboard``) per cell.

Scalars: the curves by optimizer step (``curve/val_loss``, ``curve/train_loss``, ``curve/energy_j``,
...) and the summary metrics (``summary/<metric>``) at the cell's last step; the configuration as
hparams (the HParams dashboard) and as a text summary. Written with torch's SummaryWriter (it needs
the ``tensorboard`` package: ``pip install 'benchbed[trackers]'``). Exporting again rewrites a
cell's run directory from scratch, so nothing is doubled.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from benchbed.present.export.records import CURVE_SERIES, CellRecord, finite_points


def run_dir_name(cell: CellRecord) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", cell.key)


def export(cells: list[CellRecord], target: str | None = None) -> list[Path]:
    """Write the cells; returns the run directories written."""
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import hparams

    root = Path(target or "tensorboard")
    written = []
    for cell in cells:
        folder = root / run_dir_name(cell)
        if folder.exists():
            shutil.rmtree(folder)
        writer = SummaryWriter(log_dir=str(folder))
        try:
            last = 0
            for series in CURVE_SERIES:
                for step, value in finite_points(cell.curves, series):
                    writer.add_scalar(f"curve/{series}", value, step)
                    last = max(last, step)
            for name, value in sorted(cell.metrics.items()):
                writer.add_scalar(f"summary/{name}", value, last)
            exp, ssi, sei = hparams(
                dict(cell.params),
                {f"summary/{k}": v for k, v in cell.metrics.items() if k in _HPARAM_METRICS},
            )
            for summary in (exp, ssi, sei):
                writer.file_writer.add_summary(summary)
            writer.add_text(
                "benchbed/config",
                "```\n"
                + json.dumps({"params": cell.params, "not_measured": cell.not_measured}, indent=2)
                + "\n```",
            )
        finally:
            writer.close()
        written.append(folder)
    return written


#: the summary metrics the HParams dashboard lists beside the parameters
_HPARAM_METRICS = (
    "time_to_target_s",
    "energy_to_target_j",
    "final_val_loss",
    "tokens_per_s",
    "co2_kg_estimate",
)
