"""Plotly figure builders shared by the Streamlit dashboard and the static HTML report.

Every builder takes result tables (the frames of `benchbed.store.load`, or tables derived from them by
`benchbed.stats`) and returns a `plotly.graph_objects.Figure`; nothing here ranks anything. Seed bands
follow the practice of reporting spread over seeds rather than a single run (Dehghani et al. 2021,
"The Efficiency Misnomer"; Kaddour et al. 2023, "No Train No Gain"). Long telemetry series are
reduced per cell with min/max bucketing, which keeps power spikes visible where plain striding would
drop them (the idea behind Steinarsson 2013, "Downsampling Time Series for Visual Representation").
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

#: metric column -> (label for axes and tables, lower is better)
METRICS: dict[str, tuple[str, bool]] = {
    "time_to_target_s": ("time to target (s)", True),
    "energy_to_target_j": ("energy to target (J)", True),
    "peak_mem_bytes": ("peak memory (bytes)", True),
    "tokens_per_s": ("tokens/s", False),
}

#: curve x-axis choices: curves.parquet column -> axis label
CURVE_AXES: dict[str, str] = {
    "train_time_s": "training time (s)",
    "tokens": "tokens",
    "energy_j": "energy (J)",
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


def _color(index: int) -> str:
    return PALETTE[index % len(PALETTE)]


def _rgba(hex_color: str, alpha: float) -> str:
    r, g, b = (int(hex_color[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def _empty_figure(message: str) -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(text=message, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
    fig.update_layout(template=TEMPLATE, height=240, xaxis_visible=False, yaxis_visible=False)
    return fig


def _subplot_grid(n: int, max_cols: int = 2) -> tuple[int, int]:
    cols = min(n, max_cols)
    return math.ceil(n / cols), cols


# -- curves ------------------------------------------------------------------------------------------


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
        return _empty_figure(f"validation loss against {CURVE_AXES[x]}: {reason}")
    meta = cells[
        ["cell_id", "workload", "variant", "target_loss"] + (["run_id"] if "run_id" in cells else [])
    ]
    if variants is not None:
        meta = meta[meta["variant"].isin(variants)]
    order = list(variants) if variants else sorted(meta["variant"].astype(str).unique())
    colors = {v: _color(i) for i, v in enumerate(order)}
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
        return _empty_figure("no curves for the selected cells")
    workloads = sorted(joined["workload"].unique())
    rows, cols = _subplot_grid(len(workloads))
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
                        fillcolor=_rgba(color, 0.18),
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


# -- Pareto ------------------------------------------------------------------------------------------


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
    x_label, y_label = (METRICS.get(c, (c, True))[0].replace("(bytes)", "(GiB)") for c in (x, y))
    if summary.empty:
        return _empty_figure("no variants to plot")
    workloads = sorted(summary["workload"].unique())
    rows, cols = _subplot_grid(len(workloads))
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=workloads, horizontal_spacing=0.08)
    dropped_total = 0
    for w_index, workload in enumerate(workloads):
        row, col = divmod(w_index, cols)
        part = summary[summary["workload"] == workload]
        finite = np.isfinite(part[[x, y]].astype(float)).all(axis=1)
        plotted = part[finite]
        dropped_total += len(part) - len(plotted)
        plotted = plotted.assign(**{c: plotted[c] / 2**30 for c in (x, y) if c.endswith("_bytes")})
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


# -- telemetry ---------------------------------------------------------------------------------------


def downsample_minmax(frame: pd.DataFrame, x: str, ys: list[str], max_points: int) -> pd.DataFrame:
    """At most about `max_points` rows of one series: per bucket, the rows holding each y's min and max.

    Rows are returned in x order. Short series come back unchanged."""
    if len(frame) <= max_points:
        return frame
    frame = frame.sort_values(x)
    buckets = max(1, max_points // (2 * max(1, len(ys))))
    bucket = (np.arange(len(frame)) * buckets) // len(frame)
    positions = set()
    grouped = pd.DataFrame({"bucket": bucket})
    for y in ys:
        values = frame[y].to_numpy(float)
        if np.isnan(values).all():
            continue
        grouped["v"] = values
        grouped["pos"] = np.arange(len(frame))
        valid = grouped.dropna(subset=["v"])
        by_bucket = valid.groupby("bucket")["v"]
        positions.update(valid["pos"].to_numpy()[by_bucket.idxmin().to_numpy()].tolist())
        positions.update(valid["pos"].to_numpy()[by_bucket.idxmax().to_numpy()].tolist())
    if not positions:
        positions = set(range(0, len(frame), max(1, len(frame) // max_points)))
    return frame.iloc[sorted(positions)]


#: telemetry column suffix -> (panel title, scale factor); panels appear in this order
TELEMETRY_GROUPS = (
    ("_w", "power (W)", 1.0),
    ("_bytes", "memory (GiB)", 1.0 / 2**30),
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
        return _empty_figure("not measured: no telemetry samples for the chosen cells")
    panels = telemetry_quantities(chosen)
    if not panels:
        return _empty_figure("not measured: telemetry.parquet has no sampled quantity")
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
                        line={"color": _color(c_index), "width": 1.2},
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


# -- kernels -----------------------------------------------------------------------------------------

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
        return _empty_figure("no kernel backend besides the reference was measured")
    ops = sorted(speedups["op"].unique())
    rows, cols = _subplot_grid(len(ops))
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
                    marker_color=_color(b_index),
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


# -- leaderboard -------------------------------------------------------------------------------------


def leaderboard_figure(
    board: pd.DataFrame, value: str, low: str | None, high: str | None, label: str
) -> go.Figure:
    """Horizontal bars of `value` per leaderboard row (in the board's order) with CI whiskers."""
    plotted = board if value in board else board.iloc[0:0]
    if plotted.empty or not np.isfinite(plotted[value].astype(float)).any():
        return _empty_figure(f"{label}: no value to plot")
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
                _color(0) if not b else "#7f7f7f"
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
