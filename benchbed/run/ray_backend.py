"""``benchbed run --backend ray``: each cell as a Ray task, still one process per cell.

A Ray task runs the cell exactly as the local runner does (``launchers.run_cell_subprocess``: its
own ``python -m benchbed.worker`` process, timeout, crash classification) in a temporary directory
on whichever node Ray gave it, then returns the cell's part (row, curves, telemetry, profiler
files) to the driver, which writes it atomically into the results directory: no shared filesystem
is needed, and a killed driver or worker leaves only whole parts behind. Resume works as with the
local runner (cells already in ``parts/`` are skipped).

Honesty rules (docs/scaling.md), enforced by the driver, which pins each task to a node:

- GPU cells get whole GPUs (``num_gpus`` = the cell's processes, 1 for most): at most one cell per
  GPU, and no CPU cell on a node while it runs GPU cells.
- CPU cells run one per node: two cells sharing a CPU skew each other's time and share one RAPL
  package counter, so their energy would be meaningless. ``cpu_cells_per_node`` > 1 is an opt-in;
  each cell then reserves ``node CPUs // cpu_cells_per_node`` CPUs and runs that many threads, and
  run.json records the choice.
- Every row records ``host`` (the node) and ``device_name`` (GPU name or CPU model): the gate
  compares only cells of the same host kind.

What is not carried over: the progress bar counts cells but shows no per-evaluation loss (events
stay on the node), and no idle power is measured (the driver's GPU is not the nodes'), so
``net_energy_j`` is NaN. A worker or node that dies mid-cell loses that cell, which is not
recorded: the run ends with exit code 1 and a rerun resumes it.
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from benchbed import SCHEMA_VERSION
from benchbed.plan import Cell, Scenario
from benchbed.results import store
from benchbed.results.schema import failure_row, now_iso
from benchbed.run.environment import environment
from benchbed.run.launchers import run_cell_subprocess
from benchbed.run.progress import Progress
from benchbed.run.runner import plan


@dataclass
class RayOutcome:
    """What the run did: ``lost`` cells died with their worker or node and were not recorded."""

    out_dir: Path
    finished: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)


def run_cell_task(spec: dict, timeout_s: float, cell_env: dict, drop_omp: bool) -> dict:
    """The Ray task: run one cell in its own process on this node; return its part as bytes."""
    if drop_omp:  # Ray sets OMP_NUM_THREADS to the task's CPUs; the local runner sets no thread count
        os.environ.pop("OMP_NUM_THREADS", None)
    prefix = f"benchbed-ray-{spec.get('run_id')}-"
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        row = run_cell_subprocess(spec, Path(tmp), timeout_s, cell_env)
        part = Path(tmp) / store.PARTS / spec["cell_id"]
        files = {str(p.relative_to(part)): p.read_bytes() for p in part.rglob("*") if p.is_file()}
    return {"row": row, "files": files, "host": socket.gethostname()}


@dataclass
class Node:
    node_id: str
    host: str
    cpus: float
    gpus: int
    cpu_cells: int = 0  # CPU cells running on it now
    gpus_used: int = 0  # GPUs its running GPU cells hold


class Placer:
    """Which node a cell may start on now, by the honesty rules: a GPU cell takes whole free GPUs
    on a node running no CPU cell; a CPU cell takes a node running no GPU cell and fewer than
    ``cpu_cells_per_node`` CPU cells. ``place`` returns (node, gpus, cpus) and counts the cell in;
    ``release`` counts it out."""

    def __init__(self, nodes: list[Node], cpu_cells_per_node: int = 1, num_cpus: float | None = None):
        self.nodes = {n.node_id: n for n in nodes}
        self.cpu_cells_per_node = cpu_cells_per_node
        self.num_cpus = num_cpus

    def place(self, gpus: int) -> tuple[Node, int, float] | None:
        """A node for a cell needing ``gpus`` GPUs (0: a CPU cell), or None while none is free;
        LookupError when no node of the cluster could ever run it."""
        if gpus and not any(n.gpus >= gpus for n in self.nodes.values()):
            raise LookupError(f"no node of the Ray cluster has {gpus} GPU(s)")
        if not gpus and not any(n.cpus >= 1 for n in self.nodes.values()):
            raise LookupError("no node of the Ray cluster has a CPU")
        for node in self.nodes.values():
            if gpus and node.cpu_cells == 0 and node.gpus - node.gpus_used >= gpus:
                node.gpus_used += gpus
                return node, gpus, self.num_cpus or 1
            if (
                not gpus
                and node.gpus_used == 0
                and node.cpu_cells < self.cpu_cells_per_node
                and node.cpus >= 1
            ):
                node.cpu_cells += 1
                return node, 0, self.num_cpus or max(1, int(node.cpus // self.cpu_cells_per_node))
        return None

    def release(self, node_id: str, gpus: int) -> None:
        node = self.nodes.get(node_id)
        if node is not None:
            node.gpus_used -= gpus
            node.cpu_cells -= 0 if gpus else 1

    def refresh(self, alive: list[Node]) -> None:
        """Forget dead nodes, add new ones, keep the counts of the living."""
        self.nodes = {n.node_id: self.nodes.get(n.node_id, n) for n in alive}


def _alive_nodes(ray) -> list[Node]:
    nodes = []
    for n in ray.nodes():
        if not n.get("Alive"):
            continue
        res = n.get("Resources", {})
        nodes.append(
            Node(
                n["NodeID"],
                n.get("NodeManagerHostname", "?"),
                float(res.get("CPU", 0)),
                int(res.get("GPU", 0)),
            )
        )
    return nodes


class RayConnectError(RuntimeError):
    """No Ray cluster at the address given; the message is one line."""


def _connect(address: str | None):
    import ray

    if not ray.is_initialized():
        # a local cluster must not report usage to anyone: benchbed runs offline
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
        except Exception as exc:  # ConnectionError, ValueError, RuntimeError: one line either way
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise RayConnectError(
                f"--address {address or 'local'}: cannot start or reach a Ray cluster ({first})"
            ) from None
    return ray


def run_scenario_ray(
    scenario: Scenario,
    out_dir: str | os.PathLike,
    *,
    address: str | None = None,
    only: str | None = None,
    retry_failed: bool = False,
    cell_env: dict | None = None,
    cpu_cells_per_node: int = 1,
    num_cpus: float | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    extra_meta: dict | None = None,
) -> RayOutcome:
    """Run the scenario's cells not yet in ``out_dir`` as Ray tasks (connecting to ``address``, or
    the cluster this process is already connected to, or a new local one)."""
    if cpu_cells_per_node < 1:
        raise ValueError("cpu_cells_per_node must be >= 1")
    ray = _connect(address)
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = store.read_run_json(out_dir)
    run_id = meta.get("run_id") or uuid.uuid4().hex[:12]
    todo, done = plan(scenario, out_dir, only=only, retry_failed=retry_failed)
    placer = Placer(_alive_nodes(ray), cpu_cells_per_node, num_cpus)
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
        backend="ray",
        ray={
            "address": address or "local",
            "cpu_cells_per_node": cpu_cells_per_node,
            "num_cpus": num_cpus,
            "nodes": [{"host": n.host, "cpus": n.cpus, "gpus": n.gpus} for n in placer.nodes.values()],
        },
        **(extra_meta or {}),
    )
    store.atomic_write_json(out_dir / store.RUN_JSON, meta)
    store.consolidate(out_dir)
    sha = meta["env"].get("git_sha")
    bar = Progress(len(todo), enabled=progress and sys.stderr.isatty())
    say = log or bar.log
    if done:
        say(f"resuming {out_dir}: {len(done)} cell(s) already done, {len(todo)} to run")
    outcome = RayOutcome(out_dir)
    queue: list[Cell] = list(todo)
    pending: dict = {}  # object ref -> (cell, node id, gpus, started)

    def record_failure(cell: Cell, spec: dict, status: str, error: str) -> None:
        known = {**spec["identity"], "run_id": run_id, "git_sha": sha, "started_at": now_iso()}
        store.write_part(out_dir, cell.cell_id, failure_row(known, status, error), None, None)
        store.consolidate(out_dir, tables=(store.CELLS,))
        outcome.finished.append(cell.cell_id)
        bar.advance()
        say(f"{cell.cell_id}: {status} -- {error.splitlines()[0]}")

    def spec_of(cell: Cell) -> dict:
        return {**cell.to_spec(), "run_id": run_id, "git_sha": sha, "torch_version": meta["env"]["torch"]}

    task = ray.remote(run_cell_task)
    try:
        while queue or pending:
            for cell in list(queue):
                try:
                    placed = placer.place(cell.world_size if cell.device == "cuda" else 0)
                except LookupError as exc:
                    queue.remove(cell)
                    record_failure(cell, spec_of(cell), "error", str(exc))
                    continue
                if placed is None:
                    continue
                node, gpus, cpus = placed
                env = dict(cell_env or {})
                threads_chosen = cpu_cells_per_node > 1 or num_cpus is not None
                if not gpus and threads_chosen:
                    env.setdefault("BENCHBED_THREADS", str(int(cpus)))
                ref = task.options(
                    num_cpus=cpus,
                    num_gpus=gpus,
                    max_retries=0,  # a lost cell is rerun by resuming, never behind the user's back
                    scheduling_strategy=NodeAffinitySchedulingStrategy(node.node_id, soft=False),
                ).remote(spec_of(cell), cell.timeout_s, env, "OMP_NUM_THREADS" not in os.environ)
                pending[ref] = (cell, node.node_id, gpus, time.perf_counter())
                queue.remove(cell)
                bar.cell(cell.cell_id)
            if not pending:
                if queue:  # nothing fits although every node is free (a GPU cell wider than any free node)
                    for cell in list(queue):
                        queue.remove(cell)
                        record_failure(cell, spec_of(cell), "error", "no node of the Ray cluster can run it")
                break
            ready, _ = ray.wait(list(pending), num_returns=1)
            ref = ready[0]
            cell, node_id, gpus, t0 = pending.pop(ref)
            placer.release(node_id, gpus)
            try:
                result = ray.get(ref)
            except ray.exceptions.RayTaskError as exc:  # an exception in the task's own code
                record_failure(cell, spec_of(cell), "error", f"ray task failed: {exc}"[-2000:])
                continue
            except ray.exceptions.OutOfMemoryError as exc:  # Ray's memory monitor killed it
                record_failure(cell, spec_of(cell), "oom", f"killed by Ray's memory monitor: {exc}"[-2000:])
                continue
            except ray.exceptions.RayError as exc:  # the worker or node died: not the cell's result
                outcome.lost.append(cell.cell_id)
                bar.advance()
                say(
                    f"{cell.cell_id}: lost with its Ray worker ({type(exc).__name__}); not recorded, rerun to resume"
                )
                placer.refresh(_alive_nodes(ray))
                continue
            store.write_part_files(out_dir, cell.cell_id, result["files"])
            store.consolidate(out_dir, tables=(store.CELLS,))
            outcome.finished.append(cell.cell_id)
            bar.advance()
            row = result["row"]
            say(
                f"{cell.cell_id}: {row['status']} on {result['host']}"
                + (
                    f" in {row['time_to_target_s']:.1f} s"
                    if row["status"] == "reached" and row.get("time_to_target_s") is not None
                    else ""
                )
                + f" ({time.perf_counter() - t0:.1f} s wall)"
                + (f" -- {str(row.get('error')).splitlines()[0]}" if row.get("error") else "")
            )
    except BaseException:
        for ref in pending:
            try:
                ray.cancel(ref, force=True)
            except Exception:  # noqa: BLE001 -- best effort on the way out
                traceback.print_exc()
        raise
    finally:
        bar.close()
        store.consolidate(out_dir)
        meta["finished_at"] = now_iso()
        store.atomic_write_json(out_dir / store.RUN_JSON, meta)
    return outcome
