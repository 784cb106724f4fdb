"""The Ray backend on a local Ray cluster on the CPU: the placement rules, the same cells as the
local runner, and a worker killed mid-cell leaving a directory that a rerun completes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from fixtures.optional import require

from benchbed import plan
from benchbed.measure.machine import cpu_model
from benchbed.results import store
from benchbed.run.ray_backend import Node, Placer

DETERMINISTIC = [
    "status",
    "final_val_loss",
    "best_val_loss",
    "steps",
    "tokens",
    "steps_to_target",
    "tokens_to_target",
]


def view(directory: Path) -> pd.DataFrame:
    return pd.read_parquet(directory / store.CELLS).set_index("cell_id").sort_index()[DETERMINISTIC]


# -- placement: no Ray needed ---------------------------------------------------------------------


def test_cpu_cells_run_one_per_node_unless_opted_in():
    placer = Placer([Node("a", "host-a", cpus=8, gpus=0), Node("b", "host-b", cpus=8, gpus=0)])
    first, second = placer.place(0), placer.place(0)
    assert {first[0].node_id, second[0].node_id} == {"a", "b"}
    assert first[2] == 8  # the whole node's CPUs, so Ray puts nothing else there
    assert placer.place(0) is None  # both nodes busy: the third cell waits
    placer.release("a", 0)
    assert placer.place(0)[0].node_id == "a"

    shared = Placer([Node("a", "host-a", cpus=8, gpus=0)], cpu_cells_per_node=2)
    one, two = shared.place(0), shared.place(0)
    assert one[2] == two[2] == 4 and shared.place(0) is None


def test_gpu_cells_take_whole_gpus_and_never_share_a_node_with_a_cpu_cell():
    placer = Placer([Node("g", "gpu-host", cpus=32, gpus=2)])
    assert placer.place(1)[1] == 1
    assert placer.place(0) is None  # a CPU cell would skew the GPU cell's host side
    assert placer.place(1)[1] == 1
    assert placer.place(1) is None  # one cell per GPU
    placer.release("g", 1)
    placer.release("g", 1)
    assert placer.place(0) is not None
    assert placer.place(1) is None  # and a GPU cell waits for the CPU cell
    with pytest.raises(LookupError, match="no node of the Ray cluster has 4 GPU"):
        placer.place(4)


def test_a_dead_node_is_forgotten():
    placer = Placer([Node("a", "h", 4, 0), Node("b", "h2", 4, 0)])
    placer.place(0)
    placer.refresh([Node("b", "h2", 4, 0)])
    assert list(placer.nodes) == ["b"] and placer.nodes["b"].cpu_cells in (0, 1)


# -- on a real local Ray cluster ------------------------------------------------------------------


@pytest.fixture(scope="module")
def local_ray():
    ray = require("ray")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_a_ray_run_gives_the_same_cells_as_the_local_runner(three_cell_reference, local_ray, tmp_path):
    from benchbed.run.ray_backend import run_scenario_ray

    path, whole = three_cell_reference
    outcome = run_scenario_ray(plan.load(str(path)), tmp_path / "ray", progress=False, log=lambda m: None)
    assert outcome.lost == [] and len(outcome.finished) == 3
    pd.testing.assert_frame_equal(view(tmp_path / "ray"), view(whole))
    cells = pd.read_parquet(tmp_path / "ray" / store.CELLS)
    assert set(cells["host"]) == {socket.gethostname()} and set(cells["device_name"]) == {cpu_model()}
    meta = json.loads((tmp_path / "ray" / store.RUN_JSON).read_text())
    assert meta["backend"] == "ray" and meta["ray"]["cpu_cells_per_node"] == 1
    assert len(pd.read_parquet(tmp_path / "ray" / store.CURVES)) == len(pd.read_parquet(whole / store.CURVES))
    # one CPU cell per node: the cells' processes never overlapped in time
    spans = sorted(
        zip(pd.to_datetime(cells["started_at"]), pd.to_datetime(cells["finished_at"]), strict=True)
    )
    assert all(end <= nxt for (_, end), (nxt, _) in zip(spans, spans[1:], strict=False))


def cell_processes(marker: str) -> list[int]:
    """pids of processes whose command line holds ``marker`` (this test's own cells only)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def parent_of(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


@pytest.mark.slow
def test_killing_a_ray_worker_mid_cell_leaves_a_resumable_directory(three_cell_reference, tmp_path):
    require("ray")
    path, whole = three_cell_reference
    out = tmp_path / "killed"
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    command = [
        sys.executable,
        "-m",
        "benchbed.cli",
        "run",
        str(path),
        "--backend",
        "ray",
        "--out",
        str(out),
        "--quiet",
    ]
    driver = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    victim = None
    deadline = time.time() + 300
    while time.time() < deadline and victim is None and driver.poll() is None:
        run_id = store.read_run_json(out).get("run_id") if (out / store.RUN_JSON).is_file() else None
        if run_id and len(store.read_parts(out)) >= 1:
            cells = [
                p
                for p in cell_processes(f"benchbed-ray-{run_id}-")
                if "benchbed.worker" in Path(f"/proc/{p}/cmdline").read_text(errors="replace")
            ]
            if cells:
                victim = cells[0]
        time.sleep(0.05)
    assert victim is not None, "no cell was caught running"
    worker = parent_of(victim)  # the Ray worker process running the task
    os.kill(worker, signal.SIGKILL)
    _, stderr = driver.communicate(timeout=300)
    assert driver.returncode == 1, stderr
    assert "lost with their Ray worker; run again to resume" in stderr
    time.sleep(0.5)
    assert not cell_processes(f"benchbed-ray-{run_id}-"), "a cell outlived its Ray worker"
    survivors = {cid: row["started_at"] for cid, row in store.read_parts(out).items()}
    assert 1 <= len(survivors) == len(pd.read_parquet(out / store.CELLS)) < 3
    assert not [p for p in (out / store.PARTS).iterdir() if p.name.startswith(".")]  # nothing half written

    rerun = subprocess.run(command, capture_output=True, text=True, env=env)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{len(survivors)} cell(s) already done" in rerun.stderr
    after = {cid: row["started_at"] for cid, row in store.read_parts(out).items()}
    assert all(after[cid] == ts for cid, ts in survivors.items())  # nothing trained twice
    pd.testing.assert_frame_equal(view(out), view(whole))
