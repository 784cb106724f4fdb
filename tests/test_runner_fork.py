"""The fork server (run/zygote.py) with real processes: forked cells give the same results as new
interpreters, a timeout or an outside kill keeps what the cell streamed (partial) and leaves no
process behind, the readers read such a directory, and where a fork would differ the runner uses a
new interpreter and says why."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from benchbed import plan
from benchbed.present import gate_cli, report_html
from benchbed.results import store
from benchbed.run import zygote
from benchbed.run.runner import run_scenario

APP = Path(__file__).resolve().parents[1] / "dashboard" / "app.py"


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has ended; only its parent's wait is missing


@pytest.fixture
def spawned(monkeypatch):
    """Pids of the cells the fork server forks in this test."""
    pids: list[int] = []
    spawn = zygote.ForkServer.spawn

    def spy(self, *args, **kwargs):
        cell = spawn(self, *args, **kwargs)
        pids.append(cell.pid)
        return cell

    monkeypatch.setattr(zygote.ForkServer, "spawn", spy)
    return pids


def quiet(**kw):
    return {"progress": False, "log": lambda message: None, **kw}


@pytest.mark.slow
def test_forked_cells_equal_new_interpreters_bit_for_bit(tiny_scenario, tmp_path, spawned):
    sc = plan.load(tiny_scenario(seeds="[0]"))
    fork = run_scenario(sc, tmp_path / "fork", **quiet())
    new = run_scenario(sc, tmp_path / "subprocess", **quiet(launcher="subprocess"))
    a, b = (store.load(d) for d in (fork, new))
    assert set(a.cells["launcher"]) == {"fork"} and set(b.cells["launcher"]) == {"subprocess"}
    assert len(spawned) == len(sc.cells) == 2
    assert not any(alive(pid) for pid in spawned)
    columns = ["cell_id", "step", "tokens", "train_loss", "val_loss"]
    curves_a = a.curves[columns].sort_values(["cell_id", "step"]).reset_index(drop=True)
    curves_b = b.curves[columns].sort_values(["cell_id", "step"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(curves_a, curves_b)  # the same training, to the last bit
    for frame in (a.cells, b.cells):
        assert set(frame["status"]) == {"reached"} and not frame["partial"].any()
    capability = store.read_run_json(fork)["env"]["machine"]["cpu_capability"]  # recorded per run
    assert capability["torch_capability"] and set(capability["precision"]) >= {"bf16", "fp16"}


@pytest.mark.slow
def test_timeout_and_outside_kill_keep_partial_results_the_readers_read(
    tiny_scenario, tmp_path, spawned, monkeypatch
):
    combos = '["adamw", "adamw+activation_checkpointing", "adamw+layer_drop"]'
    sc = plan.load(tiny_scenario(combos=combos, seeds="[0]"))
    reached, timeout, killed = sc.cells
    long = {"budget_steps": 100_000, "stop_at_target": False}
    sc.cells[1] = dataclasses.replace(timeout, timeout_s=7.0, **long)
    sc.cells[2] = dataclasses.replace(killed, timeout_s=120.0, **long)

    def kill_the_third_cell():  # an outside SIGKILL (the OOM killer, a user) mid-training
        deadline = time.monotonic() + 120
        while len(spawned) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(5.0)
        os.kill(spawned[2], signal.SIGKILL)

    killer = threading.Thread(target=kill_the_third_cell, daemon=True)
    killer.start()
    out = run_scenario(sc, tmp_path / "res", **quiet())
    killer.join()
    results = store.load(out)
    cells = results.cells.set_index("cell_id")
    assert cells.loc[sc.cells[0].cell_id, "status"] == "reached"
    assert cells.loc[sc.cells[1].cell_id, "status"] == "timeout"
    assert cells.loc[sc.cells[2].cell_id, "status"] in ("oom", "killed")
    for cell in sc.cells[1:]:
        assert cells.loc[cell.cell_id, "partial"] and cells.loc[cell.cell_id, "launcher"] == "fork"
        curve = results.curves[results.curves["cell_id"] == cell.cell_id]
        samples = results.telemetry[results.telemetry["cell_id"] == cell.cell_id]
        assert len(curve) >= 2 and len(samples) >= 10  # streamed before the end, kept
    assert not any(alive(pid) for pid in spawned)
    assert not (out / "parts" / ".live").exists()

    # the readers on it: the report, every dashboard view, the gate
    assert report_html.cli_main([str(out), "--html", str(tmp_path / "r.html")]) == 0
    assert gate_cli.cli_main([str(out), str(out), "--markdown", str(tmp_path / "g.md")]) in (0, 1)
    monkeypatch.setenv("BENCHBED_RESULTS", str(out))
    app = AppTest.from_file(str(APP), default_timeout=60)
    app.run()
    for view in ("Leaderboard", "Curves", "Pareto", "Telemetry", "Compare"):
        app.sidebar.radio(key="view").set_value(view).run()
        assert not app.exception, (view, [e.value for e in app.exception])


@pytest.mark.slow
def test_the_fork_server_never_holds_the_results_lock_and_reports_peak_memory(
    tiny_scenario, tmp_path, spawned
):
    """The runner's results lock (run/lock.py) ends with the runner: neither the fork server nor a
    cell it forks holds its descriptor. And a forked cell's peak resident set comes back from the
    server's wait4, as a subprocess's does from the runner's."""
    sc = plan.load(tiny_scenario(combos='["adamw"]', seeds="[0]"))
    sc.cells[0] = dataclasses.replace(sc.cells[0], budget_steps=100_000, stop_at_target=False, timeout_s=6.0)
    out = tmp_path / "locked"
    lock = (out / ".lock").resolve()
    holders: dict[str, list[str]] = {}

    def fds_of(pid: int) -> list[str]:
        targets = []
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                targets.append(os.readlink(fd))
        return targets

    def look_while_the_cell_trains():
        deadline = time.monotonic() + 120
        while not spawned and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(2.0)
        # the server run_scenario started under the lock: the cell's parent
        server = int(Path(f"/proc/{spawned[0]}/stat").read_text().rsplit(")", 1)[1].split()[1])
        holders["server"] = fds_of(server)
        holders["cell"] = fds_of(spawned[0])

    looker = threading.Thread(target=look_while_the_cell_trains, daemon=True)
    looker.start()
    run_scenario(sc, out, **quiet())  # starts its fork server under the lock; the cell times out at 6 s
    looker.join()
    assert holders["server"] and holders["cell"], "looked while the server and the cell were alive"
    assert str(lock) not in holders["server"] + holders["cell"]
    (row,) = store.load(out).cells.to_dict("records")
    assert row["launcher"] == "fork" and row["status"] == "timeout"
    assert row["peak_rss_bytes"] > 50 * 2**20  # wait4 of the forked cell: torch alone is more


@pytest.mark.slow
def test_cells_with_another_environment_run_as_new_interpreters_and_start_no_server(
    tiny_scenario, tmp_path, spawned, monkeypatch
):
    started = []
    monkeypatch.setattr(zygote.ForkServer, "start", lambda self: started.append(self))
    sc = plan.load(tiny_scenario(combos='["adamw"]', seeds="[0]"))
    out = run_scenario(sc, tmp_path / "env", cell_env={"MY_HOOK": "1"}, **quiet())
    (row,) = store.load(out).cells.to_dict("records")
    assert row["launcher"] == "subprocess" and row["status"] == "reached"
    assert not spawned and not started  # no server importing torch beside the cells


def test_fork_is_refused_once_cuda_is_initialised_or_its_driver_loaded():
    assert zygote.fork_unsafe_reason(False, "7f00 r-xp /usr/lib/libtorch_cpu.so\n") is None
    assert "CUDA is initialised" in zygote.fork_unsafe_reason(True, "")
    assert "driver is loaded" in zygote.fork_unsafe_reason(False, "7f00 r-xp /usr/lib/x86_64/libcuda.so.1\n")


def test_multi_process_cells_and_other_environments_are_not_forked():
    server = zygote.ForkServer()  # not started: only the rules
    env = dict(server._env)
    assert server.unusable_for({"world_size": 2}, env) == "a multi-process cell (torchrun)"
    assert "MY_HOOK" in server.unusable_for({"world_size": 1}, {**env, "MY_HOOK": "1"})
    assert (
        server.unusable_for({"world_size": 1}, {**env, "BENCHBED_LAUNCHER": "x"}) == "fork server not started"
    )
