"""History: each configuration's metric across the loaded runs, oldest first (the trend view).

Load one results directory per run (``benchbed dashboard history/*``). Runs are ordered by commit
time, then start time (``benchbed.analyse.history``); a configuration on another host kind (GPU
name or CPU model) is another line. The trend table says whether the last run is worse or better
than the first; the gate, not this view, decides what is a regression.
"""

from __future__ import annotations

import math
from pathlib import Path

import streamlit as st

from benchbed.analyse import history
from benchbed.dashboard.shared import ViewContext
from benchbed.present import figures
from benchbed.present.format import format_value

TITLE = "History"
ORDER = 55


@st.cache_data(show_spinner="Reading history…", max_entries=8)
def cached_history(dirs: tuple[str, ...], stamp: tuple):
    return history.history([Path(d) for d in dirs])


def render(ctx: ViewContext) -> None:
    st.subheader("History across runs")
    loaded = tuple(str(d) for d in ctx.data.runs.get("dir", []))
    if len(loaded) < 2:
        st.info(
            "Load two or more results directories, one per run (`benchbed dashboard history/*`), to see a trend."
        )
        return
    metric = st.selectbox(
        "Metric",
        list(history.DEFAULT_METRICS),
        format_func=lambda m: figures.HISTORY_LABELS.get(m, m),
        key="history_metric",
    )
    table = cached_history(loaded, ctx.stamp)
    shown_keys = set(ctx.cells["config_key"].dropna()) if "config_key" in ctx.cells else set()
    table = table[table["config_key"].isin(shown_keys)]
    if table.empty:
        st.info("No configuration of the filtered cells appears in these runs.")
        return
    if metric == "co2_kg":
        st.caption(
            "CO2 is an estimate: measured energy times a grid carbon intensity "
            "(grid_intensity_g_per_kwh, default the 2023 world average); see docs/carbon.md."
        )
    st.plotly_chart(figures.history_figure(table, metric), key="history_figure")
    trend = history.trend(table, metric)
    trend["first"] = [format_value(v, metric) for v in trend["first"]]
    trend["last"] = [format_value(v, metric) for v in trend["last"]]
    trend["change"] = ["" if math.isnan(v) else f"{v:+.1%}" for v in trend["change"].astype(float)]
    st.caption("Trend: first and last run that measured the metric (not a gate verdict).")
    st.dataframe(trend.drop(columns=["config_key"]), hide_index=True, key="history_trend")
