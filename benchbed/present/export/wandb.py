"""Weights & Biases, offline: one offline run per cell under TARGET (default ``wandb-offline``),
never touching the network.

``WANDB_MODE=offline`` is set (and every setting that could reach out is off: update check, error
reporting, machine info, git, code saving), so no login, API key or connection is needed; ``wandb
sync TARGET/wandb/offline-run-*`` uploads the runs later, from wherever the user chooses. Config:
the cell's parameters; history: the curves by optimizer step (``curve/val_loss`` and friends);
summary: the summary metrics (CO2 as ``co2_kg_estimate``) and ``benchbed.not_measured``.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from benchbed.present.export.records import CURVE_SERIES, CellRecord, finite_points

#: environment that keeps wandb off the network and quiet (set before wandb is imported)
OFFLINE_ENV = {
    "WANDB_MODE": "offline",
    "WANDB_SILENT": "true",
    "WANDB_ERROR_REPORTING": "false",
    "WANDB_DISABLE_CODE": "true",
    "WANDB_DISABLE_GIT": "true",
    "WANDB_CONSOLE": "off",
}


@contextlib.contextmanager
def offline_environment():
    saved = {k: os.environ.get(k) for k in OFFLINE_ENV}
    os.environ.update(OFFLINE_ENV)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def export(cells: list[CellRecord], target: str | None = None, project: str | None = None) -> list[str]:
    """Write the cells as offline runs; returns their run directories."""
    root = Path(target or "wandb-offline")
    root.mkdir(parents=True, exist_ok=True)
    written = []
    with offline_environment():
        import wandb

        settings = wandb.Settings(
            mode="offline",
            silent=True,
            console="off",
            save_code=False,
            disable_git=True,
            x_disable_stats=True,
            x_disable_meta=True,
            x_disable_machine_info=True,
        )
        for cell in cells:
            run = wandb.init(
                dir=str(root),
                project=project or cell.experiment,
                name=cell.name,
                group=cell.key.split("/", 1)[0],
                config=dict(cell.params),
                settings=settings,
                reinit="create_new",
            )
            try:
                steps = sorted({step for s in CURVE_SERIES for step, _ in finite_points(cell.curves, s)})
                series = {s: dict(finite_points(cell.curves, s)) for s in CURVE_SERIES}
                for step in steps:
                    run.log({f"curve/{s}": v[step] for s, v in series.items() if step in v}, step=step)
                run.summary.update(cell.metrics)
                run.summary["benchbed.not_measured"] = ",".join(cell.not_measured)
                run.summary["benchbed.cell_id"] = cell.name
                written.append(run.dir)
            finally:
                run.finish(exit_code=1 if cell.failed else 0)
    return [str(Path(d).parent) for d in written]
