"""The host: CPU package energy from RAPL, and the resident memory of this process.

- RAPL package counters (``/sys/class/powercap/intel-rapl:N/energy_uj``) where readable, with
  wraparound at ``max_energy_range_uj`` (Khan et al., "RAPL in Action: Experiences in Using RAPL for
  Power Measurements", ACM TOMPECS 2018). Most kernels make ``energy_uj`` root-only; then CPU energy is
  ``unavailable``.
- Resident memory: the current RSS from ``/proc/self/statm`` (sampled), and the peak from
  ``ru_maxrss`` (each cell runs in its own subprocess, so: the cell's).

The sysfs root is a parameter so tests build a fake powercap tree.
"""

from __future__ import annotations

import os
import re
import resource
import sys
from dataclasses import dataclass
from pathlib import Path

DEFAULT_RAPL_ROOT = "/sys/class/powercap"


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


def peak_rss_bytes() -> float:
    """Peak resident set of this process (each cell runs in its own subprocess, so: of the cell)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return float(peak if sys.platform == "darwin" else peak * 1024)  # bytes on macOS, KiB on Linux


def current_rss_bytes() -> dict[str, float]:
    with open("/proc/self/statm") as statm:
        resident_pages = int(statm.read().split()[1])
    return {"rss_bytes": float(resident_pages * os.sysconf("SC_PAGE_SIZE"))}
