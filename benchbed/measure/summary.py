"""The summary columns of one cell for cells.parquet, from its training windows, its samples and the
allocator's peak-memory statistics (``Telemetry.stop()`` calls ``summarise``).

Memory: ``peak_mem_bytes`` is ``torch.cuda.max_memory_allocated`` (the largest over the cell's
devices, ``cuda_max_allocated``), else the peak NVML used memory (``nvml_used``) when the allocator
statistics cannot be read, and the process's peak resident set on CPU cells (``ru_maxrss``).
"""

from __future__ import annotations

import math
import re
from typing import Any

import pandas as pd

from benchbed.measure.energy import (
    ENERGY_DISAGREEMENT_LIMIT,
    ENERGY_DISAGREEMENT_MIN_WINDOW_S,
    Window,
    chosen_energy,
    closed_totals,
)
from benchbed.measure.sensors.base import error_text
from benchbed.measure.sensors.host import peak_rss_bytes

NAN = float("nan")


def empty_summary(
    idle_power_w: float, power_source: str, sample_count: int, sensor_errors: list[str]
) -> dict[str, Any]:
    """Every summary column, none measured."""
    return {
        "energy_j": NAN,
        "energy_source": "unavailable",
        "energy_integral_j": NAN,
        "energy_disagreement": NAN,
        "energy_flag": False,
        "mean_power_w": NAN,
        "peak_power_w": NAN,
        "idle_power_w": idle_power_w,
        "net_energy_j": NAN,
        "power_source": power_source,
        "telemetry_window_s": NAN,
        "peak_mem_bytes": NAN,
        "mem_source": "unavailable",
        "max_memory_reserved_bytes": NAN,
        "peak_rss_bytes": NAN,
        "nvml_peak_used_bytes": NAN,
        "sample_count": sample_count,
        "sample_lag_p99_s": NAN,
        "sensor_errors": "; ".join(sensor_errors),
    }


def summarise(
    *,
    windows: list[Window],
    energy_source: str,
    cuda_indices: list[int],
    idle_power_w: float,
    power_source: str,
    samples: pd.DataFrame,
    sample_count: int,
    cuda_memory: Any,
    sensor_errors: list[str],
) -> dict[str, Any]:
    """The summary of a stopped cell; a failing allocator read is appended to ``sensor_errors``."""
    summary = empty_summary(idle_power_w, power_source, sample_count, sensor_errors)
    window_s, counter_j, integral_j = closed_totals(windows)
    energy_j, source = chosen_energy(energy_source, counter_j, integral_j)
    has_counter = energy_source == "nvml_counter"
    summary["energy_j"], summary["energy_source"] = energy_j, source
    summary["energy_integral_j"] = integral_j if cuda_indices else NAN
    if has_counter and counter_j > 0 and not math.isnan(integral_j):
        disagreement = abs(integral_j - counter_j) / counter_j
        summary["energy_disagreement"] = disagreement
        summary["energy_flag"] = bool(
            disagreement > ENERGY_DISAGREEMENT_LIMIT and window_s >= ENERGY_DISAGREEMENT_MIN_WINDOW_S
        )
    summary["telemetry_window_s"] = window_s if windows else NAN
    if window_s > 0:
        summary["mean_power_w"] = energy_j / window_s
        summary["net_energy_j"] = energy_j - idle_power_w * window_s
    frame = samples
    in_window = frame[frame["in_window"].astype(bool)] if "in_window" in frame else frame.iloc[0:0]
    power_columns = [c for c in frame.columns if re.fullmatch(r"gpu\d+_power_w", c)] or (
        ["cpu_power_w"] if "cpu_power_w" in frame else []
    )
    if power_columns and len(in_window):
        peak = in_window[power_columns].sum(axis=1, min_count=len(power_columns)).max()
        summary["peak_power_w"] = float(peak) if pd.notna(peak) else NAN
    used_columns = [c for c in frame.columns if re.fullmatch(r"gpu\d+_mem_used_bytes", c)]
    if used_columns:
        summary["nvml_peak_used_bytes"] = float(frame[used_columns].max().max())
    if "sample_lag_s" in frame and frame["sample_lag_s"].notna().any():
        summary["sample_lag_p99_s"] = float(frame["sample_lag_s"].abs().quantile(0.99))
    _summarise_memory(summary, cuda_indices, cuda_memory, sensor_errors)
    summary["sensor_errors"] = "; ".join(sensor_errors)
    return summary


def _summarise_memory(
    summary: dict[str, Any], cuda_indices: list[int], cuda_memory: Any, sensor_errors: list[str]
) -> None:
    summary["peak_rss_bytes"] = peak_rss_bytes()
    if not cuda_indices:
        summary["peak_mem_bytes"], summary["mem_source"] = peak_rss_bytes(), "ru_maxrss"
        return
    try:
        # The largest per-device peak: what decides whether a configuration fits on the GPU.
        summary["peak_mem_bytes"] = max(cuda_memory.max_allocated_bytes(i) for i in cuda_indices)
        summary["max_memory_reserved_bytes"] = max(cuda_memory.max_reserved_bytes(i) for i in cuda_indices)
        summary["mem_source"] = "cuda_max_allocated"
    except Exception as exc:
        sensor_errors.append(f"cuda_memory: {error_text(exc)}")
        if not math.isnan(summary["nvml_peak_used_bytes"]):
            summary["peak_mem_bytes"], summary["mem_source"] = (
                summary["nvml_peak_used_bytes"],
                "nvml_used",
            )
