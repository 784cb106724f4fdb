"""History: one line per configuration (and host kind) of a metric across runs, oldest run first.

Takes ``benchbed.analyse.history.history``'s table. The x axis is the run (its order, commit and
start time), not a date scale: runs are ordered by commit, and a commit measured twice is two
points. A target never reached (+inf) or a metric not measured (NaN) leaves a gap, never a 0.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from benchbed.present.figures.common import TEMPLATE, empty_figure, palette_color
from benchbed.present.format import in_memory_unit, is_memory, memory_label

#: metric -> axis label (CO2 is always labelled an estimate)
HISTORY_LABELS = {
    "time_to_target_s": "time to target (s)",
    "tokens_per_s": "tokens/s",
    "energy_to_target_j": "energy to target (J)",
    "co2_kg": "CO2 (kg, estimate: energy x grid intensity)",
    "peak_mem_bytes": "peak memory (bytes)",
    "tokens_to_target": "tokens to target",
    "final_val_loss": "final validation loss",
}


def history_figure(table: pd.DataFrame, metric: str) -> go.Figure:
    label = memory_label(HISTORY_LABELS.get(metric, metric))
    if table.empty or metric not in table.columns:
        return empty_figure(f"no history of {metric}")
    runs = table.drop_duplicates("order").sort_values("order")
    ticks = [f"{o}: {r}" for o, r in zip(runs["order"], runs["run"], strict=True)]
    fig = go.Figure()
    groups = table.groupby(["workload", "variant", "host_kind"], sort=True, dropna=False)
    for index, ((workload, variant, kind), group) in enumerate(groups):
        group = group.sort_values("order")
        values = group[metric].to_numpy(dtype=np.float64)
        values = np.where(np.isfinite(values), values, np.nan)  # not reached / not measured: a gap
        if is_memory(metric):
            values = in_memory_unit(values)
        fig.add_trace(
            go.Scatter(
                x=[f"{o}: {r}" for o, r in zip(group["order"], group["run"], strict=True)],
                y=values,
                mode="lines+markers",
                name=f"{workload} · {variant}" + (f" · {kind}" if kind else ""),
                line={"color": palette_color(index)},
                connectgaps=False,
            )
        )
    fig.update_layout(
        template=TEMPLATE,
        xaxis={
            "title": "run (oldest first: order, commit, start)",
            "categoryorder": "array",
            "categoryarray": ticks,
        },
        yaxis={"title": label},
        legend={"orientation": "h", "y": -0.3},
        margin={"t": 30},
    )
    return fig
