"""The leaderboard as horizontal bars with confidence-interval whiskers (the dashboard's chart)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from benchbed.present.figures.common import TEMPLATE, empty_figure, palette_color


def leaderboard_figure(
    board: pd.DataFrame, value: str, low: str | None, high: str | None, label: str
) -> go.Figure:
    """Horizontal bars of `value` per leaderboard row (in the board's order) with CI whiskers."""
    plotted = board if value in board else board.iloc[0:0]
    if plotted.empty or not np.isfinite(plotted[value].astype(float)).any():
        return empty_figure(f"{label}: no value to plot")
    names = plotted["__row_label"] if "__row_label" in plotted else plotted.index.astype(str)
    finite = np.isfinite(plotted[value].astype(float))
    missing_text = "not reached" if "to_target" in value else "not measured"
    error = None
    if low and high and low in plotted and high in plotted:
        error = {
            "type": "data",
            "symmetric": False,
            "array": (plotted[high] - plotted[value]).clip(lower=0).where(finite, 0.0),
            "arrayminus": (plotted[value] - plotted[low]).clip(lower=0).where(finite, 0.0),
            "color": "#333",
        }
    fig = go.Figure(
        go.Bar(
            x=plotted[value].where(finite, 0.0),
            y=names,
            text=["" if ok else missing_text for ok in finite],
            textposition="outside",
            orientation="h",
            error_x=error,
            marker_color=[
                palette_color(0) if not b else "#7f7f7f"
                for b in plotted.get("__is_baseline", [False] * len(plotted))
            ],
            hovertemplate="%{y}<br>%{x:.4g}<extra></extra>",
        )
    )
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(
        template=TEMPLATE,
        xaxis_title=label,
        height=max(220, 28 * len(plotted) + 90),
        margin={"t": 20, "l": 20, "r": 20, "b": 40},
    )
    return fig
