"""A stand-in for the ``pynvml`` module driven by device traces and an injectable clock.

Only the functions benchbed.measure calls are defined; constants and the NVMLError classes come
from the real pynvml, so error class names (``NVMLError_NotSupported``, ``NVMLError_GpuIsLost``) are
exactly what the library raises. Every call is counted so tests can assert that an unsupported call
is made once (the probe) and never again in the sampling loop.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace

import pynvml


class FakeClock:
    """Seconds; advanced only by the test, so nothing depends on wall-clock timing."""

    def __init__(self, t_s: float = 0.0):
        self.t_s = t_s

    def __call__(self) -> float:
        return self.t_s

    def advance(self, dt_s: float) -> None:
        self.t_s += dt_s

    def set(self, t_s: float) -> None:
        self.t_s = t_s

    sleep = advance


@dataclass
class FakeGpu:
    """One device's trace: reported power and energy counter as functions of the fake clock."""

    power_w: Callable[[float], float] | None = None  # what the power calls report
    energy_counter_mj: Callable[[float], int] | None = None  # what the energy counter reports
    unsupported: set[str] = field(default_factory=set)  # NVML function names that raise NotSupported
    lost_at_s: float = math.inf  # from then on every call raises NVMLError_GpuIsLost
    name: str = "Fake GPU"
    mem_used_bytes: int = 3 * 2**30
    mem_total_bytes: int = 80 * 2**30
    power_limit_mw: int = 700_000
    sm_clock_mhz: int = 1980
    mem_clock_mhz: int = 2619
    temperature_c: int = 41
    clock_event_reasons: int = 0x1  # GPU idle


class FakeNvml:
    def __init__(self, gpus: list[FakeGpu], clock: FakeClock, init_error: int | None = None):
        self.gpus = gpus
        self.clock = clock
        self.init_error = init_error
        self.calls: Counter[str] = Counter()
        self.initialised = 0

    def __getattr__(self, name: str):  # constants and error classes
        return getattr(pynvml, name)

    # -- library --------------------------------------------------------------------------------
    def nvmlInit(self) -> None:
        self.calls["nvmlInit"] += 1
        if self.init_error is not None:
            raise pynvml.NVMLError(self.init_error)
        self.initialised += 1

    def nvmlShutdown(self) -> None:
        self.calls["nvmlShutdown"] += 1
        self.initialised -= 1

    def nvmlSystemGetDriverVersion(self) -> str:
        return "570.86.15"

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        if index >= len(self.gpus):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return index

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> int:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_FOUND)

    # -- device ---------------------------------------------------------------------------------
    def _gpu(self, function: str, handle: int) -> FakeGpu:
        self.calls[function] += 1
        gpu = self.gpus[handle]
        if self.clock() >= gpu.lost_at_s:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)
        if function in gpu.unsupported:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return gpu

    def _power_mw(self, gpu: FakeGpu) -> int:
        if gpu.power_w is None:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return round(gpu.power_w(self.clock()) * 1000)

    def nvmlDeviceGetName(self, handle: int) -> str:
        return self._gpu("nvmlDeviceGetName", handle).name

    def nvmlDeviceGetUUID(self, handle: int) -> str:
        self._gpu("nvmlDeviceGetUUID", handle)
        return f"GPU-00000000-0000-0000-0000-00000000000{handle}"

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: int) -> int:
        return self._gpu("nvmlDeviceGetEnforcedPowerLimit", handle).power_limit_mw

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: int) -> int:
        gpu = self._gpu("nvmlDeviceGetTotalEnergyConsumption", handle)
        if gpu.energy_counter_mj is None:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return gpu.energy_counter_mj(self.clock())

    def nvmlDeviceGetFieldValues(self, handle: int, field_ids: list[int]) -> list[SimpleNamespace]:
        gpu = self._gpu("nvmlDeviceGetFieldValues", handle)
        values = []
        for field_id in field_ids:
            if field_id == pynvml.NVML_FI_DEV_POWER_INSTANT and gpu.power_w is not None:
                value = SimpleNamespace(uiVal=self._power_mw(gpu))
                values.append(
                    SimpleNamespace(
                        fieldId=field_id,
                        nvmlReturn=pynvml.NVML_SUCCESS,
                        valueType=pynvml.NVML_VALUE_TYPE_UNSIGNED_INT,
                        value=value,
                    )
                )
            else:  # the call succeeds; the field carries its own error code
                values.append(SimpleNamespace(fieldId=field_id, nvmlReturn=pynvml.NVML_ERROR_NOT_SUPPORTED))
        return values

    def nvmlDeviceGetPowerUsage(self, handle: int) -> int:
        return self._power_mw(self._gpu("nvmlDeviceGetPowerUsage", handle))

    def nvmlDeviceGetMemoryInfo(self, handle: int, version: int | None = None) -> SimpleNamespace:
        name = "nvmlDeviceGetMemoryInfo_v2" if version else "nvmlDeviceGetMemoryInfo"
        gpu = self._gpu(name, handle)
        free = gpu.mem_total_bytes - gpu.mem_used_bytes
        return SimpleNamespace(total=gpu.mem_total_bytes, used=gpu.mem_used_bytes, free=free)

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> SimpleNamespace:
        self._gpu("nvmlDeviceGetUtilizationRates", handle)
        return SimpleNamespace(gpu=97, memory=45)

    def nvmlDeviceGetClockInfo(self, handle: int, clock_type: int) -> int:
        gpu = self._gpu("nvmlDeviceGetClockInfo", handle)
        return gpu.sm_clock_mhz if clock_type == pynvml.NVML_CLOCK_SM else gpu.mem_clock_mhz

    def nvmlDeviceGetMaxClockInfo(self, handle: int, clock_type: int) -> int:
        self._gpu("nvmlDeviceGetMaxClockInfo", handle)
        return 1980 if clock_type == pynvml.NVML_CLOCK_SM else 2619

    def nvmlDeviceGetTemperatureV(self, handle: int, sensor: int) -> int:
        return self._gpu("nvmlDeviceGetTemperatureV", handle).temperature_c

    def nvmlDeviceGetTemperature(self, handle: int, sensor: int) -> int:
        return self._gpu("nvmlDeviceGetTemperature", handle).temperature_c

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle: int) -> int:
        return self._gpu("nvmlDeviceGetCurrentClocksEventReasons", handle).clock_event_reasons

    def nvmlDeviceGetCurrentClocksThrottleReasons(self, handle: int) -> int:
        return self._gpu("nvmlDeviceGetCurrentClocksThrottleReasons", handle).clock_event_reasons


class FakeCudaMemory:
    """torch.cuda allocator statistics for devices that are not there."""

    def __init__(self, allocated_bytes: dict[int, int], reserved_bytes: dict[int, int]):
        self.allocated_bytes = allocated_bytes
        self.reserved_bytes = reserved_bytes
        self.resets: list[int] = []

    def reset_peak(self, index: int) -> None:
        self.resets.append(index)

    def max_allocated_bytes(self, index: int) -> float:
        return float(self.allocated_bytes[index])

    def max_reserved_bytes(self, index: int) -> float:
        return float(self.reserved_bytes[index])
