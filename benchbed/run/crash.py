"""How a cell that left no row ended: `timeout`, `oom`, `killed` or `error`, and the evidence.

The kernel's OOM killer sends SIGKILL, and so does a user's ``kill -9``: the signal alone cannot
tell them apart, and the OOM killer's own trace (dmesg) is not readable without privileges. So
`oom` needs evidence of memory exhaustion, and a signal from outside without it is `killed`:

1. **timeout**: the runner's timer killed the cell.
2. **oom**, in this order:
   - the cell's stderr says so: ``MemoryError``, ``out of memory`` (CUDA's and the CPU
     allocator's), ``OutOfMemoryError``, ``Cannot allocate memory``, ``std::bad_alloc``;
   - the cell died of SIGKILL and the OOM-kill counter of the runner's memory cgroup (cgroup v2
     ``memory.events: oom_kill``, v1 ``memory.oom_control: oom_kill``; the cell inherits the cgroup)
     grew while the cell ran;
   - the cell died of SIGKILL with a peak resident set (``wait4``'s ``ru_maxrss``, which includes
     the cell's own reaped children) of at least 90% of the tightest memory limit that applies:
     the cgroup's limit, ``RLIMIT_AS``, or the machine's physical memory.
3. **error**: the cell exited with a non-zero code, or crashed on a fault of its own (SIGSEGV,
   SIGBUS, SIGFPE, SIGILL, SIGABRT, SIGSYS, SIGTRAP).
4. **killed**: any other signal (SIGKILL, SIGTERM, SIGINT, SIGHUP, ...) without evidence of
   memory exhaustion. A killed cell says nothing about its configuration: even a plain resume
   runs it again.

Where a source of evidence is not readable (no cgroup memory controller, another OS) that rule is
skipped, and the message says which evidence there was.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import resource
import signal
from dataclasses import dataclass

#: signals a process raises on itself when it faults: a crash of the cell, not an outside kill
SELF_FAULT_SIGNALS = {"SIGSEGV", "SIGBUS", "SIGFPE", "SIGILL", "SIGABRT", "SIGSYS", "SIGTRAP"}
MEMORY_TEXT = re.compile(
    r"memoryerror|out of memory|outofmemoryerror|cannot allocate memory|std::bad_alloc", re.IGNORECASE
)
NEAR_LIMIT = 0.9
_NO_LIMIT = 1 << 60  # cgroup v1 writes ~2**63 for "no limit"


@dataclass(frozen=True)
class Evidence:
    returncode: int
    stderr_tail: str = ""
    timed_out: bool = False
    oom_kills: int | None = None  # growth of the cgroup's oom_kill counter while the cell ran
    peak_rss_bytes: float = math.nan
    memory_limit_bytes: float = math.nan


def signal_name(returncode: int) -> str | None:
    if returncode >= 0:
        return None
    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"


def classify(ev: Evidence) -> tuple[str, str]:
    """(status, reason) of a cell that wrote no row."""
    if ev.timed_out:
        return "timeout", ""
    name = signal_name(ev.returncode)
    how = f"killed by {name}" if name else f"exit code {ev.returncode}"
    if MEMORY_TEXT.search(ev.stderr_tail):
        return "oom", f"{how}; out of memory (its stderr says so)"
    if name == "SIGKILL":
        if ev.oom_kills:
            return "oom", f"{how}; the memory cgroup's OOM killer fired {ev.oom_kills} time(s) while it ran"
        if ev.peak_rss_bytes >= NEAR_LIMIT * ev.memory_limit_bytes:
            return "oom", (
                f"{how}; peak RSS {ev.peak_rss_bytes / 2**20:.0f} MiB is at least {NEAR_LIMIT:.0%} "
                f"of the {ev.memory_limit_bytes / 2**20:.0f} MiB memory limit"
            )
    if name is None or name in SELF_FAULT_SIGNALS:
        return "error", how
    checked = ["no out-of-memory message"]
    if ev.oom_kills is not None:
        checked.append("no cgroup OOM kill")
    if not math.isnan(ev.peak_rss_bytes):
        checked.append(f"peak RSS {ev.peak_rss_bytes / 2**20:.0f} MiB")
    return "killed", f"{how} from outside the cell ({', '.join(checked)})"


# -- evidence sources ------------------------------------------------------------------------------


def _cgroup_dirs() -> list[tuple[str, str]]:
    """(version, directory) of this process's memory cgroup, most specific first."""
    found: list[tuple[str, str]] = []
    try:
        with open("/proc/self/cgroup") as f:
            lines = f.read().splitlines()
    except OSError:
        return found
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        path = path.lstrip("/")
        if controllers == "":
            found += [("v2", os.path.join("/sys/fs/cgroup", path)), ("v2", "/sys/fs/cgroup")]
        elif "memory" in controllers.split(","):
            root = "/sys/fs/cgroup/memory"
            found += [("v1", os.path.join(root, path)), ("v1", root)]
    return found


def _read_key(path: str, key: str) -> int | None:
    with contextlib.suppress(OSError, ValueError), open(path) as f:
        for line in f:
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    return None


def oom_kill_count() -> int | None:
    """The memory cgroup's cumulative OOM-kill counter, or None where it is not readable."""
    for version, directory in _cgroup_dirs():
        name = "memory.events" if version == "v2" else "memory.oom_control"
        count = _read_key(os.path.join(directory, name), "oom_kill")
        if count is not None:
            return count
    return None


def _read_int(path: str) -> int | None:
    with contextlib.suppress(OSError, ValueError), open(path) as f:
        return int(f.read().strip())
    return None


def memory_limit_bytes() -> float:
    """The tightest memory limit on the cells: cgroup, address space, physical memory (NaN if none)."""
    limits: list[float] = []
    for version, directory in _cgroup_dirs():
        value = _read_int(
            os.path.join(directory, "memory.max" if version == "v2" else "memory.limit_in_bytes")
        )
        if value is not None and 0 < value < _NO_LIMIT:
            limits.append(float(value))
            break
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        limits.append(float(soft))
    with contextlib.suppress(OSError, ValueError, AttributeError):
        limits.append(float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")))
    return min(limits) if limits else math.nan


def oom_kills_since(before: int | None) -> int | None:
    after = oom_kill_count()
    return None if before is None or after is None else max(0, after - before)
