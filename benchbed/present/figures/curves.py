"""Validation loss against time, tokens or energy: the median over seeds with a min-max seed band.

Seed bands follow the practice of reporting spread over seeds rather than a single run (Dehghani et
al. 2021, "The Efficiency Misnomer"; Kaddour et al. 2023, "No Train No Gain").
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from benchbed.present.figures.common import (
    TEMPLATE,
    empty_figure,
    not_measured_reason,
    palette_color,
    rgba,
    subplot_grid,
)

#: curve x-axis choices: curves.parquet column -> axis label
CURVE_AXES: dict[str, str] = {
    "train_time_s": "training time (s)",
    "tokens": "tokens",
    "energy_j": "energy (J)",
}


def seed_band(curves: pd.DataFrame, x: str, y: str = "val_loss", points: int = 60) -> pd.DataFrame:
    """Median and min/max of `y` over the seeds in `curves` (one variant), on a shared x grid.

    Each seed is linearly interpolated onto the grid; outside a seed's own x range it does not count,
    so the band never invents values past the end of a shorter run."""
    series = [g.sort_values(x) for _, g in curves.dropna(subset=[x, y]).groupby("cell_id", sort=False)]
    if not series:
        return pd.DataFrame(columns=[x, "median", "low", "high", "n"])
    x_max = max(float(s[x].iloc[-1]) for s in series)
    x_min = min(float(s[x].iloc[0]) for s in series)
    grid = np.linspace(x_min, x_max, points)
    stacked = np.full((len(series), points), np.nan)
    for row, s in enumerate(series):
        xs, ys = s[x].to_numpy(float), s[y].to_numpy(float)
        inside = (grid >= xs[0]) & (grid <= xs[-1])
        stacked[row, inside] = np.interp(grid[inside], xs, ys)
    counts = np.sum(~np.isnan(stacked), axis=0)
    keep = counts > 0
    with np.errstate(all="ignore"):
        return pd.DataFrame(
            {
                x: grid[keep],
                "median": np.nanmedian(stacked[:, keep], axis=0),
                "low": np.nanmin(stacked[:, keep], axis=0),
                "high": np.nanmax(stacked[:, keep], axis=0),
                "n": counts[keep],
            }
        )


def curves_figure(
    curves: pd.DataFrame,
    cells: pd.DataFrame,
    x: str = "train_time_s",
    variants: list[str] | None = None,
    height_per_row: int = 380,
) -> go.Figure:
    """Validation loss against `x`, one line per variant (median over seeds) with a min-max seed band,
    one panel per workload, the workload's target loss dashed."""
    if x not in CURVE_AXES:
        raise ValueError(f"x must be one of {sorted(CURVE_AXES)}, got {x!r}")
    reason = not_measured_reason(curves, x) if x == "energy_j" else None
    if reason == "not measured: no cell has a value for energy_j":
        reason = not_measured_reason(cells, "energy_j")
    if reason:
        return empty_figure(f"validation loss against {CURVE_AXES[x]}: {reason}")
    meta = cells[
        ["cell_id", "workload", "variant", "target_loss"] + (["run_id"] if "run_id" in cells else [])
    ]
    if variants is not None:
        meta = meta[meta["variant"].isin(variants)]
    order = list(variants) if variants else sorted(meta["variant"].astype(str).unique())
    colors = {v: palette_color(i) for i, v in enumerate(order)}
    dashes: dict[str, str] = {}
    if "run_id" in meta and meta["run_id"].nunique() > 1:
        # seeds of different runs are different measurements: one line (and band) per variant and run,
        # the variant's colour kept and the run told apart by the dash
        run_ids = sorted(meta["run_id"].astype(str).unique())
        meta = meta.assign(variant=meta["variant"].astype(str) + " · " + meta["run_id"].astype(str))
        series = [f"{v} · {r}" for v in order for r in run_ids]
        colors = {f"{v} · {r}": colors[v] for v in order for r in run_ids}
        dashes = {
            f"{v} · {r}": ("solid", "dash", "dot", "dashdot")[i % 4]
            for v in order
            for i, r in enumerate(run_ids)
        }
        order = series
    joined = curves.drop(columns=["run_id"], errors="ignore").merge(meta, on="cell_id", how="inner")
    if joined.empty:
        return empty_figure("no curves for the selected cells")
    workloads = sorted(joined["workload"].unique())
    rows, cols = subplot_grid(len(workloads))
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=workloads, horizontal_spacing=0.08)
    for w_index, workload in enumerate(workloads):
        row, col = divmod(w_index, cols)
        part = joined[joined["workload"] == workload]
        for variant in order:
            runs = part[part["variant"] == variant]
            if runs.empty:
                continue
            band = seed_band(runs, x)
            color = colors[variant]
            first = w_index == 0
            if (band["n"] > 1).any():
                fig.add_trace(
                    go.Scatter(
                        x=np.concatenate([band[x], band[x][::-1]]),
                        y=np.concatenate([band["high"], band["low"][::-1]]),
                        fill="toself",
                        fillcolor=rgba(color, 0.18),
                        line={"width": 0},
                        hoverinfo="skip",
                        showlegend=False,
                        legendgroup=variant,
                    ),
                    row=row + 1,
                    col=col + 1,
                )
            fig.add_trace(
                go.Scatter(
                    x=band[x],
                    y=band["median"],
                    name=variant,
                    legendgroup=variant,
                    showlegend=first,
                    line={"color": color, "width": 2, "dash": dashes.get(variant, "solid")},
                    hovertemplate=f"{variant}<br>{CURVE_AXES[x]}=%{{x:.4g}}<br>val loss=%{{y:.4f}}<extra></extra>",
                ),
                row=row + 1,
                col=col + 1,
            )
        target = part["target_loss"].dropna()
        if len(target):
            fig.add_hline(
                y=float(target.iloc[0]),
                line={"dash": "dash", "color": "#555", "width": 1},
                annotation_text="target",
                annotation_position="top right",
                row=row + 1,
                col=col + 1,
            )
    fig.update_xaxes(title_text=CURVE_AXES[x])
    fig.update_yaxes(title_text="validation loss")
    fig.update_layout(
        template=TEMPLATE,
        height=height_per_row * rows + 120,
        legend={"orientation": "h", "yanchor": "top", "y": -0.2 / rows},
        margin={"t": 40, "l": 60, "r": 20, "b": 40},
    )
    return fig
