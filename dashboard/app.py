"""benchbed dashboard: rank configurations by time- and energy-to-target, and see why.

Started by `benchbed dashboard DIR...`, which runs `streamlit run` on this file with the environment
variable BENCHBED_RESULTS holding the results directories (separated by `os.pathsep`). The app only
reads those directories. Rankings, confidence intervals and gate verdicts come from `benchbed.analyse`
(through `benchbed.present.display`); the figures come from `benchbed.present.figures`, shared with
`benchbed report`.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import streamlit as st

from benchbed.present import display, figures
from benchbed.present.format import in_memory_unit, is_memory, memory_label

VIEWS = ("Leaderboard", "Curves", "Pareto", "Telemetry", "Compare", "Kernels")

#: what the user picks -> rank_by passed to benchbed.analyse.tables.leaderboard
RANKINGS = {
    "time to target": "time_to_target_s",
    "energy to target": "energy_to_target_j",
    "peak memory": "peak_mem_bytes",
    "tokens per second": "tokens_per_s",
}

MAX_TELEMETRY_CELLS = 12
CHART_ROWS_PER_WORKLOAD = 15
DEFAULT_CURVE_VARIANTS = 6
VERDICT_COLOURS = {
    "regression": "#fde8e8",
    "suspicious": "#fff4ce",
    "insufficient_data": "#eef2f7",
    "improvement": "#e3f9e5",
    "ok": "",
    "not_measured": "#f5f5f5",
}


def result_dirs() -> tuple[str, ...]:
    return tuple(path for path in os.environ.get("BENCHBED_RESULTS", "").split(os.pathsep) if path)


def files_stamp(dirs: tuple[str, ...]) -> tuple:
    """Size and modification time of every file the app reads: a new run invalidates the cache."""
    stamp = []
    for directory in dirs:
        path = Path(directory)
        if not path.is_dir():
            stamp.append((directory, None))
            continue
        for child in sorted(path.iterdir()):
            if child.suffix in (".parquet", ".json") and child.is_file():
                info = child.stat()
                stamp.append((str(child), info.st_mtime_ns, info.st_size))
    return tuple(stamp)


# cache_resource, not cache_data: the frames are only read, and copying a million telemetry rows
# out of the cache on every interaction would cost more than the page itself.
@st.cache_resource(show_spinner="Reading results…", max_entries=4)
def load(dirs: tuple[str, ...], stamp: tuple) -> display.DisplayResults:
    return display.load_for_display(list(dirs))


@st.cache_data(show_spinner=False, max_entries=8)
def category_choices(dirs: tuple[str, ...], stamp: tuple) -> list[str]:
    return display.category_choices(load(dirs, stamp).cells)


@st.cache_data(show_spinner="Ranking…", max_entries=32)
def cached_leaderboard(dirs: tuple[str, ...], stamp: tuple, filters: tuple, rank_by: str) -> pd.DataFrame:
    cells = filtered_cells(load(dirs, stamp).cells, filters)
    return display.leaderboard(cells, rank_by)


@st.cache_data(show_spinner=False, max_entries=32)
def cached_leaderboard_table(
    dirs: tuple[str, ...], stamp: tuple, filters: tuple, rank_by: str
) -> pd.DataFrame:
    cells = filtered_cells(load(dirs, stamp).cells, filters)
    return display.leaderboard_display(cached_leaderboard(dirs, stamp, filters, rank_by), rank_by, cells)


@st.cache_data(show_spinner=False, max_entries=32)
def cached_curves_figure(dirs: tuple[str, ...], stamp: tuple, filters: tuple, axis: str, variants: tuple):
    data = load(dirs, stamp)
    return figures.curves_figure(
        data.curves, filtered_cells(data.cells, filters), x=axis, variants=list(variants)
    )


@st.cache_data(show_spinner=False, max_entries=32)
def cached_telemetry_figure(dirs: tuple[str, ...], stamp: tuple, labels: tuple):
    return figures.telemetry_figure(load(dirs, stamp).telemetry, dict(labels))


@st.cache_data(show_spinner="Comparing runs…", max_entries=16)
def cached_compare(dirs: tuple[str, ...], stamp: tuple, filters: tuple, base_run: str, cand_run: str):
    # the run filter does not apply here: the two runs are chosen in the view itself
    cells = filtered_cells(load(dirs, stamp).cells, ((), *filters[1:]))
    run_ids = cells["run_id"].astype(str)
    return display.gate_compare(cells[run_ids == base_run], cells[run_ids == cand_run])


def filtered_cells(cells: pd.DataFrame, filters: tuple) -> pd.DataFrame:
    run_ids, workloads, devices, scenarios, categories = (list(f) for f in filters)
    if run_ids:
        cells = cells[cells["run_id"].astype(str).isin(run_ids)]
    return display.filter_cells(cells, workloads, devices, scenarios, categories)


def baseline_mask(cells: pd.DataFrame) -> pd.Series:
    if "is_baseline" in cells:
        return cells["is_baseline"].fillna(False).astype(bool)
    return pd.Series(False, index=cells.index)


def options(cells: pd.DataFrame, column: str) -> list[str]:
    return sorted(cells[column].dropna().astype(str).unique()) if column in cells else []


# -- views -------------------------------------------------------------------------------------------


def view_leaderboard(data, cells, dirs, stamp, filters) -> None:
    st.subheader("Leaderboard")
    choice = st.selectbox("Rank by", list(RANKINGS), key="rank_by")
    rank_by = RANKINGS[choice]
    reason = figures.not_measured_reason(cells, rank_by)
    if reason and reason.startswith("not measured"):
        st.warning(f"{choice}: {reason}")
        return
    if reason:
        st.info(f"{choice}: {reason}; every configuration ranks as infinitely slow")
    board = cached_leaderboard(dirs, stamp, filters, rank_by)
    st.caption(
        "Order and confidence intervals from benchbed.analyse; a target never reached ranks as infinitely "
        "slow; 'not measured' means this machine could not measure the metric."
    )
    table = cached_leaderboard_table(dirs, stamp, filters, rank_by)
    st.dataframe(table, hide_index=True, key="leaderboard_table")
    for metric, (label, _) in figures.METRICS.items():
        why = figures.not_measured_reason(cells, metric)
        if metric != rank_by and why and why.startswith("not measured"):
            st.caption(f"{label}: {why}")
    plot = leaderboard_plot_columns(board, rank_by)
    if plot is not None:
        st.caption(f"The best {CHART_ROWS_PER_WORKLOAD} per workload and device, with their 95% intervals.")
        st.plotly_chart(
            figures.leaderboard_figure(*plot, label=memory_label(figures.METRICS[rank_by][0])),
            key="leaderboard_chart",
        )


def leaderboard_plot_columns(board: pd.DataFrame, rank_by: str):
    """(top rows with labels, value, low, high) for the bar chart, from the leaderboard's columns."""
    low, high = f"{rank_by}_ci_low", f"{rank_by}_ci_high"
    if rank_by not in board or not pd.api.types.is_numeric_dtype(board[rank_by]):
        return None
    groups = [c for c in ("workload", "device") if c in board]
    top = board.groupby(groups, sort=False).head(CHART_ROWS_PER_WORKLOAD) if groups else board
    labelled = top.copy()
    if is_memory(rank_by):
        for column in (rank_by, low, high):
            if column in labelled:
                labelled[column] = in_memory_unit(labelled[column])
    several_scenarios = "scenario" in board and board["scenario"].nunique() > 1
    parts = [
        c
        for c in ("workload", "scenario", "variant")
        if c in board and (c != "scenario" or several_scenarios)
    ]
    labelled["__row_label"] = labelled[parts].astype(str).agg(" · ".join, axis=1) if parts else labelled.index
    if "is_baseline" in labelled:
        labelled["__is_baseline"] = labelled["is_baseline"].fillna(False).astype(bool)
    return labelled, rank_by, low if low in board else None, high if high in board else None


def view_curves(data, cells, dirs, stamp, filters) -> None:
    st.subheader("Curves")
    axis = st.radio(
        "x axis", list(figures.CURVE_AXES), format_func=figures.CURVE_AXES.get, horizontal=True, key="curve_x"
    )
    variants = options(cells, "variant")
    baseline = options(cells[baseline_mask(cells)], "variant")
    default = (baseline + [v for v in variants if v not in baseline])[:DEFAULT_CURVE_VARIANTS]
    chosen = st.multiselect("Variants", variants, default=default, key="curve_variants")
    st.caption("Median over seeds; the band spans the fastest and slowest seed; dashed: the target loss.")
    st.plotly_chart(cached_curves_figure(dirs, stamp, filters, axis, tuple(chosen)), key="curves_chart")


def view_pareto(data, cells, dirs, stamp, filters) -> None:
    st.subheader("Pareto fronts")
    st.caption(
        "One point per configuration (its median over seeds, from benchbed.analyse). Red: not beaten on "
        "both axes by any other configuration of the same workload."
    )
    measured = []
    for y in ("energy_to_target_j", "peak_mem_bytes"):
        reason = figures.not_measured_reason(cells, y)
        if reason and reason.startswith("not measured"):
            st.warning(f"time against {figures.METRICS[y][0]}: {reason}")
        else:
            measured.append(y)
    if not measured:
        return
    # the leaderboard holds the per-configuration medians of every metric: one statistics pass
    summary = cached_leaderboard(dirs, stamp, filters, "time_to_target_s")
    for y in measured:
        st.plotly_chart(figures.pareto_figure(summary, "time_to_target_s", y), key=f"pareto_{y}")


def view_telemetry(data, cells, dirs, stamp, filters) -> None:
    st.subheader("Telemetry")
    left, right = st.columns([1, 2])
    workload = left.selectbox("Workload", options(cells, "workload"), key="telemetry_workload")
    in_workload = cells[cells["workload"].astype(str) == workload]
    variants = options(in_workload, "variant")
    baseline = options(in_workload[baseline_mask(in_workload)], "variant")
    chosen = right.multiselect(
        "Variants", variants, default=(baseline or variants)[:1], key="telemetry_variants"
    )
    picked = in_workload[in_workload["variant"].astype(str).isin(chosen)]
    if len(picked) > MAX_TELEMETRY_CELLS:
        st.caption(f"{len(picked)} cells match; the first {MAX_TELEMETRY_CELLS} are drawn.")
        picked = picked.head(MAX_TELEMETRY_CELLS)
    labels = display.cell_labels(picked)
    st.plotly_chart(cached_telemetry_figure(dirs, stamp, tuple(labels.items())), key="telemetry_chart")


def _colour_verdicts(frame: pd.DataFrame):
    def colour(value):
        background = VERDICT_COLOURS.get(str(value), "")
        return f"background-color: {background}" if background else ""

    return frame.style.map(colour)


def view_compare(data, cells, dirs, stamp, filters) -> None:
    st.subheader("Compare two runs")
    runs = data.runs
    if len(runs) < 2:
        st.info(
            "Load two results directories (`benchbed dashboard BASELINE_DIR CANDIDATE_DIR`) to compare runs."
        )
        return
    run_ids = [str(r) for r in runs["run_id"]]
    labels = {str(r.run_id): f"{r.run_id} ({Path(str(r.dir)).name})" for r in runs.itertuples()}
    left, right = st.columns(2)
    base_run = left.selectbox("Baseline run", run_ids, index=0, format_func=labels.get, key="compare_base")
    cand_run = right.selectbox(
        "Candidate run", run_ids, index=len(run_ids) - 1, format_func=labels.get, key="compare_cand"
    )
    try:
        table = cached_compare(dirs, stamp, filters, base_run, cand_run)
    except ValueError as exc:  # the gate names the missing column
        st.error(f"compare: {exc}")
        return
    if table.empty:
        st.info("These runs have no configuration in common (cells are matched by config_key).")
        return
    counts = table["verdict"].value_counts()
    columns = st.columns(len(VERDICT_COLOURS))
    for column, verdict in zip(columns, VERDICT_COLOURS, strict=True):
        column.metric(verdict.replace("_", " "), int(counts.get(verdict, 0)))
    per_cell = table.pivot_table(
        index=["workload", "variant"], columns="metric", values="verdict", aggfunc="first"
    ).reset_index()
    first = ["workload", "variant", "reached", "time_to_target_s", "energy_to_target_j", "peak_mem_bytes"]
    per_cell = per_cell[[c for c in first if c in per_cell] + [c for c in per_cell if c not in first]]
    st.caption("Verdict of benchbed gate per configuration and metric (the CI gate's own verdicts).")
    st.dataframe(_colour_verdicts(per_cell), hide_index=True, key="compare_verdicts")
    with st.expander("Every comparison with ratios, p-values and notes"):
        st.dataframe(
            _colour_verdicts(display.display_table(table, cells)), hide_index=True, key="compare_detail"
        )


def view_kernels(data, *_) -> None:
    st.subheader("Kernels")
    if data.kernels.empty:
        st.info("No kernels.parquet in the loaded directories; `benchbed kernels bench` writes one.")
        return
    speedups = figures.kernel_speedups(data.kernels)
    st.caption(
        "Speedup = reference median time / backend median time, same op, shape, dtype, mode and device."
    )
    st.plotly_chart(figures.kernels_figure(speedups), key="kernels_chart")
    st.dataframe(display.display_table(speedups, pd.DataFrame()), hide_index=True, key="kernels_table")


RENDER = {
    "Leaderboard": view_leaderboard,
    "Curves": view_curves,
    "Pareto": view_pareto,
    "Telemetry": view_telemetry,
    "Compare": view_compare,
    "Kernels": view_kernels,
}


def main() -> None:
    st.set_page_config(page_title="benchbed dashboard", layout="wide")
    dirs = result_dirs()
    st.sidebar.title("benchbed")
    if not dirs:
        st.error("No results directory given: start the app with `benchbed dashboard DIR...`.")
        st.stop()
    stamp = files_stamp(dirs)
    data = load(dirs, stamp)
    for error in data.errors:
        st.error(error)
    cells = data.cells
    only_kernels = cells.empty and not data.kernels.empty
    view = st.sidebar.radio("View", VIEWS, index=VIEWS.index("Kernels") if only_kernels else 0, key="view")
    st.sidebar.caption(f"{len(data.runs)} run(s) · {len(cells)} cell(s)")

    st.sidebar.markdown("**Filters** (empty = all)")
    run_ids = st.sidebar.multiselect("Run", options(cells, "run_id"), key="filter_run")
    workloads = st.sidebar.multiselect("Workload", options(cells, "workload"), key="filter_workload")
    devices = st.sidebar.multiselect("Device", options(cells, "device"), key="filter_device")
    scenarios = st.sidebar.multiselect("Scenario", options(cells, "scenario"), key="filter_scenario")
    categories = st.sidebar.multiselect(
        "Technique category",
        category_choices(dirs, stamp),
        key="filter_category",
        help="Keeps configurations using a technique of a chosen category; baselines always stay.",
    )
    filters = (tuple(run_ids), tuple(workloads), tuple(devices), tuple(scenarios), tuple(categories))
    shown = filtered_cells(cells, filters)

    if cells.empty and view != "Kernels":
        st.info("No cells to show: every directory given is empty or unreadable.")
        return
    RENDER[view](data, shown, dirs, stamp, filters)


main()
