"""Launching one cell: a child process (`python -m benchbed.worker`, or torchrun for a
multi-process cell) with a timeout that kills its whole process group, a cell that dies with its
runner, and a row for every way a cell can end (`run.crash` says which status a cell that wrote
no row gets, from the evidence gathered here).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
from collections import deque
from collections.abc import Callable
from pathlib import Path

from benchbed.results import store
from benchbed.results.schema import failure_row, now_iso
from benchbed.run import crash

STDERR_TAIL_CHARS = 2000


def _die_with_parent() -> None:
    """In the cell's process, before exec: on Linux, be killed when the runner dies (even by
    SIGKILL), so no orphaned cell keeps training and skews the next run's timings."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _part_stamp(part: Path) -> tuple[int, int] | None:
    try:
        info = part.stat()
    except OSError:
        return None
    return info.st_ino, info.st_mtime_ns


def _wait(proc: subprocess.Popen) -> float:
    """Reap the cell; its peak resident set in bytes (NaN where wait4 is not available)."""
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    except (AttributeError, ChildProcessError):
        proc.wait()
        return math.nan
    proc.returncode = os.waitstatus_to_exitcode(status)
    return float(usage.ru_maxrss) * (1 if sys.platform == "darwin" else 1024)


def run_cell_subprocess(
    spec: dict,
    out_dir: Path,
    timeout_s: float,
    cell_env: dict | None = None,
    on_event: Callable[[dict], None] = lambda e: None,
) -> dict:
    """Run one cell in a child process; returns its row (written to the results either way)."""
    out_dir = Path(out_dir)
    started = now_iso()
    part = out_dir / store.PARTS / spec["cell_id"]
    stamp_before = _part_stamp(part)  # a part from an earlier attempt is not this cell's outcome
    with tempfile.NamedTemporaryFile(
        "w", prefix=store.SPEC_PREFIX, suffix=".json", delete=False, dir=out_dir
    ) as f:
        json.dump(spec, f)
        spec_path = f.name
    env = {**os.environ, **(cell_env or {}), "PYTHONUNBUFFERED": "1"}
    timed_out = threading.Event()
    with tempfile.TemporaryFile(mode="w+", dir=out_dir) as stderr_file:
        launcher = [sys.executable]
        if spec.get("world_size", 1) > 1:  # real torch.distributed: one process per rank
            launcher += [
                "-m",
                "torch.distributed.run",
                "--standalone",
                f"--nproc-per-node={spec['world_size']}",
            ]
        proc = subprocess.Popen(
            [*launcher, "-m", "benchbed.worker", spec_path, str(out_dir)],
            stdout=subprocess.PIPE,
            stderr=stderr_file,
            text=True,
            env=env,
            start_new_session=True,  # a timeout kills the cell's whole process group
            preexec_fn=_die_with_parent,
        )

        def kill_on_timeout():
            timed_out.set()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)

        oom_kills_before = crash.oom_kill_count()
        write_failed: dict | None = None
        timer = threading.Timer(min(timeout_s, threading.TIMEOUT_MAX), kill_on_timeout)
        timer.start()
        try:
            for line in proc.stdout:
                with contextlib.suppress(json.JSONDecodeError, TypeError, AttributeError):
                    event = json.loads(line)
                    if event.get("event") == "write_failed":
                        write_failed = event
                    on_event(event)
            peak_rss = _wait(proc)
        except BaseException:  # Ctrl-C or an error in the runner: the cell must not outlive it
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
        finally:
            timer.cancel()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(spec_path)
        stderr_file.seek(0)
        tail = "".join(deque(stderr_file, maxlen=200))[-STDERR_TAIL_CHARS:]
    if _part_stamp(part) != stamp_before and store.part_damage(part) is None:
        # the cell wrote its outcome (a bad-data error included) before it exited, however it exited
        return json.loads((part / "row.json").read_text())
    if write_failed is not None:  # disk full: not the cell's outcome; no row, the run stops
        raise OSError(write_failed.get("errno"), write_failed.get("reason"), write_failed.get("filename"))
    evidence = crash.Evidence(
        returncode=proc.returncode,
        stderr_tail=tail,
        timed_out=timed_out.is_set(),
        oom_kills=crash.oom_kills_since(oom_kills_before),
        peak_rss_bytes=peak_rss,
        memory_limit_bytes=crash.memory_limit_bytes(),
    )
    status, reason = crash.classify(evidence)
    if status == "timeout":
        reason = f"timed out after {timeout_s:g} s"
    elif proc.returncode == 0:
        reason = "exit code 0 but no readable results part"
    known = {
        **spec["identity"],
        **{key: spec.get(key) for key in ("run_id", "git_sha", "torch_version", "threads")},
        "started_at": started,
        "finished_at": now_iso(),
        "peak_rss_bytes": peak_rss,
    }
    row = failure_row(known, status, f"{reason}; stderr tail:\n{tail}".strip())
    store.write_part(out_dir, spec["cell_id"], row, None, None)  # OSError (disk full) goes up
    return row
