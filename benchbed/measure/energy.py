"""Energy over training windows: the arithmetic behind ``Telemetry``'s energy figures (no devices, no
threads, no locks).

Energy follows the timing rules of the train loop: it is counted only inside training windows
(``Telemetry.window_start`` / ``window_end``, called after a device sync), so evaluation is excluded
exactly as the clock excludes it. A window keeps, at each point read inside it, the cumulative
energy counter and the total power summed over the cell's devices.

- ``nvml_counter`` (primary on NVIDIA GPUs): counter at window end minus counter at window start
  (sensors/nvml.py).
- The trapezoid integral of sampled power over the same windows is always computed on GPUs. Both
  are stored; if they disagree by more than 5% over windows totalling at least 30 s the cell is
  flagged. GPUs without the counter (pre-Volta, vGPU) report the integral as ``nvml_power_integral``.
- ``rapl`` on CPU cells (sensors/host.py); otherwise ``unavailable`` and NaN.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

NAN = float("nan")
# The counter and the integral disagreeing by more than this over at least this much training time
# flags the cell: short windows are dominated by the counter's ~100 ms update granularity.
ENERGY_DISAGREEMENT_LIMIT = 0.05
ENERGY_DISAGREEMENT_MIN_WINDOW_S = 30.0
ENERGY_SOURCES = ("nvml_counter", "nvml_power_integral", "rapl", "unavailable")


def trapezoid_j(times_s: list[float] | np.ndarray, power_w: list[float] | np.ndarray) -> float:
    """Energy of a piecewise-linear power trace; NaN if any point is missing."""
    t = np.asarray(times_s, dtype=np.float64)
    p = np.asarray(power_w, dtype=np.float64)
    if len(t) < 2 or np.isnan(p).any():
        return NAN
    return float(np.sum((t[1:] - t[:-1]) * (p[1:] + p[:-1]) / 2.0))


@dataclass
class Window:
    """One training window: the cumulative energies and total power at each point read inside it."""

    start_s: float
    times_s: list[float] = field(default_factory=list)
    counter_j: list[float] = field(default_factory=list)  # NVML counter or RAPL, summed over devices
    power_w: list[float] = field(default_factory=list)  # summed over devices
    end_s: float = NAN

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s

    def counter_energy_j(self) -> float:
        return self.counter_j[-1] - self.counter_j[0]  # NaN if either edge read failed

    def integral_energy_j(self) -> float:
        return trapezoid_j(self.times_s, self.power_w)


def closed_totals(windows: list[Window]) -> tuple[float, float, float]:
    """(training seconds, counter energy, integral energy) over closed windows."""
    if not windows:
        return 0.0, NAN, NAN
    window_s = sum(w.duration_s for w in windows)
    counter_j = sum(w.counter_energy_j() for w in windows)
    integral_j = sum(w.integral_energy_j() for w in windows)
    return window_s, counter_j, integral_j


def chosen_energy(energy_source: str, counter_j: float, integral_j: float) -> tuple[float, str]:
    """The energy to report and its label; a counter lost mid-run falls back to a complete integral."""
    if energy_source in ("nvml_counter", "rapl") and not math.isnan(counter_j):
        return counter_j, energy_source
    if energy_source in ("nvml_counter", "nvml_power_integral") and not math.isnan(integral_j):
        return integral_j, "nvml_power_integral"
    return NAN, "unavailable"


def energy_at(windows: list[Window], source: str, train_time_s: float) -> float:
    """Cumulative energy from ``source`` at ``train_time_s`` seconds of training (time inside the
    windows, as their edges measured it), interpolated linearly between the points read inside the
    windows; NaN outside the measured range."""
    if source == "unavailable" or not windows:
        return NAN
    times, energies = [], []
    elapsed_s = done_j = 0.0
    for window in windows:
        t = np.asarray(window.times_s, dtype=np.float64) - window.start_s + elapsed_s
        if source == "nvml_power_integral":
            p = np.asarray(window.power_w, dtype=np.float64)
            steps = np.diff(window.times_s) * (p[1:] + p[:-1]) / 2.0
            e = done_j + np.concatenate([[0.0], np.cumsum(steps)])
        else:
            e = np.asarray(window.counter_j, dtype=np.float64) - window.counter_j[0] + done_j
        times.extend(t)
        energies.extend(e)
        elapsed_s += window.duration_s
        done_j = e[-1]
    times_a, energies_a = np.asarray(times), np.asarray(energies)
    keep = ~np.isnan(energies_a)  # a sensor that died leaves NaN points: interpolate the rest
    times_a, energies_a = times_a[keep], energies_a[keep]
    if len(times_a) == 0 or not (times_a[0] <= train_time_s <= times_a[-1]):
        return NAN
    return float(np.interp(train_time_s, times_a, energies_a))
