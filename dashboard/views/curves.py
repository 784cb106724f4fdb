"""Curves: validation loss against time, tokens or energy, median over seeds with a seed band.

Under the external ruleset the lines are the studies' winning trials (what the leaderboard ranks),
not every trial of the search."""

from __future__ import annotations

import streamlit as st

from benchbed.dashboard.shared import ViewContext, baseline_mask, filtered_cells, load, options
from benchbed.present import display, figures

TITLE = "Curves"
ORDER = 20

DEFAULT_CURVE_VARIANTS = 6


@st.cache_data(show_spinner=False, max_entries=32)
def cached_curves_figure(dirs: tuple[str, ...], stamp: tuple, filters: tuple, axis: str, variants: tuple):
    data = load(dirs, stamp)
    return figures.curves_figure(
        data.curves,
        display.ranked_cells(filtered_cells(data.cells, filters)),
        x=axis,
        variants=list(variants),
    )


def render(ctx: ViewContext) -> None:
    cells = display.ranked_cells(ctx.cells)
    st.subheader("Curves")
    axis = st.radio(
        "x axis", list(figures.CURVE_AXES), format_func=figures.CURVE_AXES.get, horizontal=True, key="curve_x"
    )
    variants = options(cells, "variant")
    baseline = options(cells[baseline_mask(cells)], "variant")
    default = (baseline + [v for v in variants if v not in baseline])[:DEFAULT_CURVE_VARIANTS]
    chosen = st.multiselect("Variants", variants, default=default, key="curve_variants")
    st.caption(
        "Median over seeds (tuned configurations: over their studies' winning trials); the band spans "
        "the fastest and slowest; dashed: the target loss."
    )
    st.plotly_chart(
        cached_curves_figure(ctx.dirs, ctx.stamp, ctx.filters, axis, tuple(chosen)), key="curves_chart"
    )
