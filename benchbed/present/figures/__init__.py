"""Plotly figure builders shared by the Streamlit dashboard and the static HTML report.

One module per figure family: ``curves`` (validation loss with seed bands), ``pareto`` (fronts of
two metrics), ``telemetry`` (sensor series over time), ``kernels`` (speedups over the reference),
``leaderboard`` (ranked bars with intervals), ``history`` (a metric across runs); ``common`` holds the metric labels, palette, template
and the "not measured" reasons. The public names are re-exported here, so callers write
``figures.curves_figure(...)``.
"""

from benchbed.present.figures.common import (
    METRICS,
    PALETTE,
    TEMPLATE,
    empty_figure,
    not_measured_reason,
)
from benchbed.present.figures.curves import CURVE_AXES, curves_figure, seed_band
from benchbed.present.figures.history import HISTORY_LABELS, history_figure
from benchbed.present.figures.kernels import REFERENCE_BACKEND, kernel_speedups, kernels_figure
from benchbed.present.figures.leaderboard import leaderboard_figure
from benchbed.present.figures.pareto import pareto_figure, pareto_front
from benchbed.present.figures.telemetry import (
    TELEMETRY_BOOKKEEPING,
    TELEMETRY_GROUPS,
    downsample_minmax,
    telemetry_figure,
    telemetry_quantities,
)

__all__ = [
    "CURVE_AXES",
    "HISTORY_LABELS",
    "METRICS",
    "PALETTE",
    "REFERENCE_BACKEND",
    "TELEMETRY_BOOKKEEPING",
    "TELEMETRY_GROUPS",
    "TEMPLATE",
    "curves_figure",
    "downsample_minmax",
    "empty_figure",
    "history_figure",
    "kernel_speedups",
    "kernels_figure",
    "leaderboard_figure",
    "not_measured_reason",
    "pareto_figure",
    "pareto_front",
    "seed_band",
    "telemetry_figure",
    "telemetry_quantities",
]
