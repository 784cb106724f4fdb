"""History: each configuration's metrics across runs, ordered by commit and time (pandas over the
results directories' Parquet tables).

A *run* is one results directory (run.json: its commit, branch, commit time, start time). Runs are
ordered by the commit's time where run.json records it, then by the run's start: a commit measured
again later stays at its place in the history. One history row is a configuration (``config_key``)
on one host kind (``gate.host_kind``: GPU name or CPU model; numbers from different hardware are
different series) in one run, with the median over its seeds and repeats of each metric (a target
never reached counts as +inf, so the median may read "not reached"; a metric not measured is NaN).

``baseline_cells`` is the gate's "last N runs of main": the cells of the N newest runs, pooled, so
the noisy metrics' test has N times the samples of one run.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from benchbed.analyse.bootstrap import median, metric_samples, reached_mask
from benchbed.analyse.gate import host_kind
from benchbed.results import store

DEFAULT_METRICS = (
    "time_to_target_s",
    "tokens_per_s",
    "energy_to_target_j",
    "co2_kg",
    "peak_mem_bytes",
    "tokens_to_target",
    "final_val_loss",
)
#: metrics where a smaller value is better (the trend's "worse" direction)
SMALLER_IS_BETTER = {
    "time_to_target_s": True,
    "tokens_per_s": False,
    "energy_to_target_j": True,
    "co2_kg": True,
    "peak_mem_bytes": True,
    "tokens_to_target": True,
    "steps_to_target": True,
    "final_val_loss": True,
}
RUN_COLUMNS = [
    "order",
    "dir",
    "run_id",
    "git_sha",
    "git_branch",
    "commit_time",
    "started_at",
    "scenario",
    "label",
]


class HistoryError(ValueError):
    """Directories that give no history; the message is one line naming them."""


def result_dirs(paths: list[str | Path]) -> list[Path]:
    """Results directories among ``paths``: a path holding cells.parquet is one; any other
    directory contributes its immediate subdirectories that hold one (``history/*``)."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if not path.is_dir():
            raise HistoryError(f"{path}: not a directory")
        if (path / store.CELLS).is_file():
            found.append(path)
            continue
        children = sorted(p for p in path.iterdir() if p.is_dir() and (p / store.CELLS).is_file())
        if not children:
            raise HistoryError(
                f"{path}: no results directory here (no cells.parquet in it or its subdirectories)"
            )
        found.extend(children)
    return found


def _first(values: pd.Series):
    values = values.dropna()
    return values.mode().iloc[0] if len(values) else None


def runs(dirs: list[Path]) -> pd.DataFrame:
    """One row per results directory, in history order (``order`` 0 = oldest)."""
    rows = []
    for directory in dirs:
        try:
            meta = store.read_run_json(directory)
        except store.StoreError as exc:
            raise HistoryError(str(exc)) from None
        env = meta.get("env", {})
        sha = env.get("git_sha")
        started = meta.get("started_at")
        if sha is None or started is None:  # a merged or hand-made directory: the cells say
            cells = pd.read_parquet(directory / store.CELLS)
            sha = sha or (_first(cells["git_sha"]) if "git_sha" in cells else None)
            started = started or (cells["started_at"].dropna().min() if "started_at" in cells else None)
        rows.append(
            {
                "dir": str(directory),
                "run_id": meta.get("run_id"),
                "git_sha": sha,
                "git_branch": env.get("git_branch"),
                "commit_time": env.get("git_commit_time"),
                "started_at": started,
                "scenario": meta.get("scenario"),
            }
        )
    frame = pd.DataFrame(rows, columns=[c for c in RUN_COLUMNS if c not in ("order", "label")])
    when = pd.to_datetime(frame["commit_time"], utc=True, errors="coerce")
    start = pd.to_datetime(frame["started_at"], utc=True, errors="coerce")
    frame = frame.assign(_when=when.fillna(start), _start=start).sort_values(
        ["_when", "_start", "dir"], kind="stable", na_position="first"
    )
    frame = frame.drop(columns=["_when", "_start"]).reset_index(drop=True)
    frame.insert(0, "order", range(len(frame)))
    frame["label"] = [
        f"{(sha or 'no commit')[:8]} {str(start or '')[:16].replace('T', ' ')}".strip()
        for sha, start in zip(frame["git_sha"], frame["started_at"], strict=True)
    ]
    return frame


def history(dirs: list[Path], metrics: tuple[str, ...] = DEFAULT_METRICS) -> pd.DataFrame:
    """One row per run x configuration x host kind: the run's order, commit and time, the
    configuration's labels, ``cells`` and ``reached`` (fraction), and the median of each metric."""
    run_table = runs(dirs)
    rows = []
    for run in run_table.itertuples(index=False):
        try:
            cells = store.load(run.dir).cells
        except store.StoreError as exc:
            raise HistoryError(str(exc)) from None
        if cells.empty or "config_key" not in cells:
            continue
        kinds = host_kind(cells)
        for (config_key, kind), group in cells.groupby([cells["config_key"], kinds], sort=True):
            first = group.iloc[0]
            row = {
                "order": run.order,
                "run": run.label,
                "dir": run.dir,
                "run_id": run.run_id,
                "git_sha": run.git_sha,
                "git_branch": run.git_branch,
                "started_at": run.started_at,
                "workload": first.get("workload"),
                "variant": first.get("variant"),
                "device": first.get("device"),
                "host_kind": kind,
                "config_key": config_key,
                "cells": len(group),
                "reached": float(reached_mask(group).mean()),
            }
            for metric in metrics:
                samples = metric_samples(group, metric)
                row[metric] = median(samples) if samples.size else math.nan
            rows.append(row)
    columns = [
        "order", "run", "dir", "run_id", "git_sha", "git_branch", "started_at", "workload", "variant",
        "device", "host_kind", "config_key", "cells", "reached", *metrics,
    ]  # fmt: skip
    return pd.DataFrame(rows, columns=columns).sort_values(["workload", "variant", "host_kind", "order"])


def trend(table: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Per configuration and host kind: the metric in the first and last run that measured it, the
    relative change, the number of runs, and whether it got ``worse``, ``better`` or stayed ``flat``
    (within 1%). A trend, not a verdict: the gate decides regressions with its statistics."""
    rows = []
    smaller = SMALLER_IS_BETTER.get(metric, True)
    for (workload, variant, kind, config_key), group in table.groupby(
        ["workload", "variant", "host_kind", "config_key"], sort=True, dropna=False
    ):
        values = group.sort_values("order")[metric].to_numpy(dtype=np.float64)
        measured = values[~np.isnan(values)]
        first, last = (measured[0], measured[-1]) if measured.size else (math.nan, math.nan)
        if np.isfinite(first) and np.isfinite(last) and first != 0:
            change = last / first - 1.0
        else:
            change = math.nan
        if math.isnan(change):
            direction = "not measured" if not measured.size else "n/a"
        elif abs(change) <= 0.01:
            direction = "flat"
        else:
            direction = "worse" if (change > 0) == smaller else "better"
        rows.append(
            {
                "workload": workload,
                "variant": variant,
                "host_kind": kind,
                "config_key": config_key,
                "runs": int(measured.size),
                "first": first,
                "last": last,
                "change": change,
                "direction": direction,
            }
        )
    return pd.DataFrame(
        rows,
        columns=[
            "workload",
            "variant",
            "host_kind",
            "config_key",
            "runs",
            "first",
            "last",
            "change",
            "direction",
        ],
    )


def wide(table: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The metric as one row per configuration and one column per run, oldest first."""
    if table.empty:
        return pd.DataFrame()
    labels = table.drop_duplicates("order").sort_values("order")
    columns = [f"{order}: {label}" for order, label in zip(labels["order"], labels["run"], strict=True)]
    keyed = table.assign(_column=[f"{o}: {r}" for o, r in zip(table["order"], table["run"], strict=True)])
    out = keyed.pivot_table(
        index=["workload", "variant", "host_kind"],
        columns="_column",
        values=metric,
        aggfunc="first",
        dropna=False,
    )
    return out.reindex(columns=[c for c in columns if c in out.columns]).reset_index()


def baseline_cells(
    dirs: list[Path], last: int, branch: str | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the pooled cells of the ``last`` newest runs among ``dirs``, those runs). With ``branch``,
    only runs whose run.json records that branch count."""
    if last < 1:
        raise HistoryError(f"--last: must be >= 1, got {last}")
    run_table = runs(dirs)
    if branch is not None:
        run_table = run_table[run_table["git_branch"] == branch]
        if run_table.empty:
            raise HistoryError(
                f"no run of branch {branch!r} among {len(dirs)} director(ies) (run.json env.git_branch)"
            )
    chosen = run_table.tail(last)
    frames = []
    for directory in chosen["dir"]:
        try:
            frames.append(store.load(directory).cells)
        except store.StoreError as exc:
            raise HistoryError(str(exc)) from None
    return pd.concat(frames, ignore_index=True), chosen.reset_index(drop=True)
