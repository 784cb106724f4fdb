"""MLflow: one run per cell in an experiment named after the scenario.

TARGET is a tracking URI (``file:...``, ``sqlite:///...``, ``http://host:5000``) or a directory,
which becomes a file store (default ``mlruns``). MLflow 3 keeps the file store in maintenance
mode and refuses it unless ``MLFLOW_ALLOW_FILE_STORE=true``; benchbed sets that for the file store
it writes (a database or a server needs the full ``mlflow`` package). Parameters: the
configuration and provenance; metrics: the summary (one value) and the curves (``curve/val_loss``
and friends, by optimizer step); tags: ``benchbed.cell_id``, ``benchbed.run_id``, ``benchbed.status``,
``benchbed.not_measured``; artifact ``benchbed/config.json``. A failed cell's run ends FAILED.
Exporting twice adds nothing: a cell already exported (same run id and cell id) is skipped.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

from benchbed.present.export.records import CURVE_SERIES, CellRecord, finite_points

#: MLflow's limits per log_batch call
MAX_METRICS, MAX_PARAMS = 1000, 100


def tracking_uri(target: str | None) -> str:
    target = target or "mlruns"
    if "://" in target or target.startswith("file:"):
        return target
    return Path(target).resolve().as_uri()


def _millis(iso: str | None) -> int | None:
    try:
        return int(datetime.fromisoformat(str(iso).replace("Z", "+00:00")).timestamp() * 1000)
    except (TypeError, ValueError):
        return None


def export(cells: list[CellRecord], target: str | None = None, experiment: str | None = None) -> list[str]:
    """Write the cells; returns the MLflow run ids written (cells already there are skipped)."""
    uri = tracking_uri(target)
    if uri.startswith("file:"):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    written = []
    experiments: dict[str, str] = {}
    for cell in cells:
        name = experiment or cell.experiment
        if name not in experiments:
            found = client.get_experiment_by_name(name)
            experiments[name] = found.experiment_id if found else client.create_experiment(name)
        exp_id = experiments[name]
        run_id, cell_id = cell.key.split("/", 1)
        query = f"tags.`benchbed.cell_id` = '{cell_id}' and tags.`benchbed.run_id` = '{run_id}'"
        if client.search_runs([exp_id], filter_string=query, max_results=1):
            continue
        start = _millis(cell.started_at)
        tags = {
            "benchbed.cell_id": cell_id,
            "benchbed.run_id": run_id,
            "benchbed.status": cell.params.get("status", ""),
            "benchbed.not_measured": ",".join(cell.not_measured),
        }
        run = client.create_run(exp_id, start_time=start, tags=tags, run_name=cell.name)
        rid = run.info.run_id
        stamp = start or 0
        metrics = [Metric(k, v, stamp, 0) for k, v in sorted(cell.metrics.items())]
        for series in CURVE_SERIES:
            metrics += [
                Metric(f"curve/{series}", v, stamp, step) for step, v in finite_points(cell.curves, series)
            ]
        params = [Param(k, v[:6000]) for k, v in sorted(cell.params.items())]
        for i in range(0, max(len(metrics), len(params), 1), MAX_METRICS):
            client.log_batch(rid, metrics=metrics[i : i + MAX_METRICS])
        for i in range(0, len(params), MAX_PARAMS):
            client.log_batch(rid, params=params[i : i + MAX_PARAMS], tags=[RunTag("benchbed.exported", "1")])
        client.log_text(rid, cell.config_json, "benchbed/config.json")
        client.set_terminated(rid, status="FAILED" if cell.failed else "FINISHED")
        written.append(rid)
    return written
