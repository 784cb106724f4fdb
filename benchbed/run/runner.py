"""The runner: every cell of a scenario in its own subprocess, with a timeout, resumable.

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


def _idle_power(cells: list[Cell], seconds: float = 5.0) -> dict:
    """Idle power of the GPU before the first cell, so net energy can be reported beside gross."""
    if not any(c.device == "cuda" for c in cells):
        return {}
    try:
        import torch

        return measure_idle_power(seconds, torch.device("cuda", 0))
    except Exception as exc:  # telemetry must never stop a run
        return {"idle_sensor_errors": f"{type(exc).__name__}: {exc}"}


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
) -> Path:
    """Run the scenario's cells that are not yet in `out_dir`; returns `out_dir`. Raises
    ScenarioError (nothing written) for a reduced precision this CPU only emulates."""
    check_precision(scenario, machine.cpu_capability())
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
