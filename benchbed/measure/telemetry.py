"""Telemetry: power, energy and memory of one cell, with honest labels for what was not measured.

A sampler thread reads the devices a cell uses on a fixed-deadline schedule (deadline k is
``start + k * period``, so a slow read never shifts later samples): power (and the energy counter) at
``power_hz``, memory, utilisation, clocks, temperature and clock-event (throttle) reasons at ``slow_hz``.
At ``start()`` each device is probed once for every NVML call; an unsupported call is never made in
the loop, and a call that fails mid-run is dropped with its reason in ``sensor_errors``. Nothing here
raises into training.

Energy is counted only inside training windows (``window_start``/``window_end``, called after a
device sync), so evaluation is excluded exactly as the clock excludes it; which source is reported
and how windows add up is in ``energy.py``. The sources and their citations are with the sensors:
the NVML counter and sampled power in ``sensors/nvml.py``, RAPL in ``sensors/host.py``; idle power
(gross vs net energy) in ``idle.py``.

The NVML module, the clock, the sysfs root and the CUDA memory calls are parameters so tests replace
them at the library boundary with recorded device traces.

A little over 400 lines: ``Telemetry`` is one object whose sensors, windows and rows share one lock;
what needs no lock (window arithmetic, the summary columns) is already in ``energy.py`` and
``summary.py``.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from benchbed.measure.energy import Window, chosen_energy, closed_totals, energy_at
from benchbed.measure.sensors.base import Sensor, error_text
from benchbed.measure.sensors.cuda_memory import TorchCudaMemory
from benchbed.measure.sensors.host import (
    DEFAULT_RAPL_ROOT,
    RaplDomain,
    WrappingCounter,
    current_rss_bytes,
    find_rapl_domains,
)
from benchbed.measure.sensors.nvml import (
    DEFAULT_NVML,
    load_pynvml,
    nvml_handle,
    nvml_init,
    nvml_shutdown,
    probe_device,
)
from benchbed.measure.summary import empty_summary, summarise

NAN = float("nan")


def next_tick_index(start_s: float, period_s: float, now_s: float, last_index: int) -> int:
    """Index of the next deadline ``start_s + k * period_s`` still in the future.

    Deadlines missed while a tick ran late are skipped rather than fired in a burst, so the samples
    stay on the original grid.
    """
    due = math.floor((now_s - start_s) / period_s) + 1
    return max(last_index + 1, due)


@dataclass
class _Gpu:
    label: str  # gpu0: the torch index, used in column names
    handle: Any
    sensors: dict[str, Sensor]
    unsupported: dict[str, str]
    energy_offset_mj: float = NAN


def _as_devices(device: Any) -> list[Any]:
    import torch

    items = device if isinstance(device, (list, tuple)) else [device]
    devices = []
    for item in items:
        dev = torch.device(item) if item is not None else torch.device("cpu")
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device() if torch.cuda.is_available() else 0)
        devices.append(dev)
    return devices


class Telemetry:
    """Samples the devices of one cell; see the module docstring and docs/telemetry.md.

    ``device`` is a torch device (or a list of them: every CUDA device in it is sampled, its columns
    get a ``gpu<index>_`` prefix so the unit stays the suffix). ``clock`` returns seconds; ``threaded=False`` runs no sampler thread
    (tests drive ``sample_once`` by hand).
    """

    def __init__(
        self,
        device: Any = None,
        cell_id: str = "",
        power_hz: float = 10.0,
        slow_hz: float = 2.0,
        idle_power_w: float = NAN,
        *,
        nvml: Any = DEFAULT_NVML,
        clock: Callable[[], float] = time.perf_counter,
        rapl_root: str | Path = DEFAULT_RAPL_ROOT,
        cuda_memory: Any = None,
        threaded: bool = True,
    ):
        if not power_hz > 0 or not slow_hz > 0:
            raise ValueError(f"telemetry: power_hz and slow_hz must be positive, got {power_hz}, {slow_hz}")
        self.devices = _as_devices(device)
        self.cell_id = cell_id
        self.power_hz = float(power_hz)
        self.slow_every = max(1, round(power_hz / slow_hz))
        self.idle_power_w = float(idle_power_w)
        self._nvml = load_pynvml() if nvml is DEFAULT_NVML else nvml
        self._clock = clock
        self._rapl_root = rapl_root
        self._cuda_memory = cuda_memory if cuda_memory is not None else TorchCudaMemory()
        self._threaded = threaded
        self._lock = threading.RLock()
        self._stop_event = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0 = NAN
        self._gpus: list[_Gpu] = []
        self._nvml_ready = False
        self._rapl: list[tuple[RaplDomain, WrappingCounter]] = []
        self._rapl_offset_uj = 0
        self._last_cpu_point: tuple[float, float] | None = None
        self._rss_sensor = True
        self._rows: list[dict[str, Any]] = []
        self._windows: list[Window] = []
        self._open: Window | None = None
        self.sensor_errors: list[str] = []
        self.energy_source = "unavailable"
        self.power_source = ""
        self._summary: dict[str, Any] | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    @property
    def cuda_indices(self) -> list[int]:
        return [d.index for d in self.devices if d.type == "cuda"]

    def start(self) -> None:
        """Probe the sensors, reset the CUDA peak-memory statistics and start the sampler thread."""
        try:
            self._t0 = self._clock()
            if self.cuda_indices:
                self._start_gpus()
            else:
                self._start_cpu()
            try:
                current_rss_bytes()
            except (OSError, ValueError, IndexError):
                self._rss_sensor = False  # no /proc (macOS): peak RSS still comes from ru_maxrss
            self._choose_energy_source()
            self.sample_once(slow=True)
        except Exception as exc:  # never into training
            self.sensor_errors.append(f"telemetry start: {error_text(exc)}")
        if self._threaded:
            self._thread = threading.Thread(target=self._run, name=f"telemetry-{self.cell_id}", daemon=True)
            self._thread.start()

    def _start_gpus(self) -> None:
        for index in self.cuda_indices:
            try:
                self._cuda_memory.reset_peak(index)
            except Exception as exc:
                self.sensor_errors.append(f"gpu{index}.cuda_memory: {error_text(exc)}")
        reason = nvml_init(self._nvml)
        if reason:
            self.sensor_errors.append(f"nvml: {reason}")
            return
        self._nvml_ready = True
        for index in self.cuda_indices:
            try:
                handle = nvml_handle(self._nvml, index)
            except Exception as exc:
                self.sensor_errors.append(f"gpu{index}: no NVML handle: {error_text(exc)}")
                continue
            sensors, unsupported = probe_device(self._nvml, handle)
            self._gpus.append(_Gpu(f"gpu{index}", handle, sensors, unsupported))

    def _start_cpu(self) -> None:
        domains, _reason = find_rapl_domains(self._rapl_root)
        self._rapl = [(d, WrappingCounter(d.max_energy_range_uj)) for d in domains]
        if self._rapl:
            self._rapl_offset_uj = self._read_rapl_uj()

    def _choose_energy_source(self) -> None:
        if self.cuda_indices:
            complete = len(self._gpus) == len(self.cuda_indices)
            if complete and all("energy" in g.sensors for g in self._gpus):
                self.energy_source = "nvml_counter"
            elif complete and all("power" in g.sensors for g in self._gpus):
                self.energy_source = "nvml_power_integral"
            sources = sorted({g.sensors["power"].source for g in self._gpus if "power" in g.sensors})
            self.power_source = "+".join(sources)
        elif self._rapl:
            self.energy_source = "rapl"
            self.power_source = "rapl"

    def stop(self) -> dict[str, Any]:
        """Stop sampling (closing a window left open) and return the summary columns for cells.parquet."""
        if self._summary is not None:
            return self._summary
        self._stop_event.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        if self._open is not None:
            self.window_end()
        try:
            self._summary = self._summarise()
        except Exception as exc:
            self.sensor_errors.append(f"telemetry summary: {error_text(exc)}")
            self._summary = self._empty_summary()
        if self._nvml_ready:
            nvml_shutdown(self._nvml)
            self._nvml_ready = False
        return self._summary

    # -- reading ---------------------------------------------------------------------------------

    def _read_rapl_uj(self) -> int:
        return sum(counter.update(int(domain.energy_path.read_text())) for domain, counter in self._rapl)

    def _drop(self, gpu: _Gpu, quantity: str, exc: BaseException, t_s: float) -> None:
        lost = getattr(exc, "value", None) == getattr(self._nvml, "NVML_ERROR_GPU_IS_LOST", object())
        dropped = list(gpu.sensors) if lost else [quantity]
        for name in dropped:
            gpu.sensors.pop(name, None)
        what = "all sensors" if lost else quantity
        self.sensor_errors.append(f"{gpu.label}.{what}: {error_text(exc)} at t={t_s:.3f}s; sampling stopped")

    def _read(self, now_s: float, slow: bool) -> tuple[dict[str, float], float, float]:
        """One read of every live sensor: (row values, summed energy counter in J, summed power in W).

        Must hold the lock: RAPL wrap handling needs readings in order.
        """
        t_s = now_s - self._t0
        row: dict[str, float] = {}
        if self.cuda_indices:
            energy_j = 0.0 if self.energy_source == "nvml_counter" else NAN
            power_w = 0.0 if self._gpus else NAN
            for gpu in self._gpus:
                for quantity, sensor in list(gpu.sensors.items()):
                    if not (sensor.fast or slow):
                        continue
                    try:
                        values = sensor.read()
                    except Exception as exc:
                        self._drop(gpu, quantity, exc, t_s)
                        continue
                    if quantity == "energy":
                        if math.isnan(gpu.energy_offset_mj):
                            gpu.energy_offset_mj = values["energy_mj"]
                        row[f"{gpu.label}_energy_j"] = (values["energy_mj"] - gpu.energy_offset_mj) / 1000.0
                    else:
                        row.update({f"{gpu.label}_{name}": value for name, value in values.items()})
                energy_j += row.get(f"{gpu.label}_energy_j", NAN)
                power_w += row.get(f"{gpu.label}_power_w", NAN)
        else:
            energy_j, power_w = self._read_rapl(row, now_s, t_s), NAN
        # Host memory matters on GPU cells too (offloading techniques move state to the host).
        if slow and self._rss_sensor:
            try:
                row.update(current_rss_bytes())
            except (OSError, ValueError, IndexError) as exc:
                self._rss_sensor = False
                self.sensor_errors.append(f"rss: {error_text(exc)}")
        return row, energy_j, power_w

    def _read_rapl(self, row: dict[str, float], now_s: float, t_s: float) -> float:
        energy_j = NAN
        if self._rapl:
            try:
                energy_j = (self._read_rapl_uj() - self._rapl_offset_uj) / 1e6
            except (OSError, ValueError) as exc:
                self._rapl = []
                self.sensor_errors.append(f"rapl: {error_text(exc)} at t={t_s:.3f}s; sampling stopped")
            else:
                row["cpu_energy_j"] = energy_j
                if self._last_cpu_point is not None and now_s > self._last_cpu_point[0]:
                    last_s, last_j = self._last_cpu_point
                    row["cpu_power_w"] = (energy_j - last_j) / (now_s - last_s)
                self._last_cpu_point = (now_s, energy_j)
        return energy_j

    def sample_once(self, slow: bool = True, scheduled_s: float | None = None) -> None:
        """Take one sample now (the sampler thread calls this at each deadline)."""
        with self._lock:
            now_s = self._clock()
            values, energy_j, power_w = self._read(now_s, slow)
            row: dict[str, Any] = {
                "t_s": now_s - self._t0,
                "sample_lag_s": NAN if scheduled_s is None else now_s - scheduled_s,
                "in_window": self._open is not None,
            }
            row.update(values)
            self._rows.append(row)
            if self._open is not None:
                self._open.times_s.append(now_s)
                self._open.counter_j.append(energy_j)
                self._open.power_w.append(power_w)

    def _run(self) -> None:
        period_s = 1.0 / self.power_hz
        start_s = self._clock()
        index = 1  # start() took sample 0
        try:
            while True:
                scheduled_s = start_s + index * period_s
                wait_s = scheduled_s - self._clock()
                if self._stop_event.wait(wait_s) if wait_s > 0 else self._stop_event.is_set():
                    return
                self.sample_once(slow=index % self.slow_every == 0, scheduled_s=scheduled_s)
                if not (self._rss_sensor or self._rapl or any(g.sensors for g in self._gpus)):
                    return  # nothing left to read: the reasons are in sensor_errors
                index = next_tick_index(start_s, period_s, self._clock(), index)
        except Exception as exc:
            self.sensor_errors.append(f"sampler: {error_text(exc)}; sampling stopped")

    # -- windows ---------------------------------------------------------------------------------

    def window_start(self) -> None:
        """A training window opens (call after synchronising the device)."""
        try:
            with self._lock:
                if self._open is not None:
                    return
                now_s = self._clock()
                _, energy_j, power_w = self._read(now_s, slow=False)
                self._open = Window(now_s, [now_s], [energy_j], [power_w])
        except Exception as exc:
            self.sensor_errors.append(f"window_start: {error_text(exc)}")

    def window_end(self) -> None:
        """The open training window closes (call after synchronising the device)."""
        try:
            with self._lock:
                window = self._open
                if window is None:
                    return
                now_s = self._clock()
                _, energy_j, power_w = self._read(now_s, slow=False)
                window.times_s.append(now_s)
                window.counter_j.append(energy_j)
                window.power_w.append(power_w)
                window.end_s = now_s
                self._windows.append(window)
                self._open = None
        except Exception as exc:
            self._open = None
            self.sensor_errors.append(f"window_end: {error_text(exc)}")

    # -- energy ----------------------------------------------------------------------------------

    def _closed_totals(self) -> tuple[float, float, float]:
        """(training seconds, counter energy, integral energy) over closed windows."""
        with self._lock:
            windows = list(self._windows)
        return closed_totals(windows)

    def _chosen_energy(self, counter_j: float, integral_j: float) -> tuple[float, str]:
        """The energy to report and its label; a counter lost mid-run falls back to a complete integral."""
        return chosen_energy(self.energy_source, counter_j, integral_j)

    def training_energy_j(self) -> float:
        """Energy inside the closed training windows so far, in J (NaN where not measurable)."""
        try:
            _, counter_j, integral_j = self._closed_totals()
            return self._chosen_energy(counter_j, integral_j)[0]
        except Exception:
            return NAN

    def energy_at(self, train_time_s: float) -> float:
        """Cumulative training energy at ``train_time_s`` seconds of training (time inside the
        windows, as this object's window edges measured it), interpolated linearly between the
        points read inside the windows; NaN outside the measured range."""
        with self._lock:
            windows = list(self._windows)
        _, counter_j, integral_j = self._closed_totals()
        _, source = self._chosen_energy(counter_j, integral_j)
        if source == "unavailable":  # a sensor lost mid-run: its points before the loss still hold
            source = self.energy_source
        return energy_at(windows, source, train_time_s)

    # -- output ----------------------------------------------------------------------------------

    def _empty_summary(self) -> dict[str, Any]:
        return empty_summary(self.idle_power_w, self.power_source, len(self._rows), self.sensor_errors)

    def _summarise(self) -> dict[str, Any]:
        sample_count = len(self._rows)
        with self._lock:
            windows = list(self._windows)
        return summarise(
            windows=windows,
            energy_source=self.energy_source,
            cuda_indices=self.cuda_indices,
            idle_power_w=self.idle_power_w,
            power_source=self.power_source,
            samples=self.samples(),
            sample_count=sample_count,
            cuda_memory=self._cuda_memory,
            sensor_errors=self.sensor_errors,
        )

    def rows_since(self, start: int) -> tuple[list[dict[str, Any]], int]:
        """Copies of the samples after the first `start`, and the new count (for streaming them
        while the cell runs; `samples` is the whole table)."""
        with self._lock:
            rows = [dict(row) for row in self._rows[start:]]
        return rows, start + len(rows)

    def samples(self) -> pd.DataFrame:
        """Every sample: ``cell_id, t_s`` (seconds since ``start``), ``sample_lag_s`` (actual minus
        scheduled time), ``in_window`` and one column per quantity (``gpu0_power_w``, ...)."""
        with self._lock:
            rows = list(self._rows)
        if not rows:
            return pd.DataFrame({"cell_id": pd.Series(dtype=str), "t_s": pd.Series(dtype=float)})
        frame = pd.DataFrame(rows)
        frame.insert(0, "cell_id", self.cell_id)
        numeric = [c for c in frame.columns if c not in ("cell_id", "in_window")]
        frame[numeric] = frame[numeric].astype("float64")
        frame["in_window"] = frame["in_window"].astype(bool)
        return frame
