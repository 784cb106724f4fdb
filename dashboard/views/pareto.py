"""Pareto: time to target against energy and against peak memory, the undominated configurations joined."""

from __future__ import annotations

import streamlit as st

from benchbed.dashboard.shared import ViewContext, cached_leaderboard
from benchbed.present import display, figures

TITLE = "Pareto"
ORDER = 30


def render(ctx: ViewContext) -> None:
    cells = ctx.cells
    st.subheader("Pareto fronts")
    st.caption(
        "One point per configuration (its median over seeds, or over its studies' winners under the "
        "external ruleset, from benchbed.analyse). Red: not beaten on both axes by any other "
        "configuration of the same workload."
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
    summary = cached_leaderboard(ctx.dirs, ctx.stamp, ctx.filters, "time_to_target_s")
    for y in measured:
        st.plotly_chart(
            figures.pareto_figure(display.with_ruleset_labels(summary), "time_to_target_s", y),
            key=f"pareto_{y}",
        )
