"""Telemetry: power, memory and utilisation over time for the cells of chosen variants."""

from __future__ import annotations

import streamlit as st

from benchbed.dashboard.shared import ViewContext, baseline_mask, load, options
from benchbed.present import display, figures

TITLE = "Telemetry"
ORDER = 40

MAX_TELEMETRY_CELLS = 12


@st.cache_data(show_spinner=False, max_entries=32)
def cached_telemetry_figure(dirs: tuple[str, ...], stamp: tuple, labels: tuple):
    return figures.telemetry_figure(load(dirs, stamp).telemetry, dict(labels))


def render(ctx: ViewContext) -> None:
    cells = ctx.cells
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
    st.plotly_chart(
        cached_telemetry_figure(ctx.dirs, ctx.stamp, tuple(labels.items())), key="telemetry_chart"
    )
