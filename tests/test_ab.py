"""benchbed ab: import roots per source tree, A B B A interleaving, and one real A/A run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from benchbed import ab, plan
from benchbed.analyse import gate
from benchbed.results import store

REPO = Path(__file__).resolve().parents[1]

MINI_SCENARIO = """\
name = "ab-mini"
workload = "lm-tiny"
device = "cpu"
seeds = [0]
baseline = "adamw"
target_loss = 3.40
stop_at_target = false
timeout_s = 300
eval_every_tokens = 4032

[budget]
steps = 4
"""


def fake_source(tmp_path: Path, mark: str) -> Path:
    source = tmp_path / mark
    (source / "benchbed" / "sub").mkdir(parents=True)
    (source / "techniques").mkdir()
    (source / "benchbed" / "__init__.py").write_text(f"MARK = {mark!r}\n")
    (source / "benchbed" / "sub" / "__init__.py").write_text(f"MARK = {mark + '-sub'!r}\n")
    (source / "techniques" / "__init__.py").write_text(f"MARK = {mark + '-techniques'!r}\n")
    (source / "pyproject.toml").write_text(
        '[tool.setuptools]\npackage-dir = { "benchbed" = "benchbed", "benchbed.techniques" = "techniques" }\n'
    )
    return source


def imported_marks(root: Path, cwd: Path) -> str:
    code = "import benchbed, benchbed.sub, benchbed.techniques as t; print(benchbed.MARK, benchbed.sub.MARK, t.MARK)"
    env = {**os.environ, "PYTHONPATH": str(root)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=cwd)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_import_root_runs_the_source_trees_own_mapped_packages(tmp_path):
    source = fake_source(tmp_path, "pr")
    root = ab.build_import_root(source, tmp_path / "out" / ".import" / "candidate")
    # every package comes from the source tree, also benchbed.techniques, which plain
    # PYTHONPATH=SRC would take from the installed benchbed instead
    assert imported_marks(root, tmp_path) == "pr pr-sub pr-techniques"
    # rebuilding replaces the previous root
    ab.build_import_root(fake_source(tmp_path, "main"), root)
    assert imported_marks(root, tmp_path) == "main main-sub main-techniques"
    with pytest.raises(ab.ABInputError, match="not a benchbed source tree"):
        ab.build_import_root(tmp_path / "out", tmp_path / "elsewhere")


def test_units_interleave_a_b_b_a_over_repeats(tmp_path):
    path = tmp_path / "two-seeds.toml"
    path.write_text(MINI_SCENARIO.replace("seeds = [0]", "seeds = [0, 1]"))
    scenario = plan.load(str(path))
    units = ab.interleaved_units(scenario.cells, pairs=3)
    assert [(cell.seed, cell.repeat) for cell, _ in units] == [(0, 0), (1, 0), (0, 1), (1, 1), (0, 2), (1, 2)]
    assert [order[0] for _, order in units] == ["baseline", "candidate"] * 3
    assert len({cell.cell_id for cell, _ in units}) == 6
    assert len({cell.config_key for cell, _ in units}) == 1


def test_run_ab_alternates_sides_with_their_own_import_roots(tmp_path, monkeypatch):
    import benchbed.run.runner

    calls = []

    def fake_run_scenario(scenario, out_dir, *, cell_env, cell_filter, **_):
        chosen = [c.cell_id for c in scenario.cells if cell_filter(c)]
        calls.append((Path(out_dir).name, chosen, cell_env["PYTHONPATH"].split(os.pathsep)[0]))
        return Path(out_dir)

    monkeypatch.setattr(benchbed.run.runner, "run_scenario", fake_run_scenario)
    path = tmp_path / "mini.toml"
    path.write_text(MINI_SCENARIO)
    out = tmp_path / "ab"
    main, pr = fake_source(tmp_path, "main"), fake_source(tmp_path, "pr")
    dirs = ab.run_ab(plan.load(str(path)), main, pr, out, pairs=4, log=lambda message: None)
    assert dirs == (out / "baseline", out / "candidate")
    assert [side for side, _, _ in calls] == ["baseline", "candidate", "candidate", "baseline"] * 2
    assert all(len(chosen) == 1 for _, chosen, _ in calls)
    assert {side: root for side, _, root in calls} == {
        "baseline": str((out / ".import" / "baseline").resolve()),
        "candidate": str((out / ".import" / "candidate").resolve()),
    }


def test_cli_bad_input_exits_2_naming_the_directory(tmp_path, capsys):
    path = tmp_path / "mini.toml"
    path.write_text(MINI_SCENARIO)
    argv = [str(path), "--baseline-src", str(tmp_path / "nowhere"), "--candidate-src", str(REPO)]
    assert ab.cli_main(argv + ["--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("benchbed ab: ") and "nowhere" in error and len(error.splitlines()) == 1
    argv = [str(tmp_path / "absent.toml"), "--baseline-src", str(REPO), "--candidate-src", str(REPO)]
    assert ab.cli_main(argv + ["--out", str(tmp_path / "out")]) == 2
    assert "absent.toml" in capsys.readouterr().err


@pytest.mark.slow
def test_real_a_a_run_through_ab_is_not_a_regression(tmp_path):
    """The same source tree on both sides, one 4-step cell each: two real quick runs."""
    path = tmp_path / "mini.toml"
    path.write_text(MINI_SCENARIO)
    out = tmp_path / "ab"
    argv = [str(path), "--baseline-src", str(REPO), "--candidate-src", str(REPO), "--out", str(out)]
    argv += ["--pairs", "1", "--json", str(tmp_path / "gate.json"), "--markdown", str(tmp_path / "gate.md")]
    assert ab.cli_main(argv) == 0
    base, cand = store.load(out / "baseline").cells, store.load(out / "candidate").cells
    assert len(base) == 1 and len(cand) == 1
    assert (base["status"] == "reached").all() and (cand["status"] == "reached").all()
    report = json.loads((tmp_path / "gate.json").read_text())
    verdicts = {row["metric"]: row["verdict"] for row in report["rows"]}
    assert "regression" not in verdicts.values()
    # a fixed seed on the CPU reproduces the deterministic metrics exactly
    assert verdicts["tokens_to_target"] == "ok" and verdicts["final_val_loss"] == "ok"
    assert verdicts["time_to_target_s"] == "insufficient_data"  # one sample a side: never a silent pass
    # and the same real tables with a planted 10% slowdown and 5 samples a side are caught
    slow = pd.concat([cand] * 5, ignore_index=True)
    same = pd.concat([base] * 5, ignore_index=True)
    same["time_to_target_s"] *= [0.99, 0.995, 1.0, 1.005, 1.01]
    slow["time_to_target_s"] *= [1.09, 1.095, 1.10, 1.105, 1.11]
    slow["time_to_target_s"] *= float(base["time_to_target_s"].iloc[0] / cand["time_to_target_s"].iloc[0])
    planted = gate.compare(same, slow).set_index("metric")
    assert planted.loc["time_to_target_s", "verdict"] == "regression"
