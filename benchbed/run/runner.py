"""The runner: every cell of a scenario in its own subprocess, with a timeout, resumable.

* One runner per results directory: it holds an exclusive lock on ``<out>/.lock`` (`run.lock`)
  from before its first read to after its last write; a second one is refused (`Locked`).
* Under the lock, before the first cell: what a killed run left (temporary files, a part renamed
  aside) is tidied, and a damaged part or run.json is moved aside with one line saying so.
* A cell whose part is already in the results directory is skipped (resume), except a `killed`
  one (stopped from outside: it says nothing about the cell); `retry_failed` also re-runs the ones
  that ended in `oom`, `error` or `timeout`.
* A crash, timeout or out-of-memory kill in one cell is recorded as that cell's row (status and
  the tail of its stderr) and the matrix goes on. A write that fails (disk full) stops the run with
  `ResultsWriteError`; Ctrl-C (or SIGTERM, see `interrupt_on_sigterm`) kills the running cell and
  keeps every finished one.
* After each cell `cells.parquet` is rebuilt atomically; curves and telemetry at the end (and at
  the start, so a run killed earlier is made whole by the next one).
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import signal
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from benchbed import SCHEMA_VERSION
from benchbed.measure.idle import measure_idle_power
from benchbed.plan import Cell, Scenario, stages
from benchbed.results import store
from benchbed.results.schema import FAILED_STATUSES, RERUN_STATUSES, now_iso
from benchbed.run.environment import environment
from benchbed.run.launchers import run_cell_subprocess
from benchbed.run.lock import RunLock
from benchbed.run.progress import Progress
from benchbed.text import os_error_reason, printable


class ResultsWriteError(RuntimeError):
    """Writing the results failed (disk full, read-only, ...); str() is the one line to print."""


class UnusableOutDir(ValueError):
    """The results directory cannot be created or locked (bad --out); str() is the one line."""


class Interrupted(KeyboardInterrupt):
    """The runner was asked to stop (Ctrl-C, SIGTERM); `signum` says which."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def interrupt_on_sigterm():
    """While inside: SIGTERM stops a run the way Ctrl-C does (running cell killed, finished cells
    kept), as `Interrupted(SIGTERM)`. Outside the main thread it does nothing."""

    def handler(signum, frame):
        raise Interrupted(signum)

    try:
        old = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


@contextlib.contextmanager
def _signals_deferred():
    """Ctrl-C and SIGTERM wait while the run's last tables are written (a few hundred ms)."""
    try:
        old = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread: signals are not ours to handle
        yield
        return
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def describe_write_error(exc: OSError, out_dir: Path) -> str:
    """One line for a failed write: the file (or the results directory) and the system's reason."""
    return f"{exc.filename or out_dir}: cannot write results ({os_error_reason(exc)})"


def cell_threads() -> int:
    """The torch thread count cells train with: BENCHBED_THREADS, else torch's default here."""
    value = os.environ.get("BENCHBED_THREADS")
    if value:
        return int(value)
    import torch

    return torch.get_num_threads()


def _idle_power(cells: list[Cell], seconds: float = 5.0) -> dict:
    """Idle power of the GPU before the first cell, so net energy can be reported beside gross."""
    if not any(c.device == "cuda" for c in cells):
        return {}
    try:
        import torch

        return measure_idle_power(seconds, torch.device("cuda", 0))
    except Exception as exc:  # telemetry must never stop a run
        return {"idle_sensor_errors": f"{type(exc).__name__}: {exc}"}


def select(cells: list[Cell], only: str | None) -> list[Cell]:
    """The cells `--only PATTERN` keeps (id or variant matching the glob, or id containing it)."""
    if not only:
        return list(cells)
    return [
        c
        for c in cells
        if fnmatch.fnmatch(c.cell_id, only) or fnmatch.fnmatch(c.variant, only) or only in c.cell_id
    ]


def plan(
    scenario: Scenario, out_dir: Path, *, only: str | None = None, retry_failed: bool = False
) -> tuple[list[Cell], list[Cell]]:
    """(cells to run, cells already done) for this results directory."""
    done_rows = store.read_parts(out_dir)
    cells = select(scenario.cells, only)
    todo, done = [], []
    for c in stages.order(cells):  # earlier pipeline stages first (plan/stages.py)
        row = done_rows.get(c.cell_id)
        status = row.get("status") if row is not None else None
        if row is None or status in RERUN_STATUSES or (retry_failed and status in FAILED_STATUSES):
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
    """Run the scenario's cells that are not yet in `out_dir`; returns `out_dir`.

    Raises `run.lock.Locked` when another runner holds `out_dir`, `UnusableOutDir` when it cannot
    be created or locked, `ResultsWriteError` when the results cannot be written, `KeyboardInterrupt` (`Interrupted`) when stopped; in every case the
    cells that finished are in `out_dir`."""
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        lock = RunLock(out_dir).acquire()
    except OSError as exc:
        raise UnusableOutDir(
            f"{exc.filename or out_dir}: --out: cannot use it ({os_error_reason(exc)})"
        ) from None
    try:
        return _run_locked(scenario, out_dir, only, retry_failed, cell_env, cell_filter, progress, log)
    except OSError as exc:
        raise ResultsWriteError(describe_write_error(exc, out_dir)) from None
    finally:
        lock.release()


def _run_locked(scenario, out_dir, only, retry_failed, cell_env, cell_filter, progress, log) -> Path:
    notes = store.clean_stray(out_dir)
    moved = store.quarantine_run_json(out_dir)
    notes += [moved] if moved else []
    notes += store.quarantine_damaged(out_dir)
    meta = store.read_run_json(out_dir)
    run_id = meta.get("run_id") or uuid.uuid4().hex[:12]
    todo, done = plan(scenario, out_dir, only=only, retry_failed=retry_failed)
    if cell_filter is not None:
        todo = [c for c in todo if cell_filter(c)]
    threads = cell_threads()
    meta.update(
        schema_version=SCHEMA_VERSION,
        run_id=run_id,
        scenario=scenario.name,
        scenario_path=os.path.basename(scenario.path),
        scenario_text=scenario.text,
        started_at=meta.get("started_at") or now_iso(),
        resumed_at=now_iso() if done else None,
        finished_at=None,
        env={**environment(), "threads": threads},
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
    for note in notes:
        say(printable(note))
    if done:
        say(f"resuming {out_dir}: {len(done)} cell(s) already done, {len(todo)} to run")
    failure: OSError | None = None
    try:
        for cell in todo:
            spec = {
                **cell.to_spec(),
                "run_id": run_id,
                "git_sha": sha,
                "torch_version": meta["env"]["torch"],
                "threads": threads,
            }
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
                printable(
                    f"{cell.cell_id}: {row['status']}"
                    + (
                        f" in {row['time_to_target_s']:.1f} s"
                        if row.get("time_to_target_s") not in (None,) and row["status"] == "reached"
                        else ""
                    )
                    + f" ({time.perf_counter() - t0:.1f} s wall)"
                    + (f" -- {str(row.get('error')).splitlines()[0]}" if row.get("error") else "")
                )
            )
    except OSError as exc:
        failure = exc
    finally:
        bar.close()
        with _signals_deferred():
            try:
                store.consolidate(out_dir)
                meta["finished_at"] = now_iso()
                store.atomic_write_json(out_dir / store.RUN_JSON, meta)
            except OSError as exc:
                failure = failure or exc
    if failure is not None:
        raise failure
    return out_dir
