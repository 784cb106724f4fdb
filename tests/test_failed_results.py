"""Readers on a results directory with timed-out, crashed and partial cells: the report, every
dashboard view and the gate read it without a traceback, and a timed-out cell keeps the curves and
telemetry it streamed (labelled partial). The directory is built by the real store
(tests/fixtures/failed_cells.py); test_runner_fork.py makes one with the real runner."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fixtures.failed_cells import build_failed_results_dir
from streamlit.testing.v1 import AppTest

from benchbed.present import figures, gate_cli, report_html
from benchbed.results import live, store

APP = Path(__file__).resolve().parents[1] / "dashboard" / "app.py"
VIEWS = ("Leaderboard", "Curves", "Pareto", "Telemetry", "Compare")


@pytest.fixture(scope="module")
def dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("failed")
    return {
        "failed": build_failed_results_dir(root / "failed", root),
        "healthy": build_failed_results_dir(root / "healthy", root, healthy=True),
    }


def test_timed_out_cells_keep_what_they_streamed_labelled_partial(dirs):
    results = store.load(dirs["failed"])
    cells = results.cells.set_index("cell_id")
    timeout = cells[cells["status"] == "timeout"]
    crashed = cells[cells["status"].isin(["error", "oom"])]
    assert len(timeout) == 2 and len(crashed) == 2
    assert timeout["partial"].all() and crashed["partial"].all()
    assert not cells.loc[cells["status"] == "reached", "partial"].any()
    assert timeout["time_to_target_s"].isna().all()  # a partial cell's metrics stay NaN
    for cell_id in timeout.index:
        curve = results.curves[results.curves["cell_id"] == cell_id]
        samples = results.telemetry[results.telemetry["cell_id"] == cell_id]
        assert len(curve) == 4 and curve["val_loss"].notna().all()
        assert len(samples) in (300, 310)  # every whole line; the one cut by the kill is skipped
        assert samples["in_window"].dtype == bool and samples["rss_bytes"].notna().sum() > 0
    for cell_id in crashed.index:
        assert not (results.curves["cell_id"] == cell_id).any()
    assert not (dirs["failed"] / "parts" / live.LIVE).exists()  # live files gone once in the part


def test_report_writes_html_for_failed_and_partial_cells(dirs, tmp_path, capsys):
    out = tmp_path / "report.html"
    assert report_html.cli_main([str(dirs["failed"]), "--html", str(out)]) == 0, capsys.readouterr().err
    page = out.read_text()
    assert "<h2>Telemetry</h2>" in page and "timeout" in page


def test_every_dashboard_view_renders_failed_and_partial_cells(dirs, monkeypatch):
    monkeypatch.setenv("BENCHBED_RESULTS", os.pathsep.join(str(d) for d in (dirs["failed"], dirs["healthy"])))
    app = AppTest.from_file(str(APP), default_timeout=60)
    app.run()
    assert not app.exception, [e.value for e in app.exception]
    for view in VIEWS:
        app.sidebar.radio(key="view").set_value(view).run()
        assert not app.exception, (view, [e.value for e in app.exception])


@pytest.mark.parametrize(
    ("baseline", "candidate", "codes"),
    [("healthy", "failed", {1}), ("failed", "failed", {0, 1}), ("failed", "healthy", {0, 1})],
)
def test_gate_reads_failed_and_partial_cells(dirs, baseline, candidate, codes, tmp_path, capsys):
    code = gate_cli.cli_main(
        [str(dirs[baseline]), str(dirs[candidate]), "--markdown", str(tmp_path / "gate.md")]
    )
    assert code in codes, capsys.readouterr()
    assert (tmp_path / "gate.md").read_text().strip()


def test_downsample_a_quantity_sampled_at_a_slower_rate():
    # real CPU telemetry: power every sample, RSS every fifth (NaN between); once a cell had more
    # samples than a figure keeps, this raised IndexError (index 434 out of bounds for size 434)
    n = 2170
    k = np.arange(n)
    frame = pd.DataFrame(
        {
            "t_s": k / 10.0,
            "cpu_power_w": np.sin(k / 50.0),
            "rss_bytes": np.where(k % 5 == 0, 1e8 + k, np.nan),
        }
    )
    frame.loc[1005, "rss_bytes"] = 9e9  # a spike in the slow quantity
    small = figures.downsample_minmax(frame, "t_s", ["cpu_power_w", "rss_bytes"], max_points=1500)
    assert len(small) <= 1500 and small["t_s"].is_monotonic_increasing
    assert small["rss_bytes"].max() == 9e9 and small["rss_bytes"].min() == 1e8
    assert small["cpu_power_w"].min() == frame["cpu_power_w"].min()
    kept = small.dropna(subset=["rss_bytes"])
    assert (kept["t_s"].to_numpy() * 10 % 5 == 0).all()  # only real RSS samples, none invented
