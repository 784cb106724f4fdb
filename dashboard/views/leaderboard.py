"""Leaderboard: configurations ranked by a chosen metric, with intervals and a bar chart."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from benchbed.dashboard.shared import ViewContext, cached_leaderboard, filtered_cells, load
from benchbed.present import display, figures
from benchbed.present.format import in_memory_unit, is_memory, memory_label

TITLE = "Leaderboard"
ORDER = 10

#: what the user picks -> rank_by passed to benchbed.analyse.tables.leaderboard
RANKINGS = {
    "time to target": "time_to_target_s",
    "energy to target": "energy_to_target_j",
    "peak memory": "peak_mem_bytes",
    "tokens per second": "tokens_per_s",
    "saved activations": "saved_activation_bytes",
    "optimizer state": "optimizer_state_bytes",
    "gradients": "grad_bytes",
    "parameters": "param_bytes",
}

CHART_ROWS_PER_WORKLOAD = 15


@st.cache_data(show_spinner=False, max_entries=32)
def cached_leaderboard_table(
    dirs: tuple[str, ...], stamp: tuple, filters: tuple, rank_by: str
) -> pd.DataFrame:
    cells = filtered_cells(load(dirs, stamp).cells, filters)
    return display.leaderboard_display(cached_leaderboard(dirs, stamp, filters, rank_by), rank_by, cells)


def render(ctx: ViewContext) -> None:
    cells = ctx.cells
    st.subheader("Leaderboard")
    choice = st.selectbox("Rank by", list(RANKINGS), key="rank_by")
    rank_by = RANKINGS[choice]
    reason = figures.not_measured_reason(cells, rank_by)
    if reason and reason.startswith("not measured"):
        st.warning(f"{choice}: {reason}")
        return
    if reason:
        st.info(f"{choice}: {reason}; every configuration ranks as infinitely slow")
    board = cached_leaderboard(ctx.dirs, ctx.stamp, ctx.filters, rank_by)
    st.caption(
        "Order and confidence intervals from benchbed.analyse; a target never reached ranks as infinitely "
        "slow; 'not measured' means this machine could not measure the metric. Every row names its tuning "
        "ruleset: external = median over studies of each study's best trial (tuning time and energy: the "
        "sum over all its trials), defaults = median over seeds at paper defaults. A row reaches only when "
        "more than half of its studies (seeds) reached; speedups compare rows of the same ruleset only."
    )
    table = cached_leaderboard_table(ctx.dirs, ctx.stamp, ctx.filters, rank_by)
    st.dataframe(table, hide_index=True, key="leaderboard_table")
    for note in display.edge_notes(cells):
        st.warning(f"Search range: {note}.")
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
        for c in ("workload", "scenario", "variant", "ruleset")
        if c in board and (c != "scenario" or several_scenarios)
    ]
    if "ruleset" in labelled:
        labelled["ruleset"] = labelled["ruleset"].fillna("defaults")
    labelled["__row_label"] = labelled[parts].astype(str).agg(" · ".join, axis=1) if parts else labelled.index
    if "is_baseline" in labelled:
        labelled["__is_baseline"] = labelled["is_baseline"].fillna(False).astype(bool)
    return labelled, rank_by, low if low in board else None, high if high in board else None
