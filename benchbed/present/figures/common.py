"""What every figure shares: metric labels, the palette and template, and "not measured" reasons.

Figures take result tables (the frames of ``benchbed.results.store.load``, or tables derived from them by
``benchbed.analyse``) and return a ``plotly.graph_objects.Figure``; nothing here ranks anything.
Memory is drawn in the unit ``benchbed.present.format`` writes it in (GiB).
"""

from __future__ import annotations

import math

import pandas as pd
import plotly.graph_objects as go

#: metric column -> (label for axes and tables, lower is better)
METRICS: dict[str, tuple[str, bool]] = {
    "time_to_target_s": ("time to target (s)", True),
    "energy_to_target_j": ("energy to target (J)", True),
    "peak_mem_bytes": ("peak memory (bytes)", True),
    "tokens_per_s": ("tokens/s", False),
    "saved_activation_bytes": ("saved activations (bytes)", True),
    "optimizer_state_bytes": ("optimizer state (bytes)", True),
    "grad_bytes": ("gradients (bytes)", True),
    "param_bytes": ("parameters (bytes)", True),
}

PALETTE = (
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd",
    "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f",
)  # fmt: skip

TEMPLATE = "plotly_white"


def not_measured_reason(cells: pd.DataFrame, column: str) -> str | None:
    """Why `column` has no value in any of `cells`, or None when at least one cell measured it.

    The dashboard shows this text in place of a number: a metric that was not measured is never 0."""
    if column not in cells.columns:
        return f"not measured: column {column} is missing from cells.parquet"
    if len(cells) and cells[column].notna().any():
        return None
    if column in ("energy_to_target_j", "energy_j"):
        sources = set(cells.get("energy_source", pd.Series(dtype=str)).dropna())
        if not sources or sources == {"unavailable"}:
            return "not measured: no energy sensor on this machine (energy_source = unavailable)"
        if column == "energy_to_target_j":
            return "not reached: no cell reached its target loss, so there is no energy to target"
    if column in ("time_to_target_s", "tokens_to_target", "steps_to_target"):
        return "not reached: no cell reached its target loss"
    if column == "peak_mem_bytes":
        sources = set(cells.get("mem_source", pd.Series(dtype=str)).dropna())
        return f"not measured: no memory reading (mem_source = {', '.join(sorted(sources)) or 'none'})"
    return f"not measured: no cell has a value for {column}"


def palette_color(index: int) -> str:
    return PALETTE[index % len(PALETTE)]


def rgba(hex_color: str, alpha: float) -> str:
    r, g, b = (int(hex_color[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def empty_figure(message: str) -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(text=message, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
    fig.update_layout(template=TEMPLATE, height=240, xaxis_visible=False, yaxis_visible=False)
    return fig


def subplot_grid(n: int, max_cols: int = 2) -> tuple[int, int]:
    cols = min(n, max_cols)
    return math.ceil(n / cols), cols
