"""The read side the dashboard and ``benchbed report`` share: load, filter, and tables as text.

``load_for_display`` reads each results directory on its own, so one empty directory, corrupt
Parquet file or foreign schema version becomes one error line naming the file while every other
directory is still shown. Rankings, confidence intervals and verdicts come from
``benchbed.analyse`` (``tables.leaderboard``, ``gate.compare``); nothing here ranks cells itself.
Every value is written by ``benchbed.present.format.format_value``.

Technique categories (the sidebar filter) are read from the cells table's ``categories`` column
when it has one: per cell, the sorted survey categories of its techniques joined by ``+`` (a list
is accepted too). Cells without it (results written before the column existed) get theirs from
the technique registry, imported on first use.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pandas as pd

from benchbed.analyse import gate, tables, tuning
from benchbed.present import figures
from benchbed.present.format import MEMORY_UNIT, NOT_MEASURED, format_tuned, format_value, memory_label
from benchbed.results import store

TABLES = ("cells", "curves", "telemetry")
KERNELS_FILE = "kernels.parquet"


@dataclasses.dataclass
class DisplayResults:
    """The tables of every directory that loaded, plus one error line per file that did not."""

    cells: pd.DataFrame
    curves: pd.DataFrame
    telemetry: pd.DataFrame
    runs: pd.DataFrame
    kernels: pd.DataFrame
    errors: list[str]


def _load_one(directory: Path) -> dict[str, pd.DataFrame]:
    results = store.load(directory)
    return {
        "cells": results.cells,
        "curves": results.curves,
        "telemetry": results.telemetry,
        "runs": results.runs,
    }


def _empty(columns: list[str]) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=object) for c in columns})


def load_for_display(dirs: list[str] | tuple[str, ...]) -> DisplayResults:
    """Load every directory that can be loaded; each one that cannot adds one error line naming the file.

    A directory holding only kernels.parquet (from `benchbed kernels bench`) contributes kernels only.
    Cell ids that repeat across directories are prefixed with their run id so curves stay attached
    to the right cell."""
    per_dir: list[tuple[Path, dict[str, pd.DataFrame]]] = []
    kernels: list[pd.DataFrame] = []
    errors: list[str] = []
    for raw in dirs:
        directory = Path(raw)
        if not directory.is_dir():
            errors.append(f"{directory}: not a directory")
            continue
        kernels_path = directory / KERNELS_FILE
        if kernels_path.exists():
            try:
                kernels.append(pd.read_parquet(kernels_path).assign(source_dir=str(directory)))
            except Exception as exc:  # noqa: BLE001
                errors.append(f"{kernels_path}: not a readable Parquet file ({type(exc).__name__}: {exc})")
        has_results = any((directory / name).exists() for name in ("cells.parquet", "run.json"))
        if not has_results:
            if not kernels_path.exists():
                errors.append(f"{directory}: empty results directory (no cells.parquet, no run.json)")
            continue
        try:
            frames = _load_one(directory)
        except Exception as exc:  # noqa: BLE001 -- one bad directory must not hide the others
            # the store's messages name the file (and field); anything else gets the directory
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            errors.append(message if str(directory) in message else f"{directory}: {message}")
            continue
        per_dir.append((directory, frames))

    # Mixed schema versions need nothing here: store.load refuses a run.json whose schema_version is
    # not the one this benchbed reads, naming the file, and that directory becomes one error line.
    seen_ids: set[str] = set()
    tables: dict[str, list[pd.DataFrame]] = {t: [] for t in (*TABLES, "runs")}
    for directory, frames in per_dir:
        cells = frames["cells"]
        ids = set(cells["cell_id"].astype(str)) if "cell_id" in cells else set()
        if ids & seen_ids:
            run_id = str(frames["runs"]["run_id"].iloc[0]) if len(frames["runs"]) else directory.name
            frames = {
                t: (f.assign(cell_id=run_id + "/" + f["cell_id"].astype(str)) if "cell_id" in f else f)
                for t, f in frames.items()
            }
            ids = {f"{run_id}/{i}" for i in ids}
        seen_ids |= ids
        for table, frame in frames.items():
            tables[table].append(frame)

    def concat(table: str, columns: list[str]) -> pd.DataFrame:
        parts = [f for f in tables[table] if len(f.columns)]
        return pd.concat(parts, ignore_index=True) if parts else _empty(columns)

    return DisplayResults(
        cells=concat(
            "cells", ["run_id", "cell_id", "workload", "variant", "techniques", "device", "scenario"]
        ),
        curves=concat("curves", ["cell_id", "step", "tokens", "train_time_s", "energy_j", "val_loss"]),
        telemetry=concat("telemetry", ["cell_id", "t_s"]),
        runs=concat("runs", ["dir", "run_id", "scenario", "schema_version"]),
        kernels=pd.concat(kernels, ignore_index=True) if kernels else _empty(["op", "backend", "shape"]),
        errors=errors,
    )


# -- technique categories and filters ----------------------------------------------------------------


def technique_categories(techniques: str) -> list[str]:
    """Survey categories of a `+`-joined techniques string from the registry; 'unregistered' for
    unknown names."""
    registry = _technique_registry()
    names = [t for t in str(techniques).split("+") if t]
    return sorted({registry[n].category if n in registry else "unregistered" for n in names})


def _technique_registry() -> dict:
    # imported on first use: the registry imports every technique module (and torch)
    from benchbed.techniques import REGISTRY

    return REGISTRY


def _parse_categories(value) -> tuple[str, ...] | None:
    """A ``categories`` value as a sorted tuple; None where the cell has none (NaN, None)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    names = value.split("+") if isinstance(value, str) else [str(v) for v in value]
    return tuple(sorted({name for name in names if name}))


def cell_categories(cells: pd.DataFrame) -> pd.Series:
    """Per cell, the sorted tuple of its techniques' survey categories (see the module docstring):
    the ``categories`` column where the cell has a value, else the registry's, by ``techniques``.
    None for a cell with neither."""
    given = cells["categories"] if "categories" in cells else pd.Series(None, index=cells.index, dtype=object)
    techniques = (
        cells["techniques"] if "techniques" in cells else pd.Series(None, index=cells.index, dtype=object)
    )
    from_registry: dict[str, tuple[str, ...]] = {}
    result: list[tuple[str, ...] | None] = []
    for value, names in zip(given, techniques, strict=True):
        categories = _parse_categories(value)
        if categories is None and "techniques" in cells:
            key = str(names)
            if key not in from_registry:
                from_registry[key] = tuple(technique_categories(key))
            categories = from_registry[key]
        result.append(categories)
    return pd.Series(result, index=cells.index, dtype=object)


def category_choices(cells: pd.DataFrame) -> list[str]:
    """Every category some cell has, sorted (the dashboard's filter choices). A cell without a
    ``categories`` value and without techniques offers none."""
    if "categories" not in cells and "techniques" not in cells:
        return []
    offered = pd.Series(True, index=cells.index)
    if "techniques" in cells:
        offered = cells["techniques"].notna()
    if "categories" in cells:
        offered |= cells["categories"].map(lambda value: _parse_categories(value) is not None)
    return sorted({c for categories in cell_categories(cells[offered]) for c in categories or ()})


def filter_cells(
    cells: pd.DataFrame,
    workloads: list[str] | None = None,
    devices: list[str] | None = None,
    scenarios: list[str] | None = None,
    categories: list[str] | None = None,
    rulesets: list[str] | None = None,
) -> pd.DataFrame:
    """Cells matching every non-empty filter. A technique-category filter keeps a cell when any of its
    techniques is in a chosen category, and always keeps baseline cells so speedups stay defined. A
    ruleset filter treats cells without a ``ruleset`` column as ``defaults``."""
    keep = pd.Series(True, index=cells.index)
    if rulesets:
        ruleset = cells["ruleset"].fillna("defaults") if "ruleset" in cells else "defaults"
        keep &= pd.Series(ruleset, index=cells.index).isin(rulesets)
    for column, chosen in (("workload", workloads), ("device", devices), ("scenario", scenarios)):
        if chosen and column in cells:
            keep &= cells[column].isin(chosen)
    if categories and ("techniques" in cells or "categories" in cells):
        wanted = set(categories)
        matches = cell_categories(cells).map(lambda have: bool(wanted & set(have or ())))
        if "is_baseline" in cells:
            matches |= cells["is_baseline"].fillna(False).astype(bool)
        keep &= matches
    return cells[keep]


# -- adapters to benchbed.analyse ---------------------------------------------------------------------


def leaderboard(cells: pd.DataFrame, rank_by: str) -> pd.DataFrame:
    """``benchbed.analyse.tables.leaderboard``, unchanged in order."""
    return tables.leaderboard(cells, rank_by=rank_by)


def gate_compare(baseline_cells: pd.DataFrame, candidate_cells: pd.DataFrame) -> pd.DataFrame:
    """`benchbed.analyse.gate.compare` on two runs' cells: one row per configuration x metric with its verdict."""
    return gate.compare(baseline_cells, candidate_cells)


def ruleset_mismatches(baseline_cells: pd.DataFrame, candidate_cells: pd.DataFrame) -> pd.DataFrame:
    """`benchbed.analyse.tuning.ruleset_mismatches`: configurations not compared because the two runs
    tuned them under different rulesets."""
    return tuning.ruleset_mismatches(baseline_cells, candidate_cells)


def edge_notes(cells: pd.DataFrame) -> list[str]:
    """One sentence per tuned dimension whose studies' winners sit at an end of its search range
    (`benchbed.analyse.tuning.edge_winners`): the range may have been too narrow."""
    return list(tuning.edge_winners(cells)["note"])


def with_ruleset_labels(table: pd.DataFrame) -> pd.DataFrame:
    """`table` with ``variant`` written "lion (external)" when it holds more than one ruleset, so
    figures never draw a tuned and a defaults configuration as one."""
    if "ruleset" not in table or "variant" not in table:
        return table
    rulesets = table["ruleset"].fillna("defaults")
    if rulesets.nunique() <= 1:
        return table
    return table.assign(variant=table["variant"].astype(str) + " (" + rulesets.astype(str) + ")")


def ranked_cells(cells: pd.DataFrame) -> pd.DataFrame:
    """The cells the rankings stand on (`benchbed.analyse.tuning.ranking_cells`): every defaults cell
    and each tuned study's winning trial, labelled by ruleset when both are loaded. Curves drawn
    from these show what was ranked, not every trial of a search."""
    if cells.empty:
        return cells
    return with_ruleset_labels(tuning.ranking_cells(cells))


# -- display formatting ------------------------------------------------------------------------------


def display_table(table: pd.DataFrame, cells: pd.DataFrame) -> pd.DataFrame:
    """Every float column as text, with NaN spelled out: 'not measured' where the metric family was not
    measured on these cells (energy without a sensor), 'not reached' for targets never reached."""
    unmeasured_energy = figures.not_measured_reason(cells, "energy_j") is not None and (
        "energy_source" not in cells or set(cells["energy_source"].dropna()) <= {"unavailable"}
    )
    out = table.copy()
    for column in out.columns:
        if pd.api.types.is_float_dtype(out[column]):
            missing = NOT_MEASURED if unmeasured_energy and "energy" in column else None
            out[column] = [format_value(v, column, missing=missing) for v in out[column]]
    return out


def _not_reached(value) -> bool:
    """A combination that did not reach the target has an infinite time (or energy) to target."""
    try:
        return math.isinf(float(value))
    except (TypeError, ValueError):
        return False


def _interval_text(value, low, high, column: str, unmeasured: bool) -> str:
    """'12.3 [11.9, 12.8]' (memory without its unit: the column label says it), or why there is no number."""
    if unmeasured:
        return NOT_MEASURED
    unit = f" {MEMORY_UNIT}"
    text = format_value(value, column).removesuffix(unit)
    if text in ("not reached", "not measured") or low is None or high is None:
        return text
    if any(isinstance(v, float) and math.isnan(v) for v in (low, high)):
        return text
    low_text = format_value(low, column).removesuffix(unit)
    high_text = format_value(high, column).removesuffix(unit)
    return f"{text} [{low_text}, {high_text}]"


def leaderboard_display(board: pd.DataFrame, rank_by: str, cells: pd.DataFrame) -> pd.DataFrame:
    """The statistics module's leaderboard, same rows in the same order, as readable text: the
    configuration and the tuning ruleset its numbers come from, the ranked metric with its
    confidence interval, then the speedup against the baseline (of the same ruleset), then the
    other metrics and the tuning cost. Values not measured on these cells say so; targets never
    reached say so."""
    energy_unmeasured = figures.not_measured_reason(cells, "energy_j") is not None and (
        "energy_source" not in cells or set(cells["energy_source"].dropna()) <= {"unavailable"}
    )
    metrics = [rank_by] + [m for m in figures.METRICS if m != rank_by]
    out = pd.DataFrame(index=board.index)
    several_scenarios = "scenario" in board and board["scenario"].nunique() > 1
    for column in ("rank", "workload", "device", "scenario", "variant"):
        if column in board and (column != "scenario" or several_scenarios):
            out[column] = board[column]
    out["ruleset"] = board["ruleset"].fillna("defaults") if "ruleset" in board else "defaults"
    for metric in metrics:
        if metric not in board:
            continue
        label = memory_label(figures.METRICS[metric][0]) + (" [95% CI]" if metric == rank_by else "")
        low, high = board.get(f"{metric}_ci_low"), board.get(f"{metric}_ci_high")
        out[label] = [
            _interval_text(
                board[metric].iloc[i],
                None if low is None else low.iloc[i],
                None if high is None else high.iloc[i],
                metric,
                energy_unmeasured and "energy" in metric,
            )
            for i in range(len(board))
        ]
        if metric == rank_by and "speedup" in board:
            speedups = []
            for i in range(len(board)):
                if bool(board["is_baseline"].iloc[i]) if "is_baseline" in board else False:
                    speedups.append("1× (baseline)")
                elif energy_unmeasured and "energy" in metric:
                    speedups.append("not measured")
                elif _not_reached(board[metric].iloc[i]):
                    speedups.append("not reached")  # a speedup of 0x would read as a measurement
                else:
                    value = board["speedup"].iloc[i]
                    if isinstance(value, float) and math.isnan(value):
                        speedups.append("n/a (no baseline reached)")
                        continue
                    low_s, high_s = board.get("speedup_ci_low"), board.get("speedup_ci_high")
                    text = f"{value:.3g}×"
                    if low_s is not None and not math.isnan(low_s.iloc[i]) and not math.isnan(high_s.iloc[i]):
                        text += f" [{low_s.iloc[i]:.3g}, {high_s.iloc[i]:.3g}]"
                    speedups.append(text)
            out["speedup vs baseline"] = speedups
    if "n_reached" in board and "n_cells" in board:
        out["reached"] = [f"{r}/{n}" for r, n in zip(board["n_reached"], board["n_cells"], strict=True)]
    if "best_val_loss" in board:
        out["best val loss"] = [format_value(v, "best_val_loss") for v in board["best_val_loss"]]
    if "status_counts" in board:
        out["status"] = board["status_counts"]
    if "n_trials" in board:
        out["trials"] = [format_value(v, "n_trials", missing=NOT_MEASURED) for v in board["n_trials"]]
        for column, label in (("tuning_cost_s", "tuning time (s)"), ("tuning_cost_j", "tuning energy (J)")):
            out[label] = [format_value(v, column, missing=NOT_MEASURED) for v in board[column]]
    if "winners_json" in board and board["winners_json"].fillna("").astype(str).str.len().gt(0).any():
        out["tuned values (study winners)"] = [format_tuned(v) for v in board["winners_json"]]
    return out.reset_index(drop=True)


def cell_labels(cells: pd.DataFrame) -> dict[str, str]:
    """cell_id -> 'workload · variant · seed N' (plus the run id when several runs are loaded)."""
    several_runs = "run_id" in cells and cells["run_id"].nunique() > 1
    labels = {}
    for row in cells.itertuples(index=False):
        label = f"{getattr(row, 'workload', '?')} · {getattr(row, 'variant', '?')} · seed {getattr(row, 'seed', '?')}"
        if several_runs:
            label += f" · {row.run_id}"
        labels[str(row.cell_id)] = label
    return labels
