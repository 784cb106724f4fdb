"""The runner with real subprocesses: results files, resume, SIGKILL recovery, crashed cells."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchbed import plan
from benchbed.results import store
from benchbed.run.runner import run_scenario

pytestmark = pytest.mark.slow


def cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "benchbed.cli", *args], capture_output=True, text=True, **kw)


def started_at(out: Path) -> dict[str, str]:
    return {cid: row["started_at"] for cid, row in store.read_parts(out).items()}


def test_run_writes_results_prints_ranked_table_and_second_run_trains_nothing(tiny_scenario, tmp_path):
    path = tiny_scenario()
    out = tmp_path / "res"
    first = cli("run", path, "--out", str(out))
    assert first.returncode == 0, first.stderr
    for name in ("cells.parquet", "curves.parquet", "run.json"):
        assert (out / name).is_file()
    assert "time-to-target" in first.stdout and "activation_checkpointing+adamw" in first.stdout
    cells = pd.read_parquet(out / "cells.parquet")
    assert len(cells) == 4 and set(cells["status"]) == {"reached"}
    assert sorted(cells["techniques"].unique()) == ["activation_checkpointing+adamw", "adamw"]
    run = json.loads((out / "run.json").read_text())
    assert run["schema_version"] == 1 and "scenario_text" in run and run["env"]["torch"]
    curves = pd.read_parquet(out / "curves.parquet")
    assert set(curves["cell_id"]) == set(cells["cell_id"])

    before = started_at(out)
    second = cli("run", path, "--out", str(out))
    assert second.returncode == 0
    assert "4 cell(s) already done, 0 to run" in second.stderr
    assert started_at(out) == before  # nothing trained again
    assert len(pd.read_parquet(out / "cells.parquet")) == 4


def test_sigkill_mid_matrix_then_rerun_keeps_every_cell_exactly_once(tiny_scenario, tmp_path):
    path = tiny_scenario(seeds="[0, 1, 2]")
    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchbed.cli", "run", path, "--out", str(out), "--quiet"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )

    def running_cells() -> str:
        return subprocess.run(
            ["pgrep", "-f", f"benchbed.worker .* {out}$"], capture_output=True, text=True
        ).stdout

    deadline = time.time() + 240
    while time.time() < deadline and (len(store.read_parts(out)) < 2 or not running_cells()):
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)  # the runner only, mid-cell: its cell must die with it
    proc.wait()
    time.sleep(0.3)
    assert running_cells() == "", "a cell outlived its runner"
    survivors = started_at(out)
    assert 2 <= len(survivors) < 6
    rerun = cli("run", path, "--out", str(out), "--quiet")
    assert rerun.returncode == 0, rerun.stderr
    cells = pd.read_parquet(out / "cells.parquet")
    assert len(cells) == 6 and cells["cell_id"].is_unique
    after = started_at(out)
    assert all(after[cid] == ts for cid, ts in survivors.items())  # no completed cell trained again
    assert not [p for p in (out / "parts").iterdir() if p.name.startswith(".")]  # no half-written parts


def test_crashing_cell_is_recorded_and_the_matrix_goes_on(tiny_scenario, tmp_path):
    # a cell process that runs out of memory: seed 1 of every combination dies saying so
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import json, os, sys\n"
        "if len(sys.argv) > 1 and sys.argv[-2].endswith('.json'):\n"
        "    if json.load(open(sys.argv[-2]))['seed'] == 1:\n"
        "        sys.stderr.write('MemoryError: simulated\\n'); sys.stderr.flush()\n"
        "        os._exit(1)\n"
    )
    sc = plan.load(tiny_scenario(combos='["adamw"]'))
    out = run_scenario(
        sc, tmp_path / "crash", cell_env={"PYTHONPATH": str(hook)}, progress=False, log=lambda m: None
    )
    cells = pd.read_parquet(out / "cells.parquet").set_index("seed")
    assert cells.loc[0, "status"] == "reached"
    assert cells.loc[1, "status"] == "oom"
    assert "MemoryError: simulated" in cells.loc[1, "error"]
    assert pd.isna(cells.loc[1, "time_to_target_s"])

    # a plain resume keeps the oom cell; --retry-failed runs only it again (now without the hook)
    before = started_at(out)
    run_scenario(sc, out, progress=False, log=lambda m: None)
    assert started_at(out) == before
    run_scenario(sc, out, retry_failed=True, progress=False, log=lambda m: None)
    cells = pd.read_parquet(out / "cells.parquet").set_index("seed")
    assert cells.loc[1, "status"] == "reached"
    after = started_at(out)
    zero = next(cid for cid in before if "-s0-" in cid)
    assert after[zero] == before[zero]


def test_timeout_and_bad_data_are_recorded(tiny_scenario, tmp_path):
    from benchbed.workloads.data import write_shard

    shard = tmp_path / "data_000.bin"
    write_shard(str(shard), np.arange(20_000) % 32)
    path = tiny_scenario(
        combos='["adamw"]', seeds="[0]", extra=f'[data]\nkind = "shards"\npath = "{shard.name}"\n'
    )
    sc = plan.load(path)
    shard.write_bytes(b"\x00" * 2000)  # damaged after the load checked it: the cell records it
    with pytest.raises(plan.ScenarioError, match="header: magic is 0"):
        plan.load(path)  # (a load now refuses it up front)
    out = run_scenario(sc, tmp_path / "bad", progress=False, log=lambda m: None)
    (row,) = pd.read_parquet(out / "cells.parquet").to_dict("records")
    assert row["status"] == "error" and "header: magic is 0" in row["error"]

    sc = plan.load(tiny_scenario(combos='["adamw"]', seeds="[0]"))
    sc.cells[0] = type(sc.cells[0])(**{**sc.cells[0].__dict__, "timeout_s": 0.5})
    out = run_scenario(sc, tmp_path / "slow", progress=False, log=lambda m: None)
    (row,) = pd.read_parquet(out / "cells.parquet").to_dict("records")
    assert row["status"] == "timeout" and "timed out after 0.5 s" in row["error"]
