"""The pieces the fault matrix relies on, one at a time and without training: how a crash is
classified, the results-directory lock, file modes, what a killed writer leaves and how it is
tidied, damaged parts moved aside, and run.json read defensively."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from benchbed.results import store
from benchbed.results.schema import new_row
from benchbed.run import crash
from benchbed.run.lock import Locked, RunLock

GiB = 2**30


@pytest.mark.parametrize(
    "evidence, status, says",
    [
        (crash.Evidence(-9, timed_out=True), "timeout", ""),
        (crash.Evidence(1, "torch.OutOfMemoryError: CUDA out of memory."), "oom", "its stderr says so"),
        (crash.Evidence(1, "MemoryError"), "oom", "its stderr says so"),
        (crash.Evidence(-6, "terminate called after throwing an instance of 'std::bad_alloc'"), "oom", "stderr"),
        (crash.Evidence(-9, oom_kills=1), "oom", "OOM killer fired 1 time(s)"),
        (crash.Evidence(-9, oom_kills=0, peak_rss_bytes=23 * GiB, memory_limit_bytes=24 * GiB), "oom", "peak RSS"),
        (crash.Evidence(-9, oom_kills=0, peak_rss_bytes=1 * GiB, memory_limit_bytes=24 * GiB), "killed", "from outside"),
        (crash.Evidence(-9), "killed", "killed by SIGKILL from outside the cell (no out-of-memory message)"),
        (crash.Evidence(-15), "killed", "killed by SIGTERM"),
        (crash.Evidence(-2), "killed", "killed by SIGINT"),
        (crash.Evidence(-11), "error", "killed by SIGSEGV"),  # a fault of the cell's own
        (crash.Evidence(-6), "error", "killed by SIGABRT"),
        (crash.Evidence(1, "Traceback ... ValueError: bad"), "error", "exit code 1"),
    ],
)  # fmt: skip
def test_crash_classification_needs_evidence_for_oom(evidence, status, says):
    got, reason = crash.classify(evidence)
    assert got == status and says in reason


def test_evidence_sources_read_this_machine_or_say_nothing():
    count = crash.oom_kill_count()
    assert count is None or count >= 0
    limit = crash.memory_limit_bytes()
    assert math.isnan(limit) or limit > 2**20
    assert crash.oom_kills_since(None) is None


def test_lock_refuses_a_second_holder_naming_the_first(tmp_path):
    expected = rf"another benchbed run is writing here \(PID {os.getpid()} on "
    with RunLock(tmp_path), pytest.raises(Locked, match=expected):
        RunLock(tmp_path).acquire()
    RunLock(tmp_path).acquire().release()  # released: free again


def test_lock_dies_with_its_holder(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", f"from benchbed.run.lock import RunLock; RunLock({str(tmp_path)!r}).acquire(); "
         "print('held', flush=True); import time; time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(Locked, match=f"PID {holder.pid} on"):
        RunLock(tmp_path).acquire()
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    RunLock(tmp_path).acquire().release()  # no stale lock after a SIGKILL


def _row(cell_id: str, **values) -> dict:
    return new_row(cell_id=cell_id, status="reached", **values)


def test_results_files_respect_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        store.atomic_write_json(tmp_path / "run.json", {"a": 1})
        store.atomic_write_parquet(tmp_path / "t.parquet", pd.DataFrame({"x": [1]}))
        part = store.write_part(
            tmp_path, "c", _row("c"), pd.DataFrame({"cell_id": ["c"], "val_loss": [1.0]}), None
        )
    finally:
        os.umask(old)
    for path in (tmp_path / "run.json", tmp_path / "t.parquet", part / "row.json", part / "curves.parquet"):
        assert path.stat().st_mode & 0o777 == 0o644, path
    assert part.stat().st_mode & 0o777 == 0o755


def test_stray_temporaries_are_removed_and_a_half_swapped_part_is_restored(tmp_path):
    part = store.write_part(tmp_path, "cell-a", _row("cell-a"), None, None)
    (tmp_path / ".cells.parquet.x1y2.tmp").write_bytes(b"half")
    (tmp_path / ".spec-abc.json").write_text("{}")
    (tmp_path / "parts" / ".cell-b.q9.tmp").mkdir()
    old = tmp_path / "parts" / ".cell-a.old.1234"
    os.rename(part, old)  # killed between write_part's two renames
    notes = store.clean_stray(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["parts"]
    assert sorted(p.name for p in (tmp_path / "parts").iterdir()) == ["cell-a"]
    assert store.read_parts(tmp_path)["cell-a"]["status"] == "reached"
    assert len(notes) == 4 and any("restored" in n for n in notes)


@pytest.mark.parametrize(
    "damage, says",
    [
        (lambda p: (p / "row.json").write_text('{"cell_id": "c'), "row.json: "),
        (lambda p: (p / "row.json").write_text("[1, 2]"), "row.json: expected a JSON object, got list"),
        (lambda p: (p / "row.json").write_bytes(b"\xff\xfe"), "row.json: "),
        (lambda p: (p / "row.json").write_text('{"cell_id": "other", "status": "reached"}'), "cell_id is 'other'"),
        (lambda p: (p / "row.json").write_text('{"cell_id": "c", "status": "exploded"}'), "status 'exploded'"),
        (lambda p: (p / "curves.parquet").write_bytes(b"PAR1 garbage PAR1"), "curves.parquet: "),
        (lambda p: (p / "curves.parquet").write_bytes((p / "curves.parquet").read_bytes()[:-20]), "curves.parquet: "),
        (lambda p: pd.DataFrame({"cell_id": ["c"]}).to_parquet(p / "curves.parquet"), "column(s) val_loss missing"),
    ],
)  # fmt: skip
def test_a_damaged_part_is_moved_aside_not_deleted(damage, says, tmp_path):
    curves = pd.DataFrame({"cell_id": ["c"], "step": [0], "val_loss": [3.0]})
    part = store.write_part(tmp_path, "c", _row("c"), curves, None)
    store.write_part(tmp_path, "healthy", _row("healthy"), curves.assign(cell_id="healthy"), None)
    damage(part)
    if "row.json" in says or "cell_id" in says or "status" in says:
        assert "c" not in store.read_parts(tmp_path)  # a row that does not read back is no result
    (note,) = store.quarantine_damaged(tmp_path)
    assert note.startswith(f"{part}: damaged (") and says in note and "moved to" in note
    (moved,) = (tmp_path / "parts" / ".corrupt").iterdir()
    assert moved.name.startswith("c-") and (moved / "row.json").exists()
    assert sorted(store.read_parts(tmp_path)) == ["healthy"]
    assert store.quarantine_damaged(tmp_path) == []


@pytest.mark.parametrize(
    "content, says",
    [
        (b"[1, 2]", "expected a JSON object, got list"),
        (b'"text"', "expected a JSON object, got str"),
        (b'{"schema_version": 1, "run', "not valid JSON"),
        (b"\xff\xfe\x00", "not valid JSON"),
        (b'{"schema_version": true}', "schema_version: expected int, got bool"),
        (b'{"env": {"host": 7}}', "env.host: expected str, got int"),
        (b'{"started_at": []}', "started_at: expected str, got list"),
    ],
)
def test_run_json_is_read_defensively(content, says, tmp_path):
    (tmp_path / "run.json").write_bytes(content)
    with pytest.raises(store.StoreError, match=f"run.json: {says}"):
        store.read_run_json(tmp_path)
    note = store.quarantine_run_json(tmp_path)
    assert says in note and not (tmp_path / "run.json").exists()
    assert list(tmp_path.glob("run.json.corrupt-*"))
    assert store.read_run_json(tmp_path) == {}


def test_a_killed_cell_and_threads_are_recorded_by_the_real_launcher(tmp_path):
    """A cell the runner launches for real, killed from outside mid-way: `killed`, with its peak RSS."""
    from benchbed.run.launchers import run_cell_subprocess

    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import os, sys, time\n"
        "if len(sys.argv) > 2 and sys.argv[-2].endswith('.json'):\n"
        "    open(os.path.join(os.path.dirname(sys.argv[-2]), 'started'), 'w').close(); time.sleep(60)\n"
    )
    spec = {
        "cell_id": "c",
        "identity": {"cell_id": "c", "variant": "adamw", "seed": 0},
        "run_id": "r",
        "threads": 1,
    }

    def kill_when_started():
        deadline = time.time() + 30
        while not (tmp_path / "started").exists() and time.time() < deadline:
            time.sleep(0.02)
        out = subprocess.run(
            ["pgrep", "-f", f"benchbed.worker .* {tmp_path}$"], capture_output=True, text=True
        )
        for pid in out.stdout.split():
            os.kill(int(pid), signal.SIGKILL)

    import threading

    killer = threading.Thread(target=kill_when_started)
    killer.start()
    row = run_cell_subprocess(spec, tmp_path, 60, {"PYTHONPATH": str(hook)})
    killer.join()
    assert row["status"] == "killed" and "killed by SIGKILL from outside the cell" in row["error"]
    assert row["threads"] == 1 and row["peak_rss_bytes"] > 0
    assert json.loads((tmp_path / "parts" / "c" / "row.json").read_text())["status"] == "killed"
    assert not list(tmp_path.glob(".spec-*"))


def test_a_plain_resume_runs_killed_cells_again_and_retry_failed_the_other_failures(tiny_scenario, tmp_path):
    from benchbed import plan as planning
    from benchbed.run.runner import plan

    scenario = planning.load(tiny_scenario(combos='["adamw"]', seeds="[0, 1, 2, 3, 4]"))
    statuses = ["reached", "killed", "oom", "timeout", "error"]
    for cell, status in zip(scenario.cells, statuses, strict=True):
        store.write_part(tmp_path, cell.cell_id, new_row(**cell.identity(), status=status), None, None)
    todo, done = plan(scenario, tmp_path)
    assert [c.seed for c in todo] == [1] and [c.seed for c in done] == [0, 2, 3, 4]
    todo, done = plan(scenario, tmp_path, retry_failed=True)
    assert [c.seed for c in todo] == [1, 2, 3, 4] and [c.seed for c in done] == [0]
