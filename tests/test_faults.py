"""The fault matrix: each fault planted into real runs of tiny lm-tiny cells through the command line.

Faults: a cell killed by SIGKILL, a cell whose loss turns NaN, a cell out of memory, a cell past its
timeout, the runner killed (SIGKILL) mid-cell and mid-write, Ctrl-C and SIGTERM, a second runner on
the same directory, disk full (a real full tmpfs where this process may mount one, and an injected
ENOSPC everywhere), damaged parts and run.json. After each: no healthy result lost, none
duplicated, statuses and exit codes say what happened, and a resume completes the matrix.

Faults are planted through a ``sitecustomize`` on PYTHONPATH (runner and cells both load it),
steered by files in a fault directory: ``cell-<seed>`` holds what the cell of that seed does at
start (``sigkill``, ``nan``, ``memoryerror``, ``sleep``, ``enospc``, ``fill:PATH``), ``enospc``
(also created by a cell) makes every rename fail with ENOSPC, ``kill-runner-at-write`` kills the runner as it renames cells.parquet
into place. Removing a file disarms it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest

from benchbed import plan
from benchbed.results import store
from benchbed.results.schema import CURVE_COLUMN_NAMES, new_row, now_iso
from benchbed.run.runner import run_scenario

pytestmark = pytest.mark.slow

HOOK = r"""
import errno, json, os, signal, sys, time

FAULTS = os.environ.get("BENCHBED_TEST_FAULTS", "")


IS_CELL = len(sys.argv) > 2 and sys.argv[-2].endswith(".json")  # python -m benchbed.worker SPEC OUT


def _armed(name):
    return FAULTS and os.path.exists(os.path.join(FAULTS, name))


def _wrap(fn):
    def wrapped(src, dst, *args, **kwargs):
        if _armed("enospc") or (IS_CELL and _armed("enospc-in-cells")):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
        if _armed("kill-runner-at-write") and str(dst).endswith("cells.parquet"):
            parts = os.path.join(os.path.dirname(str(dst)), "parts")
            if os.path.isdir(parts) and any(not p.startswith(".") for p in os.listdir(parts)):
                os.kill(os.getpid(), signal.SIGKILL)  # after the temp file is written, before the rename
        return fn(src, dst, *args, **kwargs)
    return wrapped


if FAULTS:
    os.rename, os.replace = _wrap(os.rename), _wrap(os.replace)
    if IS_CELL:
        seed = json.load(open(sys.argv[-2]))["seed"]
        action_file = os.path.join(FAULTS, f"cell-{seed}")
        action = open(action_file).read().strip() if os.path.exists(action_file) else ""
        if action == "sigkill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif action == "memoryerror":
            sys.stderr.write("MemoryError: planted\n"); sys.stderr.flush(); os._exit(1)
        elif action == "sleep":
            time.sleep(3600)
        elif action == "nan":
            import torch.nn.functional as F
            cross_entropy = F.cross_entropy
            F.cross_entropy = lambda *a, **k: cross_entropy(*a, **k) * float("nan")
        elif action in ("enospc", "enospc-in-cells"):  # from now on every rename fails (in cells)
            open(os.path.join(FAULTS, action), "w").close()
        elif action.startswith("fill:"):  # write until the disk is full, to the last byte
            with open(action[5:], "wb", buffering=0) as f:
                for size in (1 << 16, 1 << 12, 1):
                    try:
                        while True:
                            f.write(b"\0" * size)
                    except OSError:
                        pass
"""

SCENARIO = """
name = "faults"
workload = "lm-tiny"
device = "cpu"
seeds = {seeds}
target_loss = 0.5
eval_every_tokens = 8064
stop_at_target = false
timeout_s = 120
[budget]
steps = 4
"""


@pytest.fixture
def rig(tmp_path):
    """(scenario path, fault directory, results directory, env for the command line)."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(HOOK)
    faults = tmp_path / "faults"
    faults.mkdir()
    env = {
        **os.environ,
        "PYTHONPATH": str(hook),
        "BENCHBED_TEST_FAULTS": str(faults),
        "BENCHBED_THREADS": "1",
    }

    def scenario(seeds: str = "[0, 1]") -> str:
        path = tmp_path / "faults.toml"
        path.write_text(textwrap.dedent(SCENARIO.format(seeds=seeds)))
        return str(path)

    return scenario, faults, tmp_path / "out", env


def seed_parts(out: Path, path: str, seeds: list[int]) -> dict[int, str]:
    """Finished parts for these seeds, written as a cell would, without training: the healthy
    results a fault must not lose (trained cells cost seconds each; the faults are the point)."""
    done = {}
    for cell in plan.load(path).cells:
        if cell.seed in seeds:
            row = new_row(
                **cell.identity(), run_id="seeded", status="budget_exhausted", started_at=now_iso(),
                final_val_loss=3.0, best_val_loss=3.0, steps=4.0, threads=1,
            )  # fmt: skip
            curves = pd.DataFrame([{"cell_id": cell.cell_id, "step": 4, "tokens": 8064, "train_time_s": 0.1}])
            curves = curves.reindex(columns=CURVE_COLUMN_NAMES)
            store.write_part(out, cell.cell_id, row, curves, None)
            done[cell.seed] = row["started_at"]
    return done


def cli(env, *args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "benchbed.cli", *args], capture_output=True, text=True, env=env, **kw
    )


def start(env, *args) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "benchbed.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def rows(out: Path) -> pd.DataFrame:
    return pd.read_parquet(out / "cells.parquet").set_index("seed").sort_index()


def started(out: Path) -> dict[int, str]:
    return {int(row["seed"]): row["started_at"] for row in store.read_parts(out).values()}


def workers(out: Path) -> str:
    return subprocess.run(
        ["pgrep", "-f", f"benchbed.worker .* {out}$"], capture_output=True, text=True
    ).stdout


def wait_for(condition, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, "timed out waiting"
        time.sleep(0.05)


def last_line(text: str) -> str:
    return text.strip().splitlines()[-1]


def assert_whole(out: Path, seeds: list[int]) -> None:
    """Every cell exactly once in the table and in parts/, nothing half-written left behind."""
    cells = pd.read_parquet(out / "cells.parquet")
    assert sorted(cells["seed"]) == seeds and cells["cell_id"].is_unique
    assert sorted(started(out)) == seeds
    strays = [p.name for p in out.iterdir() if p.name.endswith(".tmp") or p.name.startswith(".spec-")]
    strays += [p.name for p in (out / "parts").iterdir() if p.name.startswith(".") and p.name != ".corrupt"]
    assert strays == []
    assert workers(out) == ""


def test_cell_faults_get_truthful_statuses_exit_codes_and_resumes(rig):
    scenario, faults, out, env = rig
    path = scenario("[0, 1, 2, 3]")
    (faults / "cell-1").write_text("sigkill")
    (faults / "cell-2").write_text("nan")
    (faults / "cell-3").write_text("memoryerror")
    seed_parts(out, path, [0])
    first = cli(env, "run", path, "--out", str(out), "--quiet")
    assert first.returncode == 1, first.stderr
    status = rows(out)["status"].to_dict()
    assert status == {0: "budget_exhausted", 1: "killed", 2: "diverged", 3: "oom"}
    errors = rows(out)["error"]
    assert "killed by SIGKILL from outside the cell" in errors[1]
    assert "training loss nan" in errors[2] and "out of memory (its stderr says so)" in errors[3]
    assert last_line(first.stderr).startswith(
        "benchbed: 2 of 4 cell(s) produced no measurement (1 killed, 1 oom)"
    )
    before = started(out)

    for f in faults.iterdir():
        f.unlink()  # the faults are gone: a resume runs the killed cell only (oom is the cell's outcome)
    plain = cli(env, "run", path, "--out", str(out), "--quiet")
    assert plain.returncode == 1 and "1 of 4 cell(s) produced no measurement (1 oom)" in plain.stderr
    after = started(out)
    assert {s for s in before if after[s] != before[s]} == {1}
    assert rows(out).loc[1, "status"] == "budget_exhausted"

    retry = cli(env, "run", path, "--out", str(out), "--quiet", "--retry-failed")
    assert retry.returncode == 0, retry.stderr
    assert {s for s in after if started(out)[s] != after[s]} == {3}
    assert rows(out)["status"].to_dict() == {
        0: "budget_exhausted",
        1: "budget_exhausted",
        2: "diverged",
        3: "budget_exhausted",
    }
    assert_whole(out, [0, 1, 2, 3])


def test_timeout_is_recorded_and_a_resume_exits_1_until_retried(rig):
    scenario, faults, out, env = rig
    path = scenario("[0]")
    sc = plan.load(path)
    sc.cells[0] = type(sc.cells[0])(**{**sc.cells[0].__dict__, "timeout_s": 1.0})
    (faults / "cell-0").write_text("sleep")
    run_scenario(sc, out, cell_env=env, progress=False, log=lambda m: None)
    assert rows(out).loc[0, "status"] == "timeout" and workers(out) == ""
    (faults / "cell-0").unlink()
    resumed = cli(env, "run", path, "--out", str(out), "--quiet")  # nothing to run: the table says timeout
    assert resumed.returncode == 1 and "(1 timeout)" in last_line(resumed.stderr)
    retried = cli(env, "run", path, "--out", str(out), "--quiet", "--retry-failed")
    assert retried.returncode == 0 and rows(out).loc[0, "status"] == "budget_exhausted"
    assert_whole(out, [0])


def test_runner_killed_mid_write_leaves_nothing_half_written(rig):
    scenario, faults, out, env = rig
    path = scenario("[0, 1]")
    first = seed_parts(out, path, [0])
    (faults / "kill-runner-at-write").write_text("")
    killed = cli(env, "run", path, "--out", str(out), "--quiet")
    assert killed.returncode == -signal.SIGKILL
    assert list(out.glob(".cells.parquet.*.tmp")), "the kill was meant to land mid-write"
    assert started(out) == first
    (faults / "kill-runner-at-write").unlink()
    resumed = cli(env, "run", path, "--out", str(out), "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    assert "removed (left by an interrupted run)" in resumed.stderr  # the stray temp file
    assert started(out)[0] == first[0]  # the healthy cell was not trained again
    assert_whole(out, [0, 1])


def test_sigterm_sigkill_ctrl_c_and_a_second_runner_keep_what_finished(rig):
    scenario, faults, out, env = rig
    path = scenario("[0, 1]")
    (faults / "cell-1").write_text("sleep")  # seed 1 would run for an hour
    finished = seed_parts(out, path, [0])[0]
    for stop in (signal.SIGTERM, signal.SIGKILL, signal.SIGINT):
        runner = start(env, "run", path, "--out", str(out), "--quiet")
        wait_for(lambda r=runner: (out / ".lock").is_file() and str(r.pid) in (out / ".lock").read_text())
        wait_for(lambda: len(started(out)) == 1 and workers(out))  # seed 0 done, seed 1 running
        if stop == signal.SIGTERM:
            second = cli(env, "run", path, "--out", str(out), "--quiet")
            assert second.returncode == 2
            assert second.stderr.strip() == (
                f"benchbed: {out}: another benchbed run is writing here (PID {runner.pid} on "
                f"{os.uname().nodename}); wait for it to finish or give this one another --out"
            )
        runner.send_signal(stop)
        _, err = runner.communicate(timeout=30)
        wait_for(lambda: workers(out) == "", timeout=5)  # the running cell never outlives its runner
        if stop == signal.SIGKILL:
            assert runner.returncode == -signal.SIGKILL
        else:
            assert runner.returncode == 128 + stop and "Traceback" not in err
            name = "Ctrl-C" if stop == signal.SIGINT else "SIGTERM"
            assert last_line(err) == (
                f"benchbed: interrupted ({name}): the running cell was stopped; 1 finished cell(s) are "
                f"kept in {out}; run the same command again to resume"
            )
            assert json.loads((out / "run.json").read_text())["finished_at"]
        assert list(rows(out).index) == [0]
        assert started(out)[0] == finished  # never lost, never trained again
    (faults / "cell-1").unlink()
    resumed = cli(env, "run", path, "--out", str(out), "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    assert_whole(out, [0, 1])


def _mount_tmpfs(where: Path) -> bool:
    where.mkdir()
    if os.geteuid() != 0:
        return False
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(where)], capture_output=True
    )
    return mounted.returncode == 0


@pytest.mark.parametrize("how", ["tmpfs", "injected-everywhere", "injected-in-cells"])
def test_disk_full_is_one_line_and_a_resume_completes(rig, how, tmp_path):
    """The disk fills as seed 1 starts: on a real tmpfs where this process may mount one, else by
    an injected ENOSPC on every rename; and once only for the cell's own write (space freed by
    the time the runner writes), which must still stop the run rather than record an error row."""
    scenario, faults, out, env = rig
    path = scenario("[0, 1]")
    mount = tmp_path / "mnt"
    mounted = _mount_tmpfs(mount)
    if how == "tmpfs":
        if not mounted:
            pytest.skip("cannot mount a tmpfs here (needs root): injected-everywhere stands in")
        out = mount / "out"
        (faults / "cell-1").write_text(f"fill:{mount / 'filler'}")
    elif how == "injected-everywhere":
        if mounted:
            subprocess.run(["umount", str(mount)], capture_output=True)
            pytest.skip("the tmpfs case fills a real disk here")
        (faults / "cell-1").write_text("enospc")
    else:
        (faults / "cell-1").write_text("enospc-in-cells")
    try:
        kept = seed_parts(out, path, [0])
        done = cli(env, "run", path, "--out", str(out), "--quiet")
        code, err = done.returncode, done.stderr
        assert code == 1
        line = last_line(err)
        assert line.startswith("benchbed: ") and "cannot write results (No space left on device)" in line
        assert line.endswith(f"1 finished cell(s) are kept in {out}; run the same command again to resume")
        assert "Traceback" not in err
        assert started(out) == kept

        for f in faults.iterdir():
            f.unlink()
        (mount / "filler").unlink(missing_ok=True)
        resumed = cli(env, "run", path, "--out", str(out), "--quiet")
        assert resumed.returncode == 0, resumed.stderr
        assert started(out)[0] == kept[0]
        assert_whole(out, [0, 1])
    finally:
        if mounted:
            subprocess.run(["umount", str(mount)], capture_output=True)


def test_damaged_parts_and_run_json_are_moved_aside_and_their_cells_rerun(rig):
    scenario, faults, out, env = rig
    path = scenario("[0, 1, 2]")
    before = seed_parts(out, path, [0, 1, 2])
    parts = {int(json.loads((p / "row.json").read_text())["seed"]): p for p in (out / "parts").iterdir()}
    parts[0].joinpath("row.json").write_text('{"cell_id": "lm-tiny-adamw-s0')  # truncated
    parts[1].joinpath("curves.parquet").write_bytes(b"PAR1 not parquet at all PAR1")
    (out / "run.json").write_text("[1, 2, 3]")

    resumed = cli(env, "run", path, "--out", str(out), "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    notes = [line for line in resumed.stderr.splitlines() if "moved to" in line]
    assert len(notes) == 3, resumed.stderr
    assert any("run.json: expected a JSON object, got list" in n for n in notes)
    assert any(f"{parts[0]}: damaged (row.json" in n for n in notes)
    assert any(f"{parts[1]}: damaged (curves.parquet" in n for n in notes)
    aside = sorted(p.name.rsplit("-", 1)[0] for p in (out / "parts" / ".corrupt").iterdir())
    assert aside == sorted([parts[0].name, parts[1].name])  # kept, not deleted
    assert list(out.glob("run.json.corrupt-*"))
    after = started(out)
    assert after[2] == before[2] and after[0] != before[0] and after[1] != before[1]
    assert_whole(out, [0, 1, 2])
