"""The runner: every cell of a scenario in its own subprocess, with a timeout, resumable.

* A cell whose part is already in the results directory is skipped (resume); `retry_failed`
  re-runs the ones that ended in `oom`, `error` or `timeout`.
* A crash, timeout or out-of-memory kill in one cell is recorded as that cell's row (status and
  the tail of its stderr) and the matrix goes on.
* After each cell `cells.parquet` is rebuilt atomically; curves and telemetry at the end (and at
  the start, so a run killed earlier is made whole by the next one).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from pathlib import Path

from benchbed import SCHEMA_VERSION, store
from benchbed.cell import failure_row, git_sha, now_iso
from benchbed.config import Cell, Scenario

STDERR_TAIL_CHARS = 2000


def environment() -> dict:
    import torch

    env = {
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "cuda_available": torch.cuda.is_available(),
        "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "git_sha": git_sha(),
    }
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    try:
        from benchbed.measure.machine import machine_info

        env["machine"] = machine_info()
    except Exception as exc:  # telemetry must never stop a run
        env["machine"] = {"error": f"{type(exc).__name__}: {exc}"}
    return env


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
) -> dict:
    """Run one cell in a child process; returns its row (written to the results either way)."""
    out_dir = Path(out_dir)
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False, dir=out_dir) as f:
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
            [*launcher, "-m", "benchbed.cell", spec_path, str(out_dir)],
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
    row = failure_row(spec, status, f"{reason}; stderr tail:\n{tail}".strip())
    store.write_part(out_dir, spec["cell_id"], row, None, None)
    return row


class Progress:
    """A rich progress bar: cells done/total, current cell, ETA, latest loss. Quiet when not a TTY."""

    def __init__(self, total: int, enabled: bool):
        self.enabled = enabled
        self.total = total
        if not enabled:
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.progress import Progress as RichProgress

        self.bar = RichProgress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[detail]}"),
            transient=False,
        )
        self.task = self.bar.add_task("cells", total=total, detail="")
        self.bar.start()

    def cell(self, cell_id: str) -> None:
        if self.enabled:
            self.bar.update(self.task, detail=cell_id)

    def event(self, cell_id: str, event: dict) -> None:
        if self.enabled and event.get("event") == "eval":
            self.bar.update(
                self.task,
                detail=f"{cell_id}  step {event['step']}  val {event['val_loss']:.4f}  {100 * event.get('progress', 0):.0f}%",
            )

    def advance(self) -> None:
        if self.enabled:
            self.bar.advance(self.task)

    def log(self, message: str) -> None:
        if self.enabled:
            self.bar.console.print(message)
        else:
            print(message, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.enabled:
            self.bar.stop()


def _idle_power(cells: list[Cell], seconds: float = 5.0) -> dict:
    """Idle power of the GPU before the first cell, so net energy can be reported beside gross."""
    if not any(c.device == "cuda" for c in cells):
        return {}
    try:
        import torch

        from benchbed.measure.idle import measure_idle_power

        return measure_idle_power(seconds, torch.device("cuda", 0))
    except Exception as exc:  # telemetry must never stop a run
        return {"idle_sensor_errors": f"{type(exc).__name__}: {exc}"}


def plan(
    scenario: Scenario, out_dir: Path, *, only: str | None = None, retry_failed: bool = False
) -> tuple[list[Cell], list[Cell]]:
    """(cells to run, cells already done) for this results directory."""
    import fnmatch

    done_rows = store.read_parts(out_dir)
    cells = scenario.cells
    if only:
        cells = [
            c
            for c in cells
            if fnmatch.fnmatch(c.cell_id, only) or fnmatch.fnmatch(c.variant, only) or only in c.cell_id
        ]
    todo, done = [], []
    for c in cells:
        row = done_rows.get(c.cell_id)
        if row is None or (retry_failed and row.get("status") in store.FAILED_STATUSES):
            todo.append(c)
        else:
            done.append(c)
    return todo, done


def run_scenario(
    scenario: Scenario,
    out_dir: str | os.PathLike,
    *,
    only: str | None = None,
    retry_failed: bool = False,
    cell_env: dict | None = None,
    cell_filter: Callable[[Cell], bool] | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Run the scenario's cells that are not yet in `out_dir`; returns `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = store.read_run_json(out_dir)
    run_id = meta.get("run_id") or uuid.uuid4().hex[:12]
    todo, done = plan(scenario, out_dir, only=only, retry_failed=retry_failed)
    if cell_filter is not None:
        todo = [c for c in todo if cell_filter(c)]
    meta.update(
        schema_version=SCHEMA_VERSION,
        run_id=run_id,
        scenario=scenario.name,
        scenario_path=os.path.basename(scenario.path),
        scenario_text=scenario.text,
        started_at=meta.get("started_at") or now_iso(),
        resumed_at=now_iso() if done else None,
        finished_at=None,
        env=environment(),
    )
    store.atomic_write_json(out_dir / store.RUN_JSON, meta)
    store.consolidate(out_dir)  # make a run killed earlier whole before adding to it
    sha = meta["env"].get("git_sha")
    idle = _idle_power(todo)
    if idle:
        meta["env"]["idle"] = idle
        store.atomic_write_json(out_dir / store.RUN_JSON, meta)
    bar = Progress(len(todo), enabled=progress and sys.stderr.isatty())
    say = log or bar.log
    if done:
        say(f"resuming {out_dir}: {len(done)} cell(s) already done, {len(todo)} to run")
    try:
        for cell in todo:
            spec = {**cell.to_spec(), "run_id": run_id, "git_sha": sha}
            if idle and cell.device == "cuda":
                spec["idle_power_w"] = idle.get("idle_power_w")
            bar.cell(cell.cell_id)
            t0 = time.perf_counter()
            row = run_cell_subprocess(
                spec,
                out_dir,
                cell.timeout_s,
                cell_env,
                on_event=lambda e, cid=cell.cell_id: bar.event(cid, e),
            )
            store.consolidate(out_dir, tables=(store.CELLS,))
            bar.advance()
            say(
                f"{cell.cell_id}: {row['status']}"
                + (
                    f" in {row['time_to_target_s']:.1f} s"
                    if row.get("time_to_target_s") not in (None,) and row["status"] == "reached"
                    else ""
                )
                + f" ({time.perf_counter() - t0:.1f} s wall)"
                + (f" -- {str(row.get('error')).splitlines()[0]}" if row.get("error") else "")
            )
    finally:
        bar.close()
        store.consolidate(out_dir)
        meta["finished_at"] = now_iso()
        store.atomic_write_json(out_dir / store.RUN_JSON, meta)
    return out_dir
