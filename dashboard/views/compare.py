"""Compare: the regression gate's verdicts between two loaded runs, per configuration and metric."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from benchbed.dashboard.shared import ViewContext, filtered_cells, load
from benchbed.present import display

TITLE = "Compare"
ORDER = 50

VERDICT_COLOURS = {
    "regression": "#fde8e8",
    "suspicious": "#fff4ce",
    "insufficient_data": "#eef2f7",
    "improvement": "#e3f9e5",
    "ok": "",
    "not_measured": "#f5f5f5",
}


@st.cache_data(show_spinner="Comparing runs…", max_entries=16)
def cached_compare(dirs: tuple[str, ...], stamp: tuple, filters: tuple, base_run: str, cand_run: str):
    # the run filter does not apply here: the two runs are chosen in the view itself
    cells = filtered_cells(load(dirs, stamp).cells, ((), *filters[1:]))
    run_ids = cells["run_id"].astype(str)
    return display.gate_compare(cells[run_ids == base_run], cells[run_ids == cand_run])


@st.cache_data(show_spinner=False, max_entries=16)
def cached_mismatches(dirs: tuple[str, ...], stamp: tuple, filters: tuple, base_run: str, cand_run: str):
    cells = filtered_cells(load(dirs, stamp).cells, ((), *filters[1:]))
    run_ids = cells["run_id"].astype(str)
    return display.ruleset_mismatches(cells[run_ids == base_run], cells[run_ids == cand_run])


def _colour_verdicts(frame: pd.DataFrame):
    def colour(value):
        background = VERDICT_COLOURS.get(str(value), "")
        return f"background-color: {background}" if background else ""

    return frame.style.map(colour)


def render(ctx: ViewContext) -> None:
    st.subheader("Compare two runs")
    runs = ctx.data.runs
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
        table = cached_compare(ctx.dirs, ctx.stamp, ctx.filters, base_run, cand_run)
    except ValueError as exc:  # the gate names the missing column
        st.error(f"compare: {exc}")
        return
    mismatched = cached_mismatches(ctx.dirs, ctx.stamp, ctx.filters, base_run, cand_run)
    if len(mismatched):
        st.warning(
            f"{len(mismatched)} configuration(s) ran under a different tuning ruleset in each run and are "
            "not compared (a defaults number is never compared with an external one)."
        )
        st.dataframe(mismatched, hide_index=True, key="compare_ruleset_mismatches")
    if table.empty:
        st.info("These runs have no configuration in common (cells are matched by config_key).")
        return
    counts = table["verdict"].value_counts()
    columns = st.columns(len(VERDICT_COLOURS))
    for column, verdict in zip(columns, VERDICT_COLOURS, strict=True):
        column.metric(verdict.replace("_", " "), int(counts.get(verdict, 0)))
    per_cell = table.pivot_table(
        index=["workload", "variant", "ruleset"], columns="metric", values="verdict", aggfunc="first"
    ).reset_index()
    first = [
        "workload",
        "variant",
        "ruleset",
        "reached",
        "time_to_target_s",
        "energy_to_target_j",
        "peak_mem_bytes",
    ]
    per_cell = per_cell[[c for c in first if c in per_cell] + [c for c in per_cell if c not in first]]
    st.caption("Verdict of benchbed gate per configuration and metric (the CI gate's own verdicts).")
    st.dataframe(_colour_verdicts(per_cell), hide_index=True, key="compare_verdicts")
    with st.expander("Every comparison with ratios, p-values and notes"):
        st.dataframe(
            _colour_verdicts(display.display_table(table, ctx.cells)), hide_index=True, key="compare_detail"
        )
