"""History across commits, the gate's "last N runs" baseline, and the gate's host-kind rule."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from fixtures.results_fixture import build_results_dir

from benchbed.analyse import gate, history
from benchbed.present import gate_cli, history_cli
from benchbed.results import store

COMMITS = [("a" * 40, 1.00), ("b" * 40, 1.10), ("c" * 40, 1.25)]  # each commit slower than the last


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Three runs of main, one per commit, each 10-25% slower; written in shuffled order on disk so
    the history must order them itself."""
    root = tmp_path_factory.mktemp("history")
    dirs = {}
    for name, index in (("zz-first", 0), ("aa-second", 1), ("mm-third", 2)):
        sha, slowdown = COMMITS[index]
        dirs[index] = build_results_dir(
            root / "main" / name, run_id=f"r{index}", seeds=5, slowdown=slowdown, git_sha=sha,
            started_at=f"2026-01-0{index + 1}T00:00:00Z", git_branch="main", random_seed=index,
        )  # fmt: skip
    dirs["branch"] = build_results_dir(
        root / "main" / "topic", run_id="topic", seeds=5, git_sha="d" * 40, started_at="2026-01-04T00:00:00Z",
        git_branch="topic",
    )  # fmt: skip
    return root, dirs


def test_history_across_three_commits_shows_the_trend(runs):
    root, dirs = runs
    table = history.history(history.result_dirs([dirs[0], dirs[1], dirs[2]]))
    adamw = table[(table["variant"] == "adamw") & (table["workload"] == "tiny_lm")].sort_values("order")
    assert list(adamw["git_sha"]) == [sha for sha, _ in COMMITS]  # by time, not by name on disk
    times = adamw["time_to_target_s"].to_numpy()
    assert times[0] < times[1] < times[2]
    trend = history.trend(table, "time_to_target_s")
    row = trend[(trend["variant"] == "adamw") & (trend["workload"] == "tiny_lm")].iloc[0]
    assert row["runs"] == 3 and row["direction"] == "worse"
    assert row["change"] == pytest.approx(times[2] / times[0] - 1)
    # tokens/s: larger is better, so the same slowdown reads as worse too
    assert history.trend(table, "tokens_per_s").query("variant == 'adamw'")["direction"].eq("worse").all()
    # a configuration that never reaches: no trend, never a number
    lion = trend[trend["variant"] == "lion"]
    assert set(lion["direction"]) == {"n/a"} and lion["change"].isna().all()


def test_history_cli_prints_runs_oldest_first_and_the_trend(runs, capsys):
    root, dirs = runs
    assert history_cli.cli_main([str(root / "main"), "--branch", "main"]) == 0
    out = capsys.readouterr().out
    assert out.index("a" * 40) < out.index("b" * 40) < out.index("c" * 40)
    assert "d" * 40 not in out  # another branch
    assert "worse" in out and "+" in out


def test_the_gate_takes_the_last_n_runs_of_main_as_its_baseline(runs, tmp_path, capsys):
    root, dirs = runs
    cells, chosen = history.baseline_cells(history.result_dirs([root / "main"]), last=2, branch="main")
    assert list(chosen["git_sha"]) == ["b" * 40, "c" * 40]
    assert len(cells) == 2 * len(store.load(dirs[2]).cells)  # pooled: twice the samples
    # a candidate as fast as the first commit: not worse than the last two runs
    fast = build_results_dir(tmp_path / "fast", run_id="fast", seeds=5, random_seed=7)
    slow = build_results_dir(tmp_path / "slow", run_id="slow", seeds=5, slowdown=1.6, random_seed=8)
    base = ["--baseline-history", str(root / "main"), "--last", "2", "--branch", "main"]
    assert gate_cli.cli_main([*base, str(fast)]) == 0
    assert "baseline: the last 2 run(s) of main" in capsys.readouterr().err
    assert gate_cli.cli_main([*base, str(slow)]) == 1
    assert gate_cli.cli_main(["--baseline-history", str(root / "main"), "--branch", "nope", str(slow)]) == 2
    assert "no run of branch 'nope'" in capsys.readouterr().err


def test_the_gate_compares_only_cells_of_the_same_host_kind(tmp_path):
    base = store.load(build_results_dir(tmp_path / "a", run_id="a", seeds=5)).cells
    cand = store.load(
        build_results_dir(tmp_path / "b", run_id="b", seeds=5, slowdown=2.0, random_seed=1)
    ).cells
    assert gate.failed(gate.compare(base, cand))  # same GPU: a 2x slowdown is a regression
    other = cand.assign(device_name="NVIDIA A100-SXM4-40GB")
    comparison = gate.compare(base, other)
    assert comparison.empty  # an A100 run says nothing against an H100 baseline
    assert len(gate.unmatched(base, other)["other_host_kind"]) == base["config_key"].nunique()
    mixed = pd.concat([cand, other], ignore_index=True)  # a Ray cluster with both kinds of node
    result = gate.compare(base, mixed)
    assert set(result["host_kind"]) == {"NVIDIA H100 80GB HBM3"}
    assert (result["n_candidate"][result["metric"] == "reached"] == 5).all()


def test_history_refuses_a_folder_without_results(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(history.HistoryError, match="no results directory here"):
        history.result_dirs([tmp_path / "empty"])
    assert history_cli.cli_main([str(tmp_path / "empty")]) == 2


def test_runs_are_ordered_by_commit_time_before_start_time(tmp_path):
    old = build_results_dir(
        tmp_path / "old", run_id="old", seeds=1, git_sha="1" * 40, started_at="2026-02-01T00:00:00Z"
    )
    new = build_results_dir(
        tmp_path / "new", run_id="new", seeds=1, git_sha="2" * 40, started_at="2026-01-01T00:00:00Z"
    )
    for directory, commit_time in ((old, "2025-12-01T00:00:00Z"), (new, "2025-12-02T00:00:00Z")):
        meta = store.read_run_json(directory)
        meta["env"]["git_commit_time"] = commit_time
        store.atomic_write_json(directory / store.RUN_JSON, meta)
    # the older commit was measured later (a re-run): it stays before the newer commit
    assert list(history.runs([new, old])["run_id"]) == ["old", "new"]
    assert np.array_equal(history.runs([new, old])["order"], [0, 1])
