"""The small interface every sensor follows: what it measures, where from, how to read it, how often.

A source (a device library, a sysfs tree) offers, for each quantity, a list of candidate
sensors, preferred first. At ``Telemetry.start()`` each candidate is read once
(``probe_candidates``): the first that works per quantity is kept for the sampling loop, and for a
quantity with none the reasons are kept (``sensor_errors``, ``benchbed env``). A candidate that
failed the probe is never called again; nothing here raises into training.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


def error_text(exc: BaseException) -> str:
    """``NVMLError_GpuIsLost: GPU is lost``: the class name first, since that is what users search."""
    name = type(exc).__name__
    try:
        message = str(exc)
    except Exception:  # pynvml's __str__ itself calls into the library for unknown codes
        message = ""
    return f"{name}: {message}" if message and message != name else name


@dataclass
class Sensor:
    """One way to read one quantity.

    ``read()`` returns ``{column suffix with unit: value}`` (``{"power_w": 212.5}``) and raises when
    the reading cannot be had; the sampler prefixes the suffix with the device label (``gpu0_``).
    ``fast`` sensors are read at ``power_hz``, the others at ``slow_hz``.
    """

    quantity: str  # energy, power, memory, utilisation, clocks, temperature, clock_events, ...
    source: str  # the library call or file read, for labels (power_source, benchbed env)
    read: Callable[[], dict[str, float]]
    fast: bool

    def probe(self) -> str:
        """Read once: '' when the read works, else why it does not."""
        try:
            self.read()
        except Exception as exc:  # NVMLError_NotSupported, _FunctionNotFound, _NoPermission, ...
            return error_text(exc)
        return ""


def probe_candidates(candidates: dict[str, list[Sensor]]) -> tuple[dict[str, Sensor], dict[str, str]]:
    """Call every candidate once; keep the first that works per quantity, and why the others did not."""
    supported: dict[str, Sensor] = {}
    unsupported: dict[str, str] = {}
    for quantity, options in candidates.items():
        reasons = []
        for sensor in options:
            reason = sensor.probe()
            if reason:
                reasons.append(f"{sensor.source}: {reason}")
                continue
            supported[quantity] = sensor
            break
        else:
            unsupported[quantity] = "; ".join(reasons)
    return supported, unsupported
