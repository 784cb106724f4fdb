"""The machine a run ran on (``machine_info``, for run.json), what it can measure
(``describe_environment``, backs ``benchbed env``) and what its CPU computes natively
(``cpu_capability``): CPU model and instruction sets, RAPL domains, NVML devices.
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


#: reduced precisions and the CPU flags (/proc/cpuinfo) that compute them in hardware. Without one
#: of them PyTorch still runs the precision, but emulated: bfloat16 matmuls on an AVX2-only CPU
#: take about 50x as long as float32 ones, so a cell would measure the emulation, not the technique.
NATIVE_FLAGS: dict[str, tuple[str, ...]] = {
    "bf16": ("avx512_bf16", "amx_bf16"),
    "fp16": ("avx512_fp16", "amx_fp16"),
    "int8": ("avx512_vnni", "avx_vnni", "amx_int8"),
    "fp8": ("amx_fp8",),
}
#: the same on 64-bit Arm (the `Features` line of /proc/cpuinfo)
NATIVE_FEATURES_ARM: dict[str, tuple[str, ...]] = {
    "bf16": ("bf16",),
    "fp16": ("asimdhp",),
    "int8": ("asimddp", "i8mm"),
    "fp8": ("f8fma",),
}
#: oneDNN's instruction-set levels (``ONEDNN_MAX_CPU_ISA`` caps the one it uses), lowest first, and
#: the level each precision needs to stay native under such a cap
ONEDNN_ISA_ORDER = (
    "SSE41",
    "AVX",
    "AVX2",
    "AVX2_VNNI",
    "AVX2_VNNI_2",
    "AVX512_CORE",
    "AVX512_CORE_VNNI",
    "AVX512_CORE_BF16",
    "AVX10_1_512",
    "AVX10_1_512_AMX",
    "AVX10_1_512_AMX_FP16",
)
ONEDNN_ISA_ALIASES = {
    "AVX512_CORE_FP16": "AVX10_1_512",
    "AVX512_CORE_AMX": "AVX10_1_512_AMX",
    "AVX512_CORE_AMX_FP16": "AVX10_1_512_AMX_FP16",
}
ISA_NEEDED = {
    "bf16": "AVX512_CORE_BF16",
    "fp16": "AVX10_1_512",
    "int8": "AVX2_VNNI",
    "fp8": "AVX10_1_512_AMX_FP16",
}


def _cpu_flags() -> tuple[set[str], str]:
    """(flags, where they came from): the x86 `flags` or Arm `Features` line of /proc/cpuinfo."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                key = line.split(":", 1)[0].strip()
                if key in ("flags", "Features"):
                    return set(line.split(":", 1)[1].split()), "/proc/cpuinfo"
    except OSError as exc:
        return set(), f"no /proc/cpuinfo ({exc.strerror})"
    return set(), "/proc/cpuinfo lists no flags"


def _torch_cpu_capability() -> str:
    try:
        import torch

        return str(torch.backends.cpu.get_cpu_capability())
    except Exception as exc:  # an old torch without the call
        return f"unknown ({type(exc).__name__})"


def capability_from(
    flags: set[str], torch_capability: str, *, machine: str, flags_source: str, isa_cap: str | None
) -> dict[str, Any]:
    """What a CPU with these flags computes natively (pure: `cpu_capability` reads the live values).

    Every reduced precision is "native" (a flag says the hardware computes it, and no
    ONEDNN_MAX_CPU_ISA cap forbids those instructions), "emulated" (the flags are known and lack
    it) or "unknown" (no flags could be read); only "native" runs a reduced-precision technique
    without `allow_emulated`."""
    arm = machine.lower() in ("aarch64", "arm64")
    table = NATIVE_FEATURES_ARM if arm else NATIVE_FLAGS
    cap = (isa_cap or "").strip().upper()
    cap = ONEDNN_ISA_ALIASES.get(cap, cap)
    capped = cap in ONEDNN_ISA_ORDER and not arm
    precision: dict[str, str] = {}
    why: dict[str, str] = {}
    for name, wanted in table.items():
        have = sorted(set(wanted) & flags)
        if not flags:
            precision[name], why[name] = "unknown", flags_source
        elif not have:
            precision[name], why[name] = "emulated", f"no {' / '.join(wanted)}"
        elif capped and ONEDNN_ISA_ORDER.index(cap) < ONEDNN_ISA_ORDER.index(ISA_NEEDED[name]):
            precision[name], why[name] = "emulated", f"ONEDNN_MAX_CPU_ISA={isa_cap} caps {', '.join(have)}"
        else:
            precision[name], why[name] = "native", ", ".join(have)
    return {
        "torch_capability": torch_capability,
        "machine": machine,
        "avx2": "avx2" in flags,
        "avx512": "avx512f" in flags,
        "amx": "amx_tile" in flags,
        "precision": precision,
        "precision_reason": why,
        "flags_source": flags_source,
        "onednn_max_cpu_isa": isa_cap,
    }


def cpu_capability() -> dict[str, Any]:
    """What this machine's CPU computes natively: torch's CPU capability
    (``torch.backends.cpu.get_cpu_capability()``), AVX2 / AVX-512 / AMX, and for each reduced
    precision (bf16, fp16, int8, fp8) "native", "emulated" or "unknown" with the reason.

    The one place the plan's precision check, the worker's `emulated_precision` column, run.json
    and ``benchbed env`` read it from (tests replace this function)."""
    flags, source = _cpu_flags()
    return capability_from(
        flags,
        _torch_cpu_capability(),
        machine=platform.machine(),
        flags_source=source,
        isa_cap=os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA"),
    )


def cuda_precision(index: int = 0) -> dict[str, str]:
    """What CUDA device `index` computes natively, by compute capability: fp16 from 5.3, int8 (dp4a)
    from 6.1, bf16 from 8.0 (torch emulates it below), fp8 from 8.9. Call it only where CUDA is in
    use anyway (the cell's process): it initialises CUDA."""
    import torch

    major, minor = torch.cuda.get_device_capability(index)
    cc = (major, minor)
    needs = {"bf16": (8, 0), "fp16": (5, 3), "int8": (6, 1), "fp8": (8, 9)}
    return {name: "native" if cc >= need else "emulated" for name, need in needs.items()}


def describe_cpu(cap: dict[str, Any]) -> tuple[str, dict[str, str]]:
    """For ``benchbed env``: the instruction-set line, and per reduced precision its state and why."""
    sets = [name for name, key in (("AVX2", "avx2"), ("AVX-512", "avx512"), ("AMX", "amx")) if cap.get(key)]
    line = (
        f"{cpu_model()}: torch CPU capability {cap['torch_capability']}, instruction sets "
        f"{' '.join(sets) or 'none of AVX2 / AVX-512 / AMX'}"
    )
    return line, {
        name: f"{state} ({cap['precision_reason'][name]})" for name, state in cap["precision"].items()
    }


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
        "cpu_capability": cpu_capability(),
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
