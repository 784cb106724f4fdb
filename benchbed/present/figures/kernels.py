"""Kernel speedups over the PyTorch reference (``kernels.parquet`` from ``benchbed kernels bench``)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from benchbed.present.figures.common import TEMPLATE, empty_figure, palette_color, subplot_grid

REFERENCE_BACKEND = "reference"


def kernel_speedups(kernels: pd.DataFrame) -> pd.DataFrame:
    """Each non-reference row with `speedup` = reference median_ms / its median_ms (same op, shape,
    dtype, mode, device). NaN where the reference was not measured for that shape."""
    keys = [k for k in ("op", "shape", "dtype", "mode", "device") if k in kernels.columns]
    reference = (
        kernels[kernels["backend"] == REFERENCE_BACKEND][keys + ["median_ms"]]
        .groupby(keys, as_index=False)["median_ms"]
        .median()
        .rename(columns={"median_ms": "reference_ms"})
    )
    others = kernels[kernels["backend"] != REFERENCE_BACKEND].merge(reference, on=keys, how="left")
    others["speedup"] = others["reference_ms"] / others["median_ms"]
    # shapes stay in the order they were benchmarked (usually small to large), not sorted as text
    others = others.sort_values(["op", "backend"], kind="stable").reset_index(drop=True)
    first = ["op", "backend", "shape", "dtype", "mode", "speedup", "median_ms", "reference_ms"]
    return others[[c for c in first if c in others] + [c for c in others if c not in first]]


def kernels_figure(speedups: pd.DataFrame, height_per_row: int = 320) -> go.Figure:
    """Speedup over the PyTorch reference by shape, one panel per op, one bar colour per backend."""
    if speedups.empty:
        return empty_figure("no kernel backend besides the reference was measured")
    ops = sorted(speedups["op"].unique())
    rows, cols = subplot_grid(len(ops))
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=ops, horizontal_spacing=0.08)
    backends = sorted(speedups["backend"].unique())
    for o_index, op in enumerate(ops):
        row, col = divmod(o_index, cols)
        part = speedups[speedups["op"] == op]
        for b_index, backend in enumerate(backends):
            bars = part[part["backend"] == backend]
            if bars.empty:
                continue
            label = bars["shape"] + (" " + bars["dtype"] + " " + bars["mode"] if "mode" in bars else "")
            fig.add_trace(
                go.Bar(
                    x=label,
                    y=bars["speedup"],
                    name=backend,
                    legendgroup=backend,
                    showlegend=o_index == 0,
                    marker_color=palette_color(b_index),
                    text=[f"{v:.2f}×" if np.isfinite(v) else "no reference" for v in bars["speedup"]],
                    textposition="outside",
                ),
                row=row + 1,
                col=col + 1,
            )
        fig.add_hline(y=1.0, line={"dash": "dash", "color": "#555", "width": 1}, row=row + 1, col=col + 1)
    fig.update_yaxes(title_text="speedup vs reference (×)")
    fig.update_layout(
        template=TEMPLATE,
        barmode="group",
        height=height_per_row * rows + 60,
        margin={"t": 40, "l": 60, "r": 20, "b": 40},
    )
    return fig
