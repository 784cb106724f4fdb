"""Pareto fronts: per-configuration medians of two lower-is-better metrics, the undominated joined."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from benchbed.present.figures.common import METRICS, TEMPLATE, empty_figure, subplot_grid
from benchbed.present.format import in_memory_unit, is_memory, memory_label


def pareto_front(points: pd.DataFrame, x: str, y: str) -> pd.Series:
    """Boolean mask: rows not dominated in (x, y), both lower-is-better. NaN or infinite (target not
    reached) rows are never on it."""
    on_front = pd.Series(False, index=points.index)
    valid = points[[x, y]].astype(float)
    valid = valid[np.isfinite(valid).all(axis=1)]
    if valid.empty:
        return on_front
    ordered = valid.sort_values([x, y])
    best_y = math.inf
    for index, y_value in zip(ordered.index, ordered[y], strict=True):
        if y_value < best_y:
            on_front[index] = True
            best_y = y_value
    return on_front


def pareto_figure(summary: pd.DataFrame, x: str, y: str, height_per_row: int = 380) -> go.Figure:
    """Scatter of per-variant medians `x` against `y`, one panel per workload, the front joined by a line.

    `summary` has one row per (workload, variant) with `x` and `y` columns (medians over seeds)."""
    x_label, y_label = (memory_label(METRICS.get(c, (c, True))[0]) for c in (x, y))
    if summary.empty:
        return empty_figure("no variants to plot")
    workloads = sorted(summary["workload"].unique())
    rows, cols = subplot_grid(len(workloads))
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=workloads, horizontal_spacing=0.08)
    dropped_total = 0
    for w_index, workload in enumerate(workloads):
        row, col = divmod(w_index, cols)
        part = summary[summary["workload"] == workload]
        finite = np.isfinite(part[[x, y]].astype(float)).all(axis=1)
        plotted = part[finite]
        dropped_total += len(part) - len(plotted)
        plotted = plotted.assign(**{c: in_memory_unit(plotted[c]) for c in (x, y) if is_memory(c)})
        front = pareto_front(plotted, x, y)
        others = plotted[~front]
        front_points = plotted[front].sort_values(x)
        show_legend = w_index == 0
        fig.add_trace(
            go.Scatter(
                x=others[x],
                y=others[y],
                mode="markers",
                name="dominated",
                legendgroup="dominated",
                showlegend=show_legend,
                marker={"size": 9, "color": "#9aa5b1"},
                text=others["variant"],
                hovertemplate="%{text}<br>"
                + x_label
                + "=%{x:.4g}<br>"
                + y_label
                + "=%{y:.4g}<extra></extra>",
            ),
            row=row + 1,
            col=col + 1,
        )
        fig.add_trace(
            go.Scatter(
                x=front_points[x],
                y=front_points[y],
                mode="lines+markers+text",
                name="Pareto front",
                legendgroup="front",
                showlegend=show_legend,
                marker={"size": 11, "color": "#d62728"},
                line={"color": "#d62728", "dash": "dot"},
                text=front_points["variant"],
                textposition="top center",
                textfont={"size": 10},
                hovertemplate="%{text}<br>"
                + x_label
                + "=%{x:.4g}<br>"
                + y_label
                + "=%{y:.4g}<extra></extra>",
            ),
            row=row + 1,
            col=col + 1,
        )
    fig.update_xaxes(title_text=x_label)
    fig.update_yaxes(title_text=y_label)
    title = f"{x_label} against {y_label}"
    if dropped_total:
        title += f" ({dropped_total} variant(s) not shown: a value is not measured or the target not reached)"
    fig.update_layout(
        template=TEMPLATE,
        title={"text": title, "font": {"size": 14}},
        height=height_per_row * rows + 80,
        margin={"t": 70, "l": 60, "r": 20, "b": 40},
    )
    return fig
