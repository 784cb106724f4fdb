"""Telemetry: power, energy and memory of one cell, with honest labels for what was not measured.

A sampler thread reads the devices a cell uses on a fixed-deadline schedule (deadline k is
``start + k * period``, so a slow read never shifts later samples): power (and the energy counter) at
``power_hz``, memory, utilisation, clocks, temperature and clock-event (throttle) reasons at ``slow_hz``.
At ``start()`` each device is probed once for every NVML call; an unsupported call is never made in
the loop, and a call that fails mid-run is dropped with its reason in ``sensor_errors``. Nothing here
raises into training.

Energy follows the timing rules of the train loop: it is counted only inside training windows
(``window_start``/``window_end``, called after a device sync), so evaluation is excluded exactly as the
clock excludes it.

- Primary on NVIDIA GPUs: the driver's energy counter (``nvmlDeviceGetTotalEnergyConsumption``, mJ,
  Volta and newer) read at the window edges. Sampled board power is a poor substitute: nvidia-smi's
  power readings on A100/H100 average over a fraction of each second only (Yang, Adamek & Armour,
  "Part-time Power Measurements: nvidia-smi's Lack of Attention", arXiv:2312.02741, 2023).
- Secondary: the trapezoid integral of sampled power over the same windows (instant power field
  ``NVML_FI_DEV_POWER_INSTANT`` where supported, else ``nvmlDeviceGetPowerUsage``). Both are stored;
  if they disagree by more than 5% over windows totalling at least 30 s the cell is flagged. GPUs
  without the counter (pre-Volta, vGPU) report the integral as ``nvml_power_integral``.
- CPU cells: RAPL package counters (``/sys/class/powercap/intel-rapl:N/energy_uj``) where readable,
  with wraparound at ``max_energy_range_uj`` (Khan et al., "RAPL in Action: Experiences in Using RAPL
  for Power Measurements", ACM TOMPECS 2018) -> ``rapl``; otherwise ``unavailable`` and NaN.

Idle power is measured once per run (``measure_idle_power``) so gross and net energy (gross minus idle
power times training time) can both be reported, as recommended by Henderson et al., "Towards the
Systematic Reporting of the Energy and Carbon Footprints of Machine Learning", JMLR 2020.

The NVML module, the clock, the sysfs root and the CUDA memory calls are parameters so tests replace
them at the library boundary with recorded device traces.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import re
import resource
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

NAN = float("nan")
DEFAULT_RAPL_ROOT = "/sys/class/powercap"
# The counter and the integral disagreeing by more than this over at least this much training time
# flags the cell: short windows are dominated by the counter's ~100 ms update granularity.
ENERGY_DISAGREEMENT_LIMIT = 0.05
ENERGY_DISAGREEMENT_MIN_WINDOW_S = 30.0
ENERGY_SOURCES = ("nvml_counter", "nvml_power_integral", "rapl", "unavailable")

_DEFAULT = object()  # "use the real pynvml module"


def _load_pynvml() -> Any:
    try:
        import pynvml
    except ImportError:
        return None
    return pynvml


def _error_text(exc: BaseException) -> str:
    """``NVMLError_GpuIsLost: GPU is lost``: the class name first, since that is what users search."""
    name = type(exc).__name__
    try:
        message = str(exc)
    except Exception:  # pynvml's __str__ itself calls into the library for unknown codes
        message = ""
    return f"{name}: {message}" if message and message != name else name


def next_tick_index(start_s: float, period_s: float, now_s: float, last_index: int) -> int:
    """Index of the next deadline ``start_s + k * period_s`` still in the future.

    Deadlines missed while a tick ran late are skipped rather than fired in a burst, so the samples
    stay on the original grid.
    """
    due = math.floor((now_s - start_s) / period_s) + 1
    return max(last_index + 1, due)


def trapezoid_j(times_s: list[float] | np.ndarray, power_w: list[float] | np.ndarray) -> float:
    """Energy of a piecewise-linear power trace; NaN if any point is missing."""
    t = np.asarray(times_s, dtype=np.float64)
    p = np.asarray(power_w, dtype=np.float64)
    if len(t) < 2 or np.isnan(p).any():
        return NAN
    return float(np.sum((t[1:] - t[:-1]) * (p[1:] + p[:-1]) / 2.0))


# ---------------------------------------------------------------------------------------------- RAPL


@dataclass
class RaplDomain:
    name: str  # package-0, ...
    zone: str  # intel-rapl:0
    energy_path: Path
    max_energy_range_uj: int


def find_rapl_domains(root: str | Path = DEFAULT_RAPL_ROOT) -> tuple[list[RaplDomain], str]:
    """Readable top-level RAPL package zones, and why there are none when there are none.

    Only ``intel-rapl:N`` zones are summed: sub-zones (``intel-rapl:N:M``, core/uncore/dram) are
    part of their package and ``psys`` covers the whole platform, so adding either double-counts.
    """
    root = Path(root)
    if not root.is_dir():
        return [], f"{root} not present (no powercap/RAPL driver)"
    zones = sorted(p for p in root.iterdir() if re.fullmatch(r"intel-rapl:\d+", p.name))
    if not zones:
        return [], f"no intel-rapl:N zones under {root}"
    domains, problems = [], []
    for zone in zones:
        try:
            name = (zone / "name").read_text().strip()
        except OSError:
            name = zone.name
        if name.startswith("psys"):
            continue
        try:
            int((zone / "energy_uj").read_text())
            max_range_uj = int((zone / "max_energy_range_uj").read_text())
        except (OSError, ValueError) as exc:
            problems.append(f"{zone.name}/energy_uj: {type(exc).__name__}")
            continue
        domains.append(RaplDomain(name, zone.name, zone / "energy_uj", max_range_uj))
    reason = "" if domains else ("; ".join(problems) or f"only psys zones under {root}")
    return domains, reason


class WrappingCounter:
    """Turns readings of a counter that wraps to 0 after ``range_`` into a monotonic total.

    Correct as long as it is read at least once per wrap period (minutes for RAPL packages; the
    sampler reads it at ``power_hz``).
    """

    def __init__(self, range_: int):
        self.range_ = range_
        self.last: int | None = None
        self.total = 0

    def update(self, raw: int) -> int:
        if self.last is not None:
            delta = raw - self.last
            if delta < 0:
                delta += self.range_
            self.total += delta
        self.last = raw
        return self.total


# ---------------------------------------------------------------------------------------------- NVML


@dataclass
class _Sensor:
    quantity: str  # energy, power, memory, utilisation, clocks, temperature, clock_events
    source: str  # the NVML call used, for labels
    read: Callable[[], dict[str, float]]
    fast: bool


def _field_number(value: Any, nvml: Any) -> float:
    kinds = {
        nvml.NVML_VALUE_TYPE_DOUBLE: "dVal",
        nvml.NVML_VALUE_TYPE_UNSIGNED_INT: "uiVal",
        nvml.NVML_VALUE_TYPE_UNSIGNED_LONG: "ulVal",
        nvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG: "ullVal",
        nvml.NVML_VALUE_TYPE_SIGNED_LONG_LONG: "sllVal",
        nvml.NVML_VALUE_TYPE_SIGNED_INT: "siVal",
        nvml.NVML_VALUE_TYPE_UNSIGNED_SHORT: "usVal",
    }
    return float(getattr(value.value, kinds.get(value.valueType, "uiVal")))


def _candidate_sensors(nvml: Any, handle: Any) -> dict[str, list[_Sensor]]:
    """For each quantity, the NVML calls that can provide it, preferred first."""

    def energy() -> dict[str, float]:
        return {"energy_mj": float(nvml.nvmlDeviceGetTotalEnergyConsumption(handle))}

    def power_instant() -> dict[str, float]:
        value = nvml.nvmlDeviceGetFieldValues(handle, [nvml.NVML_FI_DEV_POWER_INSTANT])[0]
        if value.nvmlReturn != nvml.NVML_SUCCESS:  # per-field status: the call itself succeeds
            raise nvml.NVMLError(value.nvmlReturn)
        return {"power_w": _field_number(value, nvml) / 1000.0}

    def power_usage() -> dict[str, float]:
        return {"power_w": nvml.nvmlDeviceGetPowerUsage(handle) / 1000.0}

    def memory_v2() -> dict[str, float]:
        return {
            "mem_used_bytes": float(nvml.nvmlDeviceGetMemoryInfo(handle, version=nvml.nvmlMemory_v2).used)
        }

    def memory_v1() -> dict[str, float]:
        return {"mem_used_bytes": float(nvml.nvmlDeviceGetMemoryInfo(handle).used)}

    def utilisation() -> dict[str, float]:
        rates = nvml.nvmlDeviceGetUtilizationRates(handle)
        return {"util_pct": float(rates.gpu), "mem_util_pct": float(rates.memory)}

    def clocks() -> dict[str, float]:
        return {
            "sm_clock_mhz": float(nvml.nvmlDeviceGetClockInfo(handle, nvml.NVML_CLOCK_SM)),
            "mem_clock_mhz": float(nvml.nvmlDeviceGetClockInfo(handle, nvml.NVML_CLOCK_MEM)),
        }

    def temperature_v() -> dict[str, float]:
        return {"temperature_c": float(nvml.nvmlDeviceGetTemperatureV(handle, nvml.NVML_TEMPERATURE_GPU))}

    def temperature_legacy() -> dict[str, float]:
        return {"temperature_c": float(nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU))}

    def clock_events() -> dict[str, float]:
        return {"clock_event_reasons": float(nvml.nvmlDeviceGetCurrentClocksEventReasons(handle))}

    def throttle_reasons() -> dict[str, float]:
        return {"clock_event_reasons": float(nvml.nvmlDeviceGetCurrentClocksThrottleReasons(handle))}

    return {
        "energy": [_Sensor("energy", "nvmlDeviceGetTotalEnergyConsumption", energy, True)],
        "power": [
            _Sensor("power", "nvmlDeviceGetFieldValues(NVML_FI_DEV_POWER_INSTANT)", power_instant, True),
            _Sensor("power", "nvmlDeviceGetPowerUsage", power_usage, True),
        ],
        "memory": [
            _Sensor("memory", "nvmlDeviceGetMemoryInfo(v2)", memory_v2, False),
            _Sensor("memory", "nvmlDeviceGetMemoryInfo", memory_v1, False),
        ],
        "utilisation": [_Sensor("utilisation", "nvmlDeviceGetUtilizationRates", utilisation, False)],
        "clocks": [_Sensor("clocks", "nvmlDeviceGetClockInfo", clocks, False)],
        "temperature": [
            _Sensor("temperature", "nvmlDeviceGetTemperatureV", temperature_v, False),
            _Sensor("temperature", "nvmlDeviceGetTemperature", temperature_legacy, False),
        ],
        "clock_events": [
            _Sensor("clock_events", "nvmlDeviceGetCurrentClocksEventReasons", clock_events, False),
            _Sensor("clock_events", "nvmlDeviceGetCurrentClocksThrottleReasons", throttle_reasons, False),
        ],
    }


def probe_device(nvml: Any, handle: Any) -> tuple[dict[str, _Sensor], dict[str, str]]:
    """Call every candidate once; keep the first that works per quantity, and why the others did not."""
    supported: dict[str, _Sensor] = {}
    unsupported: dict[str, str] = {}
    for quantity, candidates in _candidate_sensors(nvml, handle).items():
        reasons = []
        for sensor in candidates:
            try:
                sensor.read()
            except Exception as exc:  # NVMLError_NotSupported, _FunctionNotFound, _NoPermission, ...
                reasons.append(f"{sensor.source}: {_error_text(exc)}")
                continue
            supported[quantity] = sensor
            break
        else:
            unsupported[quantity] = "; ".join(reasons)
    return supported, unsupported


def _nvml_init(nvml: Any) -> str:
    """Initialise NVML; the reason it cannot be used, or '' when it can."""
    if nvml is None:
        return "pynvml not installed (package nvidia-ml-py)"
    try:
        nvml.nvmlInit()
    except Exception as exc:
        return _error_text(exc)
    return ""


def _nvml_shutdown(nvml: Any) -> None:
    with contextlib.suppress(Exception):  # shutting down a library that half-failed is best effort
        nvml.nvmlShutdown()


def _nvml_handle(nvml: Any, cuda_index: int) -> Any:
    """The NVML handle of torch's ``cuda:<index>``; CUDA and NVML number devices differently when
    CUDA_VISIBLE_DEVICES is set, so match by UUID where torch exposes it."""
    try:
        import torch

        if torch.cuda.is_available():
            uuid = str(torch.cuda.get_device_properties(cuda_index).uuid)
            uuid = uuid if uuid.startswith(("GPU-", "MIG-")) else f"GPU-{uuid}"
            return nvml.nvmlDeviceGetHandleByUUID(uuid)
    except Exception:
        pass
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    ids = [v.strip() for v in visible.split(",") if v.strip()]
    if ids and all(v.isdigit() for v in ids) and cuda_index < len(ids):
        return nvml.nvmlDeviceGetHandleByIndex(int(ids[cuda_index]))
    return nvml.nvmlDeviceGetHandleByIndex(cuda_index)


# ------------------------------------------------------------------------------------- CUDA memory


class TorchCudaMemory:
    """The torch.cuda allocator statistics the summary uses (a parameter so tests can fake them)."""

    def reset_peak(self, index: int) -> None:
        import torch

        torch.cuda.reset_peak_memory_stats(index)

    def max_allocated_bytes(self, index: int) -> float:
        import torch

        return float(torch.cuda.max_memory_allocated(index))

    def max_reserved_bytes(self, index: int) -> float:
        import torch

        return float(torch.cuda.max_memory_reserved(index))


def peak_rss_bytes() -> float:
    """Peak resident set of this process (each cell runs in its own subprocess, so: of the cell)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return float(peak if sys.platform == "darwin" else peak * 1024)  # bytes on macOS, KiB on Linux


def _current_rss_bytes() -> dict[str, float]:
    with open("/proc/self/statm") as statm:
        resident_pages = int(statm.read().split()[1])
    return {"rss_bytes": float(resident_pages * os.sysconf("SC_PAGE_SIZE"))}


# ---------------------------------------------------------------------------------------- sampler


@dataclass
class _Gpu:
    label: str  # gpu0: the torch index, used in column names
    handle: Any
    sensors: dict[str, _Sensor]
    unsupported: dict[str, str]
    energy_offset_mj: float = NAN


@dataclass
class _Window:
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
        nvml: Any = _DEFAULT,
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
        self._nvml = _load_pynvml() if nvml is _DEFAULT else nvml
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
        self._windows: list[_Window] = []
        self._open: _Window | None = None
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
                _current_rss_bytes()
            except (OSError, ValueError, IndexError):
                self._rss_sensor = False  # no /proc (macOS): peak RSS still comes from ru_maxrss
            self._choose_energy_source()
            self.sample_once(slow=True)
        except Exception as exc:  # never into training
            self.sensor_errors.append(f"telemetry start: {_error_text(exc)}")
        if self._threaded:
            self._thread = threading.Thread(target=self._run, name=f"telemetry-{self.cell_id}", daemon=True)
            self._thread.start()

    def _start_gpus(self) -> None:
        for index in self.cuda_indices:
            try:
                self._cuda_memory.reset_peak(index)
            except Exception as exc:
                self.sensor_errors.append(f"gpu{index}.cuda_memory: {_error_text(exc)}")
        reason = _nvml_init(self._nvml)
        if reason:
            self.sensor_errors.append(f"nvml: {reason}")
            return
        self._nvml_ready = True
        for index in self.cuda_indices:
            try:
                handle = _nvml_handle(self._nvml, index)
            except Exception as exc:
                self.sensor_errors.append(f"gpu{index}: no NVML handle: {_error_text(exc)}")
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
            self.sensor_errors.append(f"telemetry summary: {_error_text(exc)}")
            self._summary = self._empty_summary()
        if self._nvml_ready:
            _nvml_shutdown(self._nvml)
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
        self.sensor_errors.append(f"{gpu.label}.{what}: {_error_text(exc)} at t={t_s:.3f}s; sampling stopped")

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
                row.update(_current_rss_bytes())
            except (OSError, ValueError, IndexError) as exc:
                self._rss_sensor = False
                self.sensor_errors.append(f"rss: {_error_text(exc)}")
        return row, energy_j, power_w

    def _read_rapl(self, row: dict[str, float], now_s: float, t_s: float) -> float:
        energy_j = NAN
        if self._rapl:
            try:
                energy_j = (self._read_rapl_uj() - self._rapl_offset_uj) / 1e6
            except (OSError, ValueError) as exc:
                self._rapl = []
                self.sensor_errors.append(f"rapl: {_error_text(exc)} at t={t_s:.3f}s; sampling stopped")
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
            self.sensor_errors.append(f"sampler: {_error_text(exc)}; sampling stopped")

    # -- windows ---------------------------------------------------------------------------------

    def window_start(self) -> None:
        """A training window opens (call after synchronising the device)."""
        try:
            with self._lock:
                if self._open is not None:
                    return
                now_s = self._clock()
                _, energy_j, power_w = self._read(now_s, slow=False)
                self._open = _Window(now_s, [now_s], [energy_j], [power_w])
        except Exception as exc:
            self.sensor_errors.append(f"window_start: {_error_text(exc)}")

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
            self.sensor_errors.append(f"window_end: {_error_text(exc)}")

    # -- energy ----------------------------------------------------------------------------------

    def _closed_totals(self) -> tuple[float, float, float]:
        """(training seconds, counter energy, integral energy) over closed windows."""
        with self._lock:
            windows = list(self._windows)
        if not windows:
            return 0.0, NAN, NAN
        window_s = sum(w.duration_s for w in windows)
        counter_j = sum(w.counter_energy_j() for w in windows)
        integral_j = sum(w.integral_energy_j() for w in windows)
        return window_s, counter_j, integral_j

    def _chosen_energy(self, counter_j: float, integral_j: float) -> tuple[float, str]:
        """The energy to report and its label; a counter lost mid-run falls back to a complete integral."""
        if self.energy_source in ("nvml_counter", "rapl") and not math.isnan(counter_j):
            return counter_j, self.energy_source
        if self.energy_source in ("nvml_counter", "nvml_power_integral") and not math.isnan(integral_j):
            return integral_j, "nvml_power_integral"
        return NAN, "unavailable"

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

    # -- output ----------------------------------------------------------------------------------

    def _empty_summary(self) -> dict[str, Any]:
        return {
            "energy_j": NAN,
            "energy_source": "unavailable",
            "energy_integral_j": NAN,
            "energy_disagreement": NAN,
            "energy_flag": False,
            "mean_power_w": NAN,
            "peak_power_w": NAN,
            "idle_power_w": self.idle_power_w,
            "net_energy_j": NAN,
            "power_source": self.power_source,
            "telemetry_window_s": NAN,
            "peak_mem_bytes": NAN,
            "mem_source": "unavailable",
            "max_memory_reserved_bytes": NAN,
            "peak_rss_bytes": NAN,
            "nvml_peak_used_bytes": NAN,
            "sample_count": len(self._rows),
            "sample_lag_p99_s": NAN,
            "sensor_errors": "; ".join(self.sensor_errors),
        }

    def _summarise(self) -> dict[str, Any]:
        summary = self._empty_summary()
        window_s, counter_j, integral_j = self._closed_totals()
        energy_j, source = self._chosen_energy(counter_j, integral_j)
        has_counter = self.energy_source == "nvml_counter"
        summary["energy_j"], summary["energy_source"] = energy_j, source
        summary["energy_integral_j"] = integral_j if self.cuda_indices else NAN
        if has_counter and counter_j > 0 and not math.isnan(integral_j):
            disagreement = abs(integral_j - counter_j) / counter_j
            summary["energy_disagreement"] = disagreement
            summary["energy_flag"] = bool(
                disagreement > ENERGY_DISAGREEMENT_LIMIT and window_s >= ENERGY_DISAGREEMENT_MIN_WINDOW_S
            )
        summary["telemetry_window_s"] = window_s if self._windows else NAN
        if window_s > 0:
            summary["mean_power_w"] = energy_j / window_s
            summary["net_energy_j"] = energy_j - self.idle_power_w * window_s
        frame = self.samples()
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
        self._summarise_memory(summary)
        summary["sensor_errors"] = "; ".join(self.sensor_errors)
        return summary

    def _summarise_memory(self, summary: dict[str, Any]) -> None:
        summary["peak_rss_bytes"] = peak_rss_bytes()
        if not self.cuda_indices:
            summary["peak_mem_bytes"], summary["mem_source"] = peak_rss_bytes(), "ru_maxrss"
            return
        try:
            # The largest per-device peak: what decides whether a configuration fits on the GPU.
            summary["peak_mem_bytes"] = max(
                self._cuda_memory.max_allocated_bytes(i) for i in self.cuda_indices
            )
            summary["max_memory_reserved_bytes"] = max(
                self._cuda_memory.max_reserved_bytes(i) for i in self.cuda_indices
            )
            summary["mem_source"] = "cuda_max_allocated"
        except Exception as exc:
            self.sensor_errors.append(f"cuda_memory: {_error_text(exc)}")
            if not math.isnan(summary["nvml_peak_used_bytes"]):
                summary["peak_mem_bytes"], summary["mem_source"] = (
                    summary["nvml_peak_used_bytes"],
                    "nvml_used",
                )

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


# -------------------------------------------------------------------------------- run-level helpers


def measure_idle_power(
    seconds: float,
    device: Any,
    *,
    power_hz: float = 10.0,
    nvml: Any = _DEFAULT,
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


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _gpu_list(nvml: Any) -> tuple[list[tuple[int, Any]], str]:
    """(index, handle) of every NVML device, or why there are none. Call after a successful init."""
    try:
        count = nvml.nvmlDeviceGetCount()
    except Exception as exc:
        return [], _error_text(exc)
    if count == 0:
        return [], "NVML sees no devices"
    return [(i, nvml.nvmlDeviceGetHandleByIndex(i)) for i in range(count)], ""


def _or_none(read: Callable[[], Any]) -> Any:
    try:
        value = read()
    except Exception:
        return None
    return value.decode() if isinstance(value, bytes) else value


def machine_info(*, nvml: Any = _DEFAULT, rapl_root: str | Path = DEFAULT_RAPL_ROOT) -> dict[str, Any]:
    """Hardware state at the start of a run, for run.json (JSON-safe: None where not readable)."""
    nvml = _load_pynvml() if nvml is _DEFAULT else nvml
    domains, rapl_reason = find_rapl_domains(rapl_root)
    info: dict[str, Any] = {
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "rapl_available": bool(domains),
        "rapl_domains": [d.name for d in domains],
        "rapl_reason": rapl_reason,
        "nvml_available": False,
        "nvml_reason": "",
        "driver_version": None,
        "gpus": [],
    }
    reason = _nvml_init(nvml)
    if reason:
        info["nvml_reason"] = reason
        return info
    try:
        gpus, reason = _gpu_list(nvml)
        info["nvml_available"], info["nvml_reason"] = bool(gpus), reason
        info["driver_version"] = _or_none(nvml.nvmlSystemGetDriverVersion)
        for index, h in gpus:
            limit_mw = _or_none(lambda h=h: nvml.nvmlDeviceGetEnforcedPowerLimit(h))
            total = _or_none(lambda h=h: nvml.nvmlDeviceGetMemoryInfo(h).total)
            info["gpus"].append(
                {
                    "nvml_index": index,
                    "name": _or_none(lambda h=h: nvml.nvmlDeviceGetName(h)),
                    "uuid": _or_none(lambda h=h: nvml.nvmlDeviceGetUUID(h)),
                    "power_limit_w": None if limit_mw is None else limit_mw / 1000.0,
                    "memory_total_bytes": total,
                    "sm_clock_mhz": _or_none(lambda h=h: nvml.nvmlDeviceGetClockInfo(h, nvml.NVML_CLOCK_SM)),
                    "mem_clock_mhz": _or_none(
                        lambda h=h: nvml.nvmlDeviceGetClockInfo(h, nvml.NVML_CLOCK_MEM)
                    ),
                    "max_sm_clock_mhz": _or_none(
                        lambda h=h: nvml.nvmlDeviceGetMaxClockInfo(h, nvml.NVML_CLOCK_SM)
                    ),
                    "temperature_c": _or_none(
                        lambda h=h: nvml.nvmlDeviceGetTemperatureV(h, nvml.NVML_TEMPERATURE_GPU)
                    )
                    or _or_none(lambda h=h: nvml.nvmlDeviceGetTemperature(h, nvml.NVML_TEMPERATURE_GPU)),
                }
            )
    finally:
        _nvml_shutdown(nvml)
    return info


_GPU_QUANTITIES = {
    "energy": "gpu_energy",
    "power": "gpu_power",
    "memory": "gpu_memory_used",
    "utilisation": "gpu_utilisation",
    "clocks": "gpu_clocks",
    "temperature": "gpu_temperature",
    "clock_events": "gpu_clock_event_reasons",
}


def describe_environment(*, nvml: Any = _DEFAULT, rapl_root: str | Path = DEFAULT_RAPL_ROOT) -> list[dict]:
    """What this machine can measure, and for what it cannot, why (backs ``benchbed env``)."""
    nvml = _load_pynvml() if nvml is _DEFAULT else nvml
    rows: list[dict] = []
    reason = _nvml_init(nvml)
    if not reason:
        try:
            gpus, reason = _gpu_list(nvml)
            per_device = [(i, *probe_device(nvml, h)) for i, h in gpus]
        finally:
            _nvml_shutdown(nvml)
    if reason:
        for quantity in _GPU_QUANTITIES.values():
            rows.append({"quantity": quantity, "available": False, "source": "nvml", "reason": reason})
    else:
        for key, quantity in _GPU_QUANTITIES.items():
            sources = sorted({s[key].source for _, s, _ in per_device if key in s})
            missing = [f"gpu{i}: {u[key]}" for i, _, u in per_device if key in u]
            rows.append(
                {
                    "quantity": quantity,
                    "available": not missing,
                    "source": "+".join(sources) or "nvml",
                    "reason": "; ".join(missing),
                }
            )
    try:
        import torch

        cuda_ok = torch.cuda.is_available()
    except Exception:
        cuda_ok = False
    rows.append(
        {
            "quantity": "cuda_peak_memory",
            "available": cuda_ok,
            "source": "torch.cuda.max_memory_allocated",
            "reason": "" if cuda_ok else "torch.cuda.is_available() is False",
        }
    )
    domains, rapl_reason = find_rapl_domains(rapl_root)
    rows.append(
        {
            "quantity": "cpu_energy",
            "available": bool(domains),
            "source": "rapl:" + "+".join(d.name for d in domains) if domains else "rapl",
            "reason": rapl_reason,
        }
    )
    rows.append({"quantity": "cpu_peak_memory", "available": True, "source": "ru_maxrss", "reason": ""})
    return rows
