"""`benchbed report` and the figure helpers it shares with the dashboard (hand-computed values)."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pandas as pd
import pytest
from fixtures.results_fixture import build_kernels_parquet, build_results_dir

from benchbed.present import display, figures, report_html
from benchbed.present.format import format_value


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    directory = build_results_dir(tmp_path_factory.mktemp("report") / "run-a", seeds=3)
    build_kernels_parquet(directory)
    return directory


def test_report_is_one_self_contained_page(run_dir, tmp_path, capsys):
    out = tmp_path / "report.html"
    assert report_html.cli_main([str(run_dir), "--html", str(out)]) == 0
    assert capsys.readouterr().err == ""
    page = out.read_text()
    assert page.startswith("<!DOCTYPE html>")
    # plotly.js is inlined exactly once, and nothing is fetched from a CDN
    assert page.count("plotly.js v") == 1
    assert "<script src=" not in page
    for section in ("Leaderboard", "Curves", "Pareto fronts", "Telemetry", "Kernels"):
        assert f"<h2>{section}</h2>" in page
    assert "adamw+bf16_autocast" in page and "copy_markov" in page


def test_report_shows_bad_inputs_as_error_boxes_and_exits_2(run_dir, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    corrupt = tmp_path / "corrupt"
    shutil.copytree(run_dir, corrupt)
    (corrupt / "curves.parquet").write_bytes(b"garbage")
    out = tmp_path / "report.html"
    assert report_html.cli_main([str(empty), str(run_dir), str(corrupt), "--html", str(out)]) == 2
    stderr = capsys.readouterr().err.strip().splitlines()
    assert len(stderr) == 2 and all(line.startswith("benchbed report: ") for line in stderr)
    page = out.read_text()
    assert page.count('<div class="error">') == 2
    assert str(corrupt / "curves.parquet") in page and str(empty) in page
    assert "<h2>Curves</h2>" in page  # the good directory is still reported


def test_report_cannot_write_is_bad_input(run_dir, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert report_html.cli_main([str(run_dir), "--html", str(blocker / "sub" / "r.html")]) == 2
    assert "cannot write" in capsys.readouterr().err


def test_pareto_front_by_hand():
    points = pd.DataFrame(
        {"t": [1.0, 2.0, 3.0, 2.5, math.nan, math.inf], "e": [10.0, 5.0, 1.0, 6.0, 0.1, 0.1]},
        index=list("abcdef"),
    )
    # d (2.5, 6) is beaten by b (2, 5); NaN and not-reached (inf) are never on the front
    assert list(figures.pareto_front(points, "t", "e")[lambda s: s].index) == ["a", "b", "c"]


def test_seed_band_median_and_range_by_hand():
    curves = pd.DataFrame(
        {
            "cell_id": ["s0"] * 3 + ["s1"] * 3 + ["s2"] * 2,
            "train_time_s": [0.0, 1.0, 2.0, 0.0, 1.0, 2.0, 0.0, 1.0],
            "val_loss": [4.0, 2.0, 1.0, 6.0, 4.0, 3.0, 5.0, 3.0],
        }
    )
    band = figures.seed_band(curves, "train_time_s", points=3).set_index("train_time_s")
    assert band.loc[0.0, ["median", "low", "high", "n"]].tolist() == [5.0, 4.0, 6.0, 3]
    assert band.loc[1.0, ["median", "low", "high", "n"]].tolist() == [3.0, 2.0, 4.0, 3]
    # s2 ends at t=1: at t=2 only two seeds count
    assert band.loc[2.0, ["median", "low", "high", "n"]].tolist() == [2.0, 1.0, 3.0, 2]


def test_downsample_keeps_extremes_and_bounds_size():
    t = np.arange(100_000, dtype=float)
    power = np.sin(t / 500.0)
    power[31_337] = 50.0  # one spike a plain stride would miss
    frame = pd.DataFrame({"cell_id": "c", "t_s": t, "power_w": power})
    small = figures.downsample_minmax(frame, "t_s", ["power_w"], max_points=1000)
    assert len(small) <= 1000
    assert small["power_w"].max() == 50.0 and small["power_w"].min() == power.min()
    assert small["t_s"].is_monotonic_increasing


def test_not_measured_is_never_zero():
    cells = pd.DataFrame(
        {
            "energy_to_target_j": [math.nan, math.nan],
            "energy_source": ["unavailable"] * 2,
            "time_to_target_s": [1.0, math.nan],
        }
    )
    assert figures.not_measured_reason(cells, "energy_to_target_j") == (
        "not measured: no energy sensor on this machine (energy_source = unavailable)"
    )
    assert figures.not_measured_reason(cells, "time_to_target_s") is None
    shown = display.display_table(cells, cells)
    assert shown["energy_to_target_j"].tolist() == ["not measured", "not measured"]
    assert shown["time_to_target_s"].tolist() == ["1", "not reached"]
    assert format_value(math.inf, "time_to_target_s") == "not reached"


def test_kernel_speedup_is_reference_over_backend():
    kernels = pd.DataFrame(
        {
            "op": ["rms_norm"] * 3,
            "backend": ["reference", "triton", "triton"],
            "shape": ["8x64", "8x64", "16x64"],
            "dtype": ["float32"] * 3,
            "mode": ["fwd"] * 3,
            "median_ms": [3.0, 1.5, 1.0],
            "device": ["cuda:0"] * 3,
        }
    )
    speedups = figures.kernel_speedups(kernels).set_index("shape")["speedup"]
    assert speedups["8x64"] == 2.0
    assert math.isnan(speedups["16x64"])  # no reference measured at that shape: no speedup, not 0


def test_category_filter_uses_the_technique_registry():
    cells = pd.DataFrame(
        {
            "techniques": ["adamw", "adamw+bf16_autocast", "activation_checkpointing+adamw"],
            "is_baseline": [True, False, False],
        }
    )
    assert display.technique_categories("activation_checkpointing+adamw") == [
        "compute/optimizer",
        "memory/rematerialization",
    ]
    kept = display.filter_cells(cells, categories=["memory/precision"])
    assert kept["techniques"].tolist() == ["adamw", "adamw+bf16_autocast"]


def test_category_filter_reads_a_categories_column_before_the_registry(monkeypatch):
    cells = pd.DataFrame(
        {
            "techniques": ["adamw", "adamw+bf16_autocast", "activation_checkpointing+adamw", "adamw+lion"],
            "categories": ["compute/optimizer", "compute/optimizer+memory/precision", "made/up", None],
            "is_baseline": [True, False, False, False],
        }
    )
    looked_up = []
    real = display._technique_registry

    def counting_registry():
        looked_up.append(True)
        return real()

    monkeypatch.setattr(display, "_technique_registry", counting_registry)
    # the column wins where it has a value ("made/up" is not what the registry says) ...
    assert display.filter_cells(cells, categories=["made/up"])["techniques"].tolist() == [
        "adamw",
        "activation_checkpointing+adamw",
    ]
    # ... and the registry answers only for the cell without one (results written before the column)
    assert display.category_choices(cells) == [
        "compute/optimizer",
        "made/up",
        "memory/precision",
    ]
    assert looked_up
    looked_up.clear()
    with_column = cells.dropna(subset=["categories"])
    kept = display.filter_cells(with_column, categories=["memory/precision"])
    assert kept["techniques"].tolist() == ["adamw", "adamw+bf16_autocast"]
    assert not looked_up  # every cell had its categories: no registry import


def test_telemetry_panels_group_by_unit_and_skip_sampler_bookkeeping():
    frame = pd.DataFrame(
        {
            "cell_id": ["c"] * 2,
            "t_s": [0.0, 0.1],
            "sample_lag_s": [0.001, 0.002],
            "in_window": [False, True],
            "rss_bytes": [1.0, 2.0],
            "gpu0_util_pct": [50.0, 60.0],
            "gpu0_power_w": [100.0, 110.0],
            "gpu0_mem_used_bytes": [3.0, 4.0],
            "run_dir": ["d", "d"],
        }
    )
    assert figures.telemetry_quantities(frame) == {
        "power (W)": ["gpu0_power_w"],
        "memory (GiB)": ["rss_bytes", "gpu0_mem_used_bytes"],
        "utilisation (%)": ["gpu0_util_pct"],
    }


def test_report_says_energy_was_not_measured_instead_of_zero(tmp_path):
    run = build_results_dir(tmp_path / "cpu", seeds=2, energy_available=False, device="cpu")
    out = tmp_path / "report.html"
    assert report_html.cli_main([str(run), "--html", str(out)]) == 0
    page = out.read_text()
    assert "energy to target: not measured: no energy sensor on this machine" in page
    assert "validation loss against energy (J): not measured: no energy sensor" in page
    # the time leaderboard's energy column reads "not measured" in every row, never a number
    time_table = page.split("Leaderboard: time to target")[1].split("</table>")[0]
    assert time_table.count("<td>not measured</td>") >= 10
