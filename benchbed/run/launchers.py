"""Launching one cell: a child process (forked by the run's fork server, `run.zygote`, where it
can; else `python -m benchbed.worker`, or torchrun for a multi-process cell) with a timeout that
kills its whole process group, a cell that dies with its runner, and a row for every way a cell can
end.
"""

from __future__ import annotations

import contextlib
import json
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
from benchbed.run.zygote import ForkedCell, ForkServer, fork_cell

STDERR_TAIL_CHARS = 2000


def _die_with_parent() -> None:
    """In the cell's process, before exec: on Linux, be killed when the runner dies (even by
    SIGKILL), so no orphaned cell keeps training and skews the next run's timings."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _classify_crash(returncode: int, stderr_tail: str, timed_out: bool) -> str:
    if timed_out:
        return "timeout"
    low = stderr_tail.lower()
    if returncode == -signal.SIGKILL or "out of memory" in low or "memoryerror" in low:
        return "oom"  # the kernel's OOM killer sends SIGKILL
    return "error"


def run_cell_subprocess(
    spec: dict,
    out_dir: Path,
    timeout_s: float,
    cell_env: dict | None = None,
    on_event: Callable[[dict], None] = lambda e: None,
    fork_server: ForkServer | None = None,
) -> dict:
    """Run one cell in a child process; returns its row (written to the results either way)."""
    out_dir = Path(out_dir)
    started = now_iso()
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False, dir=out_dir) as f:
        json.dump(spec, f)
        spec_path = f.name
    env = {**os.environ, **(cell_env or {}), "PYTHONUNBUFFERED": "1", "BENCHBED_LAUNCHER": "subprocess"}
    timed_out = threading.Event()
    with tempfile.TemporaryFile(mode="w+", dir=out_dir) as stderr_file:
        proc = fork_cell(fork_server, spec, [spec_path, str(out_dir)], env, stderr_file)
        launcher = [sys.executable]
        if spec.get("world_size", 1) > 1:  # real torch.distributed: one process per rank
            launcher += [
                "-m",
                "torch.distributed.run",
                "--standalone",
                f"--nproc-per-node={spec['world_size']}",
            ]
            env["BENCHBED_LAUNCHER"] = "torchrun"
        proc = proc or subprocess.Popen(
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

        timer = threading.Timer(timeout_s, kill_on_timeout)
        timer.start()
        try:
            for line in proc.stdout:
                with contextlib.suppress(json.JSONDecodeError):
                    on_event(json.loads(line))
            proc.wait()
        except BaseException:  # Ctrl-C or an error in the runner: the cell must not outlive it
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
        finally:
            timer.cancel()
            os.unlink(spec_path)
        stderr_file.seek(0)
        tail = "".join(deque(stderr_file, maxlen=200))[-STDERR_TAIL_CHARS:]
    part = out_dir / store.PARTS / spec["cell_id"] / "row.json"
    if proc.returncode == 0 and part.is_file():
        return json.loads(part.read_text())
    if part.is_file() and not timed_out.is_set() and proc.returncode == 1:
        return json.loads(part.read_text())  # the cell recorded its own failure (bad data)
    status = _classify_crash(proc.returncode, tail, timed_out.is_set())
    reason = f"timed out after {timeout_s:g} s" if status == "timeout" else f"exit code {proc.returncode}"
    known = {
        **spec["identity"],
        **{key: spec.get(key) for key in ("run_id", "git_sha", "torch_version")},
        "started_at": started,
        "launcher": "fork" if isinstance(proc, ForkedCell) else env["BENCHBED_LAUNCHER"],
    }
    row = failure_row(known, status, f"{reason}; stderr tail:\n{tail}".strip())
    store.write_failed_part(out_dir, spec["cell_id"], row)  # with what it streamed until then
    return row
