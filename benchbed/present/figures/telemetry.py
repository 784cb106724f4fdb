"""Telemetry over time: power, memory, utilisation, clocks, one panel per quantity, one line per cell.

Long series are reduced per cell with min/max bucketing, which keeps power spikes visible where
plain striding would drop them (the idea behind Steinarsson 2013, "Downsampling Time Series for
Visual Representation").
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from benchbed.present.figures.common import TEMPLATE, empty_figure, palette_color
from benchbed.present.format import BYTES_PER_MEMORY_UNIT, MEMORY_UNIT


def downsample_minmax(frame: pd.DataFrame, x: str, ys: list[str], max_points: int) -> pd.DataFrame:
    """At most about `max_points` rows of one series: per bucket, the rows holding each y's min and max.

    Rows are returned in x order. Short series come back unchanged."""
    if len(frame) <= max_points:
        return frame
    frame = frame.sort_values(x)
    buckets = max(1, max_points // (2 * max(1, len(ys))))
    bucket = (np.arange(len(frame)) * buckets) // len(frame)
    positions = set()
    grouped = pd.DataFrame({"bucket": bucket})  # index = row position in the sorted frame
    for y in ys:
        values = frame[y].to_numpy(float)
        if np.isnan(values).all():
            continue
        grouped["v"] = values
        # a quantity sampled at a slower rate is NaN between its samples: buckets use its own rows,
        # and idxmin / idxmax give their labels, which are positions in the sorted frame
        by_bucket = grouped.dropna(subset=["v"]).groupby("bucket")["v"]
        positions.update(by_bucket.idxmin().to_numpy().tolist())
        positions.update(by_bucket.idxmax().to_numpy().tolist())
    if not positions:
        positions = set(range(0, len(frame), max(1, len(frame) // max_points)))
    return frame.iloc[sorted(positions)]


#: telemetry column suffix -> (panel title, scale factor); panels appear in this order
TELEMETRY_GROUPS = (
    ("_w", "power (W)", 1.0),
    ("_bytes", f"memory ({MEMORY_UNIT})", 1.0 / BYTES_PER_MEMORY_UNIT),
    ("_pct", "utilisation (%)", 1.0),
    ("_mhz", "clock (MHz)", 1.0),
    ("_c", "temperature (°C)", 1.0),
    ("_j", "energy (J)", 1.0),
)

#: sampler bookkeeping in telemetry.parquet, not a measured quantity
TELEMETRY_BOOKKEEPING = ("cell_id", "t_s", "sample_lag_s", "in_window", "run_id", "run_dir")


def telemetry_quantities(telemetry: pd.DataFrame) -> dict[str, list[str]]:
    """Panel title -> telemetry columns for it, by unit suffix (other numeric columns get their own)."""
    grouped: dict[str, list[str]] = {}
    others: dict[str, list[str]] = {}
    for column in telemetry.columns:
        values = telemetry[column]
        if column in TELEMETRY_BOOKKEEPING or pd.api.types.is_bool_dtype(values):
            continue
        if not pd.api.types.is_numeric_dtype(values):
            continue
        for suffix, title, _ in TELEMETRY_GROUPS:
            if column.endswith(suffix):
                grouped.setdefault(title, []).append(column)
                break
        else:
            others.setdefault(column, []).append(column)
    ordered = {title: grouped[title] for _, title, _ in TELEMETRY_GROUPS if title in grouped}
    return {**ordered, **others}


def telemetry_figure(
    telemetry: pd.DataFrame,
    cell_labels: dict[str, str],
    max_points_per_cell: int = 1500,
    height_per_panel: int = 220,
) -> go.Figure:
    """Power, memory and utilisation over time for the cells in `cell_labels` (cell_id -> label).

    A quantity with no sample in the chosen cells gets a panel saying it was not measured."""
    chosen = telemetry[telemetry["cell_id"].isin(list(cell_labels))]
    if chosen.empty:
        return empty_figure("not measured: no telemetry samples for the chosen cells")
    panels = telemetry_quantities(chosen)
    if not panels:
        return empty_figure("not measured: telemetry.parquet has no sampled quantity")
    titles = list(panels)
    for index, title in enumerate(titles):
        if chosen[panels[title]].isna().all().all():
            titles[index] = f"{title}: not measured"
    fig = make_subplots(
        rows=len(panels), cols=1, shared_xaxes=True, subplot_titles=titles, vertical_spacing=0.08
    )
    scale = {title: factor for _, title, factor in TELEMETRY_GROUPS}
    all_columns = [c for columns in panels.values() for c in columns]
    for c_index, (cell_id, part) in enumerate(chosen.groupby("cell_id", sort=False)):
        small = downsample_minmax(part, "t_s", all_columns, max_points_per_cell)
        for p_index, (title, columns) in enumerate(panels.items()):
            for column in columns:
                # sensors are sampled at different rates: plot each quantity's own samples, no gaps
                present = small[column].notna()
                if not present.any():
                    continue
                values = small.loc[present, column]
                label = cell_labels[cell_id] + ("" if len(columns) == 1 else f" · {column}")
                fig.add_trace(
                    go.Scattergl(
                        x=small.loc[present, "t_s"],
                        y=values * scale.get(title, 1.0),
                        mode="lines",
                        name=label,
                        legendgroup=cell_id,
                        showlegend=p_index == 0,
                        line={"color": palette_color(c_index), "width": 1.2},
                    ),
                    row=p_index + 1,
                    col=1,
                )
    fig.update_xaxes(title_text="time since cell start (s)", row=len(panels), col=1)
    fig.update_layout(
        template=TEMPLATE,
        height=height_per_panel * len(panels) + 120,
        legend={"orientation": "h", "y": -0.12},
        margin={"t": 40, "l": 60, "r": 20, "b": 40},
    )
    return fig
