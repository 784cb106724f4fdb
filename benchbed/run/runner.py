"""The runner: every cell of a scenario in its own process, with a timeout, resumable.

* Each cell is a fresh process forked by the run's fork server (`run.zygote`), which imported
  torch and the worker once; where a fork would not give the same cell (multi-process cells,
  another environment, CUDA initialised, not Linux) it is a new interpreter instead
  (``launcher="subprocess"``), and the run says why.
* A reduced precision the CPU only emulates is refused before anything is written
  (``plan.check_precision``), unless the technique's ``allow_emulated`` asks for it.

* A cell whose part is already in the results directory is skipped (resume); `retry_failed`
  re-runs the ones that ended in `oom`, `error` or `timeout`.
* A crash, timeout or out-of-memory kill in one cell is recorded as that cell's row (status and
  the tail of its stderr) and the matrix goes on.
* After each cell `cells.parquet` is rebuilt atomically; curves and telemetry at the end (and at
  the start, so a run killed earlier is made whole by the next one).
"""

from __future__ import annotations

import fnmatch
import os
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from benchbed import SCHEMA_VERSION
from benchbed.measure import machine
from benchbed.measure.idle import measure_idle_power
from benchbed.plan import Cell, Scenario, check_precision
from benchbed.results import store
from benchbed.results.schema import FAILED_STATUSES, now_iso
from benchbed.run.environment import environment
from benchbed.run.launchers import run_cell_subprocess
from benchbed.run.progress import Progress
from benchbed.run.zygote import ForkServer

LAUNCHERS = ("fork", "subprocess")


def _idle_power(cells: list[Cell], seconds: float = 5.0) -> dict:
    """Idle power of the GPU before the first cell, so net energy can be reported beside gross."""
    if not any(c.device == "cuda" for c in cells):
        return {}
    try:
        import torch

        return measure_idle_power(seconds, torch.device("cuda", 0))
    except Exception as exc:  # telemetry must never stop a run
        return {"idle_sensor_errors": f"{type(exc).__name__}: {exc}"}


def _busy_cores(todo: list[Cell]) -> str:
    """A warning when other processes already keep this machine's cores busy: CPU cells then run
    slower and noisier than the machine can (and threads waiting on each other can be many times
    slower), so their times describe the neighbours too."""
    if not any(c.device == "cpu" for c in todo) or not hasattr(os, "getloadavg"):
        return ""
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    if load < cores:
        return ""
    return (
        f"warning: the load average is {load:.1f} on {cores} CPU(s): other processes compete for the "
        "cores, so CPU cells will run slower and noisier than this machine can"
    )


def _say_fallbacks(server: ForkServer | None, said: set[str], say: Callable[[str], None]) -> None:
    """Say once per reason why cells run as new interpreters instead of forks."""
    for reason in server.fallbacks if server is not None else ():
        if reason not in said:
            said.add(reason)
            say(f"cells run as new processes, not forks: {reason}")


def plan(
    scenario: Scenario, out_dir: Path, *, only: str | None = None, retry_failed: bool = False
) -> tuple[list[Cell], list[Cell]]:
    """(cells to run, cells already done) for this results directory."""
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
        if row is None or (retry_failed and row.get("status") in FAILED_STATUSES):
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
    launcher: str = "fork",
    fork_server: ForkServer | None = None,
) -> Path:
    """Run the scenario's cells that are not yet in `out_dir`; returns `out_dir`.

    `launcher` "fork" forks cells from a fork server where that gives the same cell (`fork_server`,
    one the caller started early so its imports overlap the caller's, else one started here; closed
    at the end either way), "subprocess" starts a new interpreter for every cell. Raises
    ScenarioError (nothing written) for a reduced precision this CPU only emulates."""
    if launcher not in LAUNCHERS:
        raise ValueError(f"launcher must be one of {LAUNCHERS}, got {launcher!r}")
    try:
        check_precision(scenario, machine.cpu_capability())
    except BaseException:
        if fork_server is not None:
            fork_server.close()
        raise
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = store.read_run_json(out_dir)
    run_id = meta.get("run_id") or uuid.uuid4().hex[:12]
    todo, done = plan(scenario, out_dir, only=only, retry_failed=retry_failed)
    if cell_filter is not None:
        todo = [c for c in todo if cell_filter(c)]
    # a server no cell can use would only import torch beside the cells being measured
    if launcher != "fork" or cell_env or not any(c.world_size == 1 for c in todo):
        if fork_server is not None:
            fork_server.close()
        fork_server = None
    elif fork_server is None:
        fork_server = ForkServer()
        fork_server.start()  # imports torch and the worker while the run gets ready
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
    busy = _busy_cores(todo)
    if busy:
        say(busy)
    said: set[str] = set()
    try:
        for cell in todo:
            spec = {**cell.to_spec(), "run_id": run_id, "git_sha": sha, "torch_version": meta["env"]["torch"]}
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
                fork_server=fork_server,
            )
            _say_fallbacks(fork_server, said, say)
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
        if fork_server is not None:
            fork_server.close()
        bar.close()
        store.consolidate(out_dir)
        meta["finished_at"] = now_iso()
        store.atomic_write_json(out_dir / store.RUN_JSON, meta)
    return out_dir
