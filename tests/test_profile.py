"""Profiler traces: the [profile] table, a trace recorded after the cell's row (never on its clock)
that parses as JSON, `benchbed profile` on a cell already run, and the dashboard's link to it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from benchbed import plan
from benchbed.analyse import traces
from benchbed.results import store
from benchbed.results.schema import new_row
from benchbed.worker import profile

if TYPE_CHECKING:  # the dashboard's packages are not on a GPU image; only the dashboard tests need them
    from streamlit.testing.v1 import AppTest

APP = Path(__file__).resolve().parents[1] / "dashboard" / "app.py"


def cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "benchbed.cli", *args], capture_output=True, text=True, **kw)


@pytest.mark.parametrize(
    "table, error",
    [
        (
            "[profile]\nstepz = 3\n",
            "profile.stepz: unknown key (did you mean 'steps'?) (steps, warmup, memory, only)",
        ),
        ("[profile]\nsteps = 0\n", "profile.steps: must be positive, got 0"),
        ("[profile]\nwarmup = -1\n", "profile.warmup: must be >= 0, got -1"),
        ("[profile]\nmemory = 1\n", "profile.memory: expected true or false, got int 1"),
        ("grid_intensity_g_per_kwh = -5\n", "grid_intensity_g_per_kwh: must be a finite number >= 0, got -5"),
    ],
)
def test_a_bad_profile_table_is_one_line_naming_the_field(tiny_scenario, table, error):
    top, _, rest = table.partition("[profile]")
    path = tiny_scenario(extra=(f"[profile]{rest}" if "[profile]" in table else ""))
    if top:  # a top-level key goes before the tables
        text = Path(path).read_text()
        Path(path).write_text(top + text)
    with pytest.raises(plan.ScenarioError) as info:
        plan.load(path)
    assert str(info.value) == f"{path}: {error}"


def test_profile_settings_reach_only_the_matching_cells_and_change_no_identity(tiny_scenario):
    plain = plan.load(tiny_scenario())
    profiled = plan.load(tiny_scenario(extra='[profile]\nsteps = 3\nonly = "*activation*"\n'))
    assert [c.cell_id for c in plain.cells] == [c.cell_id for c in profiled.cells]  # not the configuration
    assert [c.config_key for c in plain.cells] == [c.config_key for c in profiled.cells]
    chosen = {c.cell_id: c.profile for c in profiled.cells}
    assert all(v == {"steps": 3, "warmup": 2, "memory": True} for k, v in chosen.items() if "activation" in k)
    assert all(v == {} for k, v in chosen.items() if "activation" not in k)
    spec = profiled.cells[-1].to_spec()
    assert plan.Cell.from_spec(spec).profile == profiled.cells[-1].profile


def test_a_profile_that_would_pass_the_timeout_is_skipped_not_run(tmp_path):
    spec = {"cell_id": "c", "timeout_s": 20}
    store.write_part(tmp_path, "c", new_row(cell_id="c", status="reached"), None, None)
    started = time.perf_counter() - 15  # 15 of the cell's 20 s are gone
    row = {"steps": 10, "train_time_s": 2.0, "warmup_time_s": 1.0}  # ~0.2 s a step: ~13 s to profile
    meta = profile.add_profile(tmp_path, spec, {"steps": 5, "warmup": 2, "memory": True}, row, started)
    assert "would run past the cell's timeout" in meta["skipped"]
    saved = json.loads((tmp_path / store.PARTS / "c" / "profile" / "profile.json").read_text())
    assert saved == meta and not (tmp_path / store.PARTS / "c" / "profile" / "trace.json").exists()
    assert store.read_parts(tmp_path)["c"]["cell_id"] == "c"  # the row is untouched


def synthetic_profile(directory: Path, cell_id: str) -> Path:
    row = new_row(cell_id=cell_id, run_id="p", config_key="k", status="reached")
    store.write_part(directory, cell_id, row, None, None)
    store.consolidate(directory)
    (directory / store.RUN_JSON).write_text(json.dumps({"schema_version": 1, "run_id": "p"}))
    folder = directory / store.PARTS / cell_id / "profile"
    folder.mkdir()
    events = [{"ph": "X", "name": "aten::mm", "cat": "cpu_op", "ts": i, "dur": 10.0 + i} for i in range(4)]
    events.append({"ph": "X", "name": "aten::add", "cat": "cpu_op", "ts": 9, "dur": 3.0})
    events.append({"ph": "i", "name": "aten::mm", "cat": "cpu_op", "ts": 9, "dur": 500.0})  # not a span
    events.append({"ph": "M", "name": "process_name", "args": {"name": "python"}})
    (folder / "trace.json").write_text(json.dumps({"traceEvents": events}))
    (folder / "profile.json").write_text(json.dumps({"steps": 1}))
    return folder / "trace.json"


def test_trace_summary_sums_durations_by_name(tmp_path):
    trace = synthetic_profile(tmp_path / "r", "c1")
    summary = traces.trace_summary(trace)
    assert list(summary["name"]) == ["aten::mm", "aten::add"]
    assert summary["total_ms"].iloc[0] == pytest.approx((10 + 11 + 12 + 13) / 1000)
    assert list(summary["count"]) == [4, 1]
    (trace.parent / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json: not a JSON trace"):
        traces.trace_summary(trace.parent / "bad.json")


def open_profiles(monkeypatch, directory: Path) -> AppTest:
    monkeypatch.setenv("BENCHBED_RESULTS", str(directory))
    testing = pytest.importorskip("streamlit.testing.v1", reason="the dashboard's packages are not installed")
    app = testing.AppTest.from_file(str(APP), default_timeout=60)
    app.run()
    app.sidebar.radio(key="view").set_value("Profiles").run()
    assert not app.exception, [e.value for e in app.exception]
    return app


def assert_linked(app: AppTest, trace: Path) -> None:
    buttons = [b for b in app.get("download_button") if "trace.json" in b.proto.label]
    assert len(buttons) == 1  # the link the browser downloads the trace through
    assert any(str(trace) in m.value for m in app.markdown)


def test_the_dashboard_links_a_profile_trace(monkeypatch, tmp_path):
    trace = synthetic_profile(tmp_path / "r", "c1")
    app = open_profiles(monkeypatch, tmp_path / "r")
    assert_linked(app, trace)
    assert "aten::mm" in app.dataframe[-1].value["name"].tolist()


@pytest.mark.slow
def test_a_profiled_cell_keeps_a_trace_recorded_after_its_row(tiny_scenario, tmp_path, monkeypatch):
    path = tiny_scenario(combos='["adamw"]', seeds="[0]", extra="[profile]\nsteps = 2\nwarmup = 1\n")
    out = tmp_path / "r"
    done = cli("run", path, "--out", str(out), "--quiet")
    assert done.returncode == 0, done.stderr
    (part,) = (out / store.PARTS).iterdir()
    row = json.loads((part / "row.json").read_text())
    meta = json.loads((part / "profile" / "profile.json").read_text())
    assert meta["steps"] == 2 and meta["recorded_at"] >= row["finished_at"]  # after the timed run
    trace = json.loads((part / "profile" / "trace.json").read_text())  # parses as JSON
    names = {e.get("name") for e in trace["traceEvents"]}
    assert {"benchbed.step.0", "benchbed.step.1"} <= names and "benchbed.step.2" not in names
    assert "aten::mm" in (part / "profile" / "summary.txt").read_text()
    assert not (part / "profile" / "memory_snapshot.pickle").exists()  # CUDA only
    assert_linked(open_profiles(monkeypatch, out), part / "profile" / "trace.json")

    # `benchbed profile` on a cell already run: a separate short run, the row unchanged
    (part / "profile" / "trace.json").unlink()
    again = cli("profile", path, "--out", str(out), "--only", "*adamw*", "--steps", "1", env={**os.environ})
    assert again.returncode == 0, again.stderr
    assert json.loads((part / "profile" / "profile.json").read_text())["steps"] == 1
    assert json.loads((part / "row.json").read_text()) == row
    missing = cli("profile", path, "--out", str(tmp_path / "empty"), "--only", "*adamw*")
    assert missing.returncode == 2 and "no results yet" in missing.stdout


@pytest.mark.gpu
def test_a_cuda_cell_keeps_a_memory_snapshot_and_kernel_events(tiny_scenario, tmp_path):
    import pickle

    path = tiny_scenario(combos='["adamw"]', seeds="[0]", extra="[profile]\nsteps = 2\nwarmup = 1\n")
    out = tmp_path / "gpu"
    done = cli("run", path, "--device", "cuda", "--out", str(out), "--quiet")
    assert done.returncode == 0, done.stderr
    (part,) = (out / store.PARTS).iterdir()
    snapshot = pickle.loads((part / "profile" / "memory_snapshot.pickle").read_bytes())
    assert snapshot["segments"] and snapshot["device_traces"]  # allocations were recorded
    trace = json.loads((part / "profile" / "trace.json").read_text())
    assert any(e.get("cat") == "kernel" for e in trace["traceEvents"])  # CUDA kernels, not only CPU ops
