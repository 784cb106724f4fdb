"""TEMPLATE, copy me: a sensor source for benchbed.measure (see docs/adding-a-sensor.md).

Copy to ``benchbed/measure/sensors/<source>.py``, replace every ``example`` name, and say here what
the source measures, on which cells, and where its numbers come from (a citation where the accuracy
of the source is known to be limited). Nothing imports this file; it only has to stay valid Python.

The rules every source follows:

- The library (or sysfs root, or file) is a parameter with a real default, so tests replace it at
  the library boundary with a fake driven by recorded traces (like tests/fakes/nvml.py).
- For each quantity, list the calls that can provide it, preferred first; ``probe_candidates`` reads
  each once at ``Telemetry.start()`` and keeps the first that works. A call that failed the probe is
  never made again.
- ``read()`` returns ``{column suffix with unit: value}`` (``power_w``, ``mem_used_bytes``,
  ``temperature_c``): the unit is the suffix, the device label becomes the prefix (``gpu0_power_w``).
- Nothing raises into training: return a reason string instead of raising wherever a caller would
  otherwise have to catch.
"""

from __future__ import annotations

import contextlib
import importlib
from typing import Any

from benchbed.measure.sensors.base import Sensor, error_text, probe_candidates

LIBRARY = "example_device_library"  # the Python module that talks to the device
DEFAULT_LIBRARY = object()  # "use the real library": the default of the ``library=`` parameter


def load_library() -> Any:
    """The library module, or None when it is not installed (every quantity is then unavailable)."""
    try:
        return importlib.import_module(LIBRARY)
    except ImportError:
        return None


def library_init(library: Any) -> str:
    """Initialise the library; the reason it cannot be used, or '' when it can."""
    if library is None:
        return f"{LIBRARY} not installed"
    try:
        library.init()
    except Exception as exc:
        return error_text(exc)
    return ""


def library_shutdown(library: Any) -> None:
    with contextlib.suppress(Exception):  # shutting down a library that half-failed is best effort
        library.shutdown()


def candidate_sensors(library: Any, handle: Any) -> dict[str, list[Sensor]]:
    """For each quantity, the calls that can provide it, preferred first."""

    def energy() -> dict[str, float]:
        return {"energy_mj": float(library.energy_counter_mj(handle))}  # cumulative counter

    def power_instant() -> dict[str, float]:
        return {"power_w": library.instant_power_mw(handle) / 1000.0}

    def power_average() -> dict[str, float]:
        return {"power_w": library.average_power_mw(handle) / 1000.0}  # older firmware

    def memory() -> dict[str, float]:
        return {"mem_used_bytes": float(library.memory_used_bytes(handle))}

    return {
        # fast=True: read at power_hz (and at every window edge); fast=False: at slow_hz
        "energy": [Sensor("energy", "energy_counter_mj", energy, True)],
        "power": [
            Sensor("power", "instant_power_mw", power_instant, True),
            Sensor("power", "average_power_mw", power_average, True),
        ],
        "memory": [Sensor("memory", "memory_used_bytes", memory, False)],
    }


def probe_device(library: Any, handle: Any) -> tuple[dict[str, Sensor], dict[str, str]]:
    """(the working sensor per quantity, why each missing quantity has none)."""
    return probe_candidates(candidate_sensors(library, handle))
