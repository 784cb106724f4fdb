"""Curves: validation loss against time, tokens or energy, median over seeds with a seed band."""

from __future__ import annotations

import streamlit as st

from benchbed.dashboard.shared import ViewContext, baseline_mask, filtered_cells, load, options
from benchbed.present import figures

TITLE = "Curves"
ORDER = 20

DEFAULT_CURVE_VARIANTS = 6


@st.cache_data(show_spinner=False, max_entries=32)
def cached_curves_figure(dirs: tuple[str, ...], stamp: tuple, filters: tuple, axis: str, variants: tuple):
    data = load(dirs, stamp)
    return figures.curves_figure(
        data.curves, filtered_cells(data.cells, filters), x=axis, variants=list(variants)
    )


def render(ctx: ViewContext) -> None:
    cells = ctx.cells
    st.subheader("Curves")
    axis = st.radio(
        "x axis", list(figures.CURVE_AXES), format_func=figures.CURVE_AXES.get, horizontal=True, key="curve_x"
    )
    variants = options(cells, "variant")
    baseline = options(cells[baseline_mask(cells)], "variant")
    default = (baseline + [v for v in variants if v not in baseline])[:DEFAULT_CURVE_VARIANTS]
    chosen = st.multiselect("Variants", variants, default=default, key="curve_variants")
    st.caption("Median over seeds; the band spans the fastest and slowest seed; dashed: the target loss.")
    st.plotly_chart(
        cached_curves_figure(ctx.dirs, ctx.stamp, ctx.filters, axis, tuple(chosen)), key="curves_chart"
    )
