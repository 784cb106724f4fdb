"""The Streamlit dashboard under streamlit.testing.v1.AppTest, on synthetic results directories."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from fixtures.results_fixture import build_kernels_parquet, build_results_dir
from streamlit.testing.v1 import AppTest

from benchbed.present import display

APP = Path(__file__).resolve().parents[1] / "dashboard" / "app.py"
VIEWS = ("Leaderboard", "Curves", "Pareto", "Telemetry", "Profiles", "Compare", "History", "Kernels")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("results")
    run_a = build_results_dir(root / "run-a", run_id="run-a", seeds=5)
    build_kernels_parquet(run_a)
    run_b = build_results_dir(root / "run-b", run_id="run-b", seeds=5, slowdown=1.3, random_seed=1)
    no_energy = build_results_dir(root / "cpu", run_id="cpu", seeds=2, energy_available=False, device="cpu")
    empty = root / "empty"
    empty.mkdir()
    corrupt = root / "corrupt"
    shutil.copytree(run_a, corrupt)
    (corrupt / "cells.parquet").write_bytes(b"PAR1 this is not a parquet file")
    old = root / "old-schema"
    shutil.copytree(run_b, old)
    run_json = json.loads((old / "run.json").read_text())
    (old / "run.json").write_text(json.dumps({**run_json, "schema_version": 0, "run_id": "old"}))
    return {"a": run_a, "b": run_b, "no_energy": no_energy, "empty": empty, "corrupt": corrupt, "old": old}


def start(monkeypatch, *dirs: Path) -> AppTest:
    monkeypatch.setenv("BENCHBED_RESULTS", os.pathsep.join(str(d) for d in dirs))
    app = AppTest.from_file(str(APP), default_timeout=60)
    app.run()
    assert not app.exception, [e.value for e in app.exception]
    return app


def show(app: AppTest, view: str) -> AppTest:
    app.sidebar.radio(key="view").set_value(view).run()
    assert not app.exception, [e.value for e in app.exception]
    return app


def test_views_are_discovered_in_order_and_the_template_is_skipped():
    from benchbed.dashboard import views

    assert tuple(view.TITLE for view in views.discover()) == VIEWS


def copy_me_view_app():
    from benchbed.dashboard import shared
    from benchbed.dashboard.views import _template

    dirs = shared.result_dirs()
    stamp = shared.files_stamp(dirs)
    data = shared.load(dirs, stamp)
    context = shared.ViewContext(data=data, cells=data.cells, dirs=dirs, stamp=stamp, filters=((),) * 6)
    _template.render(context)


def test_the_copy_me_view_renders(monkeypatch, runs):
    monkeypatch.setenv("BENCHBED_RESULTS", str(runs["a"]))
    app = AppTest.from_function(copy_me_view_app, default_timeout=60).run()
    assert not app.exception, [e.value for e in app.exception]
    assert len(app.dataframe[0].value) > 0


def test_every_view_renders_without_exception(monkeypatch, runs):
    app = start(monkeypatch, runs["a"], runs["b"])
    assert not app.error
    for view in VIEWS:
        show(app, view)
        assert not app.error, (view, [e.value for e in app.error])
    # the kernels view ends on the speedup table of the fixture's kernels.parquet
    assert "speedup" in app.dataframe[0].value.columns


@pytest.mark.parametrize(
    "choice,rank_by", [("time to target", "time_to_target_s"), ("tokens per second", "tokens_per_s")]
)
def test_leaderboard_order_is_the_statistics_modules(monkeypatch, runs, choice, rank_by):
    tables = pytest.importorskip("benchbed.analyse.tables")
    app = start(monkeypatch, runs["a"])
    app.selectbox(key="rank_by").set_value(choice).run()
    shown = app.dataframe[0].value
    expected = tables.leaderboard(display.load_for_display([runs["a"]]).cells, rank_by=rank_by)
    columns = [c for c in ("workload", "variant") if c in expected.columns]
    assert len(shown) == len(expected)
    assert shown[columns].astype(str).values.tolist() == expected[columns].astype(str).values.tolist()


def test_workload_filter_changes_the_table(monkeypatch, runs):
    pytest.importorskip("benchbed.analyse.tables")
    app = start(monkeypatch, runs["a"])
    before = app.dataframe[0].value
    assert set(before["workload"]) == {"copy_markov", "tiny_lm"}
    app.sidebar.multiselect(key="filter_workload").set_value(["tiny_lm"]).run()
    after = app.dataframe[0].value
    assert set(after["workload"]) == {"tiny_lm"}
    assert len(after) == len(before) // 2


def test_run_filter_keeps_one_runs_cells(monkeypatch, runs):
    pytest.importorskip("benchbed.analyse.tables")
    app = start(monkeypatch, runs["a"], runs["b"])
    assert set(app.dataframe[0].value["reached"]) <= {"10/10", "0/10"}  # seeds of both runs pooled
    app.sidebar.multiselect(key="filter_run").set_value(["run-b"]).run()
    assert set(app.dataframe[0].value["reached"]) <= {"5/5", "0/5"}


def test_category_filter_keeps_matching_techniques_and_the_baseline(monkeypatch, runs):
    pytest.importorskip("benchbed.analyse.tables")
    app = start(monkeypatch, runs["a"])
    app.sidebar.multiselect(key="filter_category").set_value(["memory/precision"]).run()
    variants = set(app.dataframe[0].value["variant"])
    # bf16_autocast is memory/precision; adamw stays as the baseline; lion and checkpointing alone go
    assert variants == {"adamw", "adamw+bf16_autocast", "activation_checkpointing+adamw+bf16_autocast"}


def test_bad_directories_show_their_errors_and_the_rest_is_still_shown(monkeypatch, runs):
    app = start(monkeypatch, runs["empty"], runs["a"], runs["corrupt"], runs["b"], runs["old"])
    errors = [e.value for e in app.error]
    assert len(errors) == 3, errors
    assert any(str(runs["empty"]) in e and "empty" in e for e in errors)
    assert any(str(runs["corrupt"] / "cells.parquet") in e for e in errors)
    assert any(str(runs["old"] / "run.json") in e and "schema_version" in e for e in errors)
    # the good runs are still there: two runs in the sidebar, their cells in the leaderboard
    assert "2 run(s)" in app.sidebar.caption[0].value
    assert len(app.dataframe) == 0 or len(app.dataframe[0].value) > 0


def test_tables_missing_columns_or_an_odd_run_json_are_one_error_each(monkeypatch, runs, tmp_path):
    import pandas as pd

    no_variant = tmp_path / "no-variant"
    shutil.copytree(runs["a"], no_variant)
    pd.read_parquet(no_variant / "cells.parquet").drop(columns=["variant"]).to_parquet(
        no_variant / "cells.parquet"
    )
    no_val_loss = tmp_path / "no-val-loss"
    shutil.copytree(runs["a"], no_val_loss)
    pd.read_parquet(no_val_loss / "curves.parquet").drop(columns=["val_loss"]).to_parquet(
        no_val_loss / "curves.parquet"
    )
    listed = tmp_path / "run-json-list"
    shutil.copytree(runs["a"], listed)
    (listed / "run.json").write_text("[1, 2]")
    app = start(monkeypatch, no_variant, runs["b"], no_val_loss, listed)
    errors = [e.value for e in app.error]
    assert len(errors) == 3, errors
    assert any(f"{no_variant / 'cells.parquet'}: column variant missing" in e for e in errors)
    assert any(f"{no_val_loss / 'curves.parquet'}: column val_loss missing" in e for e in errors)
    assert any(f"{listed / 'run.json'}: expected a JSON object, got list" in e for e in errors)
    assert "1 run(s)" in app.sidebar.caption[0].value  # the good run is still shown


def test_energy_without_a_sensor_reads_not_measured(monkeypatch, runs):
    app = start(monkeypatch, runs["no_energy"])
    # ranked by time, the energy column says why it is empty
    assert any("no energy sensor on this machine" in c.value for c in app.caption)
    assert set(app.dataframe[0].value["energy to target (J)"]) == {"not measured"}
    app.selectbox(key="rank_by").set_value("energy to target").run()
    warnings = [w.value for w in app.warning]
    assert any("not measured: no energy sensor on this machine" in w for w in warnings), warnings
    show(app, "Pareto")
    assert any("not measured" in w for w in (w.value for w in app.warning))


def test_compare_shows_the_gates_verdict_per_cell(monkeypatch, runs):
    gate = pytest.importorskip("benchbed.analyse.gate")
    app = start(monkeypatch, runs["a"], runs["b"])
    show(app, "Compare")
    per_cell = app.dataframe[0].value
    cells = display.load_for_display([runs["a"], runs["b"]]).cells
    expected = gate.compare(cells[cells["run_id"] == "run-a"], cells[cells["run_id"] == "run-b"])
    time_verdicts = expected[expected["metric"] == "time_to_target_s"].set_index(["workload", "variant"])[
        "verdict"
    ]
    shown = per_cell.set_index(["workload", "variant"])["time_to_target_s"]
    assert shown.sort_index().to_dict() == time_verdicts.sort_index().to_dict()
    # a 30% slowdown over 5 seeds is a regression for every reached configuration
    assert (time_verdicts.drop(index="lion", level="variant") == "regression").all()


def test_a_kernels_only_directory_opens_on_the_kernels_view(monkeypatch, tmp_path):
    build_kernels_parquet(tmp_path)
    app = start(monkeypatch, tmp_path)
    assert not app.error
    speedups = app.dataframe[0].value.set_index(["op", "shape"])["speedup"]
    # the fixture's rms_norm at the smallest shape: 0.40 ms reference, triton 2.5x faster
    assert speedups[("rms_norm", "4x1024x768")] == "2.5"


def test_no_directory_given_is_an_error(monkeypatch):
    monkeypatch.delenv("BENCHBED_RESULTS", raising=False)
    app = AppTest.from_file(str(APP), default_timeout=60).run()
    assert any("benchbed dashboard DIR" in e.value for e in app.error)
