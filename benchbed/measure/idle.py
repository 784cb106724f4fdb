"""Idle power, measured once per run before the first cell, so gross and net energy (gross minus idle
power times training time) can both be reported, as recommended by Henderson et al., "Towards the
Systematic Reporting of the Energy and Carbon Footprints of Machine Learning", JMLR 2020.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchbed.measure.sensors.cuda_memory import TorchCudaMemory
from benchbed.measure.sensors.host import DEFAULT_RAPL_ROOT
from benchbed.measure.sensors.nvml import DEFAULT_NVML
from benchbed.measure.telemetry import Telemetry


def measure_idle_power(
    seconds: float,
    device: Any,
    *,
    power_hz: float = 10.0,
    nvml: Any = DEFAULT_NVML,
    clock: Callable[[], float] = time.perf_counter,
    sleep: Callable[[float], None] = time.sleep,
    rapl_root: str | Path = DEFAULT_RAPL_ROOT,
    threaded: bool = True,
) -> dict[str, Any]:
    """Mean power of ``device`` doing nothing for ``seconds`` (the runner calls it before the first cell).

    Returns ``idle_power_w`` (NaN where not measurable), ``idle_energy_j``, ``idle_window_s``,
    ``idle_source`` and ``idle_sensor_errors``.
    """
    tel = Telemetry(
        device,
        cell_id="idle",
        power_hz=power_hz,
        nvml=nvml,
        clock=clock,
        rapl_root=rapl_root,
        cuda_memory=_NoCudaMemory(),
        threaded=threaded,
    )
    tel.start()
    tel.window_start()
    sleep(seconds)
    tel.window_end()
    summary = tel.stop()
    return {
        "idle_power_w": summary["mean_power_w"],
        "idle_energy_j": summary["energy_j"],
        "idle_window_s": summary["telemetry_window_s"],
        "idle_source": summary["energy_source"],
        "idle_sensor_errors": summary["sensor_errors"],
    }


class _NoCudaMemory(TorchCudaMemory):
    """Idle measurement must not reset the peak-memory statistics of anything else."""

    def reset_peak(self, index: int) -> None:
        pass
