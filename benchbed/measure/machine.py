"""The machine a run ran on (``machine_info``, for run.json) and what it can measure
(``describe_environment``, backs ``benchbed env``): CPU model, RAPL domains, NVML devices.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchbed.measure.sensors.base import error_text
from benchbed.measure.sensors.host import DEFAULT_RAPL_ROOT, find_rapl_domains
from benchbed.measure.sensors.nvml import DEFAULT_NVML, load_pynvml, nvml_init, nvml_shutdown, probe_device


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_model() -> str:
    """The CPU's model name ("AMD EPYC 7B13"), or the architecture where /proc/cpuinfo says none."""
    return _cpu_model()


def _gpu_list(nvml: Any) -> tuple[list[tuple[int, Any]], str]:
    """(index, handle) of every NVML device, or why there are none. Call after a successful init."""
    try:
        count = nvml.nvmlDeviceGetCount()
    except Exception as exc:
        return [], error_text(exc)
    if count == 0:
        return [], "NVML sees no devices"
    return [(i, nvml.nvmlDeviceGetHandleByIndex(i)) for i in range(count)], ""


def _or_none(read: Callable[[], Any]) -> Any:
    try:
        value = read()
    except Exception:
        return None
    return value.decode() if isinstance(value, bytes) else value


def machine_info(*, nvml: Any = DEFAULT_NVML, rapl_root: str | Path = DEFAULT_RAPL_ROOT) -> dict[str, Any]:
    """Hardware state at the start of a run, for run.json (JSON-safe: None where not readable)."""
    nvml = load_pynvml() if nvml is DEFAULT_NVML else nvml
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
    reason = nvml_init(nvml)
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
        nvml_shutdown(nvml)
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


def describe_environment(
    *, nvml: Any = DEFAULT_NVML, rapl_root: str | Path = DEFAULT_RAPL_ROOT
) -> list[dict]:
    """What this machine can measure, and for what it cannot, why (backs ``benchbed env``)."""
    nvml = load_pynvml() if nvml is DEFAULT_NVML else nvml
    rows: list[dict] = []
    reason = nvml_init(nvml)
    if not reason:
        try:
            gpus, reason = _gpu_list(nvml)
            per_device = [(i, *probe_device(nvml, h)) for i, h in gpus]
        finally:
            nvml_shutdown(nvml)
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
