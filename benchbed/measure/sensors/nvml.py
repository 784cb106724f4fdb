"""NVIDIA GPUs through NVML (``pynvml``, package nvidia-ml-py): the candidate calls per quantity, the
probe, and the init / shutdown / handle helpers.

- Energy, primary on NVIDIA GPUs: the driver's energy counter (``nvmlDeviceGetTotalEnergyConsumption``,
  mJ, Volta and newer) read at the window edges. Sampled board power is a poor substitute:
  nvidia-smi's power readings on A100/H100 average over a fraction of each second only (Yang, Adamek
  & Armour, "Part-time Power Measurements: nvidia-smi's Lack of Attention", arXiv:2312.02741, 2023).
- Power, secondary: instant power field ``NVML_FI_DEV_POWER_INSTANT`` where supported, else
  ``nvmlDeviceGetPowerUsage``; ``benchbed.measure.telemetry`` integrates it over the same windows.

Every call takes the NVML module as a parameter, so tests replace it at the library boundary
(tests/fakes/nvml.py).
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

from benchbed.measure.sensors.base import Sensor, error_text, probe_candidates

DEFAULT_NVML = object()  # "use the real pynvml module"


def load_pynvml() -> Any:
    try:
        import pynvml
    except ImportError:
        return None
    return pynvml


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


def candidate_sensors(nvml: Any, handle: Any) -> dict[str, list[Sensor]]:
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
        "energy": [Sensor("energy", "nvmlDeviceGetTotalEnergyConsumption", energy, True)],
        "power": [
            Sensor("power", "nvmlDeviceGetFieldValues(NVML_FI_DEV_POWER_INSTANT)", power_instant, True),
            Sensor("power", "nvmlDeviceGetPowerUsage", power_usage, True),
        ],
        "memory": [
            Sensor("memory", "nvmlDeviceGetMemoryInfo(v2)", memory_v2, False),
            Sensor("memory", "nvmlDeviceGetMemoryInfo", memory_v1, False),
        ],
        "utilisation": [Sensor("utilisation", "nvmlDeviceGetUtilizationRates", utilisation, False)],
        "clocks": [Sensor("clocks", "nvmlDeviceGetClockInfo", clocks, False)],
        "temperature": [
            Sensor("temperature", "nvmlDeviceGetTemperatureV", temperature_v, False),
            Sensor("temperature", "nvmlDeviceGetTemperature", temperature_legacy, False),
        ],
        "clock_events": [
            Sensor("clock_events", "nvmlDeviceGetCurrentClocksEventReasons", clock_events, False),
            Sensor("clock_events", "nvmlDeviceGetCurrentClocksThrottleReasons", throttle_reasons, False),
        ],
    }


def probe_device(nvml: Any, handle: Any) -> tuple[dict[str, Sensor], dict[str, str]]:
    """Call every candidate once; keep the first that works per quantity, and why the others did not."""
    return probe_candidates(candidate_sensors(nvml, handle))


def nvml_init(nvml: Any) -> str:
    """Initialise NVML; the reason it cannot be used, or '' when it can."""
    if nvml is None:
        return "pynvml not installed (package nvidia-ml-py)"
    try:
        nvml.nvmlInit()
    except Exception as exc:
        return error_text(exc)
    return ""


def nvml_shutdown(nvml: Any) -> None:
    with contextlib.suppress(Exception):  # shutting down a library that half-failed is best effort
        nvml.nvmlShutdown()


def nvml_handle(nvml: Any, cuda_index: int) -> Any:
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
