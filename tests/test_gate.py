"""benchbed.analyse.gate on planted changes in synthetic cells tables, and its command line (present.gate_cli)."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from benchbed.analyse import gate
from benchbed.present import gate_cli


def make_cells(
    *,
    n_seeds: int = 5,
    n_repeats: int = 1,
    cv: float = 0.02,
    rng_seed: int = 0,
    device: str = "cpu",
    time_s: float = 10.0,
    mem_bytes: float = 100e6,
    variants: tuple[str, ...] = ("adamw",),
) -> pd.DataFrame:
    """A cells table with seeded log-normal noise of coefficient of variation ``cv`` on the noisy
    metrics; deterministic metrics depend on the seed only (as on the CPU)."""
    rng = np.random.default_rng(rng_seed)
    rows = []
    for variant in variants:
        for seed in range(n_seeds):
            for repeat in range(n_repeats):
                noise = float(np.exp(cv * rng.standard_normal()))
                tokens = 64_000.0 * (3 + seed % 2)
                rows.append(
                    {
                        "run_id": f"run{rng_seed}",
                        "cell_id": f"{variant}-s{seed}-r{repeat}-{rng_seed}",
                        "config_key": f"key-{variant}",
                        "variant": variant,
                        "techniques": variant,
                        "scenario": "gate-test",
                        "workload": "lm-tiny",
                        "device": device,
                        "seed": seed,
                        "repeat": repeat,
                        "baseline": "adamw",
                        "is_baseline": variant == "adamw",
                        "status": "reached",
                        "time_to_target_s": time_s * noise,
                        "tokens_to_target": tokens,
                        "steps_to_target": tokens / 2016.0,
                        "final_val_loss": 0.6 + 0.001 * seed,
                        "best_val_loss": 0.6 + 0.001 * seed,
                        "tokens_per_s": 20_000.0 / noise,
                        "energy_to_target_j": math.nan,
                        "energy_j": math.nan,
                        "energy_source": "unavailable",
                        "peak_mem_bytes": mem_bytes * float(np.exp(cv * rng.standard_normal())),
                    }
                )
    return pd.DataFrame(rows)


def verdicts(comparison: pd.DataFrame) -> dict[str, str]:
    return dict(zip(comparison["metric"], comparison["verdict"], strict=True))


def test_identical_tables_are_ok_and_energy_not_measured():
    cells = make_cells()
    result = verdicts(gate.compare(cells, cells.copy()))
    assert result["reached"] == "ok"
    assert result["tokens_to_target"] == "ok" and result["final_val_loss"] == "ok"
    assert result["time_to_target_s"] == "ok" and result["peak_mem_bytes"] == "ok"
    assert result["energy_to_target_j"] == "not_measured"
    assert not gate.failed(gate.compare(cells, cells.copy()))


def test_planted_ten_percent_slowdown_is_a_regression():
    base = make_cells(rng_seed=1)
    cand = make_cells(rng_seed=2)
    cand["time_to_target_s"] *= 1.10
    cand["tokens_per_s"] /= 1.10
    comparison = gate.compare(base, cand)
    result = verdicts(comparison)
    assert result["time_to_target_s"] == "regression"
    assert result["tokens_per_s"] == "regression"
    row = comparison.set_index("metric").loc["time_to_target_s"]
    assert row["ratio"] == pytest.approx(1.10, rel=0.05) and row["p_value"] < 0.01
    assert result["tokens_to_target"] == "ok"  # the same work, only slower


def test_planted_memory_growth_is_a_regression_but_small_growth_is_not():
    base = make_cells(rng_seed=1)
    grown = make_cells(rng_seed=2)
    grown["peak_mem_bytes"] *= 1.20
    assert verdicts(gate.compare(base, grown))["peak_mem_bytes"] == "regression"
    slightly = make_cells(rng_seed=2)
    slightly["peak_mem_bytes"] *= 1.05  # under the 10% memory threshold, though significant
    assert verdicts(gate.compare(base, slightly))["peak_mem_bytes"] == "ok"


def test_exactly_repeatable_memory_growth_is_a_regression():
    base = make_cells(rng_seed=1)
    cand = make_cells(rng_seed=2)
    base["peak_mem_bytes"] = 100e6  # the same allocation every run: ties within each side
    cand["peak_mem_bytes"] = 120e6
    assert verdicts(gate.compare(base, cand))["peak_mem_bytes"] == "regression"
    assert verdicts(gate.compare(base, base.copy()))["peak_mem_bytes"] == "ok"


def test_over_threshold_without_significance_is_suspicious():
    base = make_cells(rng_seed=1, cv=0.3)
    cand = make_cells(rng_seed=2, cv=0.3)
    cand["time_to_target_s"] = base["time_to_target_s"].to_numpy()[::-1] * 1.08
    comparison = gate.compare(base, cand).set_index("metric")
    assert comparison.loc["time_to_target_s", "verdict"] == "suspicious"
    assert comparison.loc["time_to_target_s", "p_value"] >= 0.01


def test_a_cell_that_stops_reaching_is_a_regression():
    base = make_cells()
    cand = make_cells(rng_seed=1)
    lost = cand["seed"] == 2
    cand.loc[lost, "status"] = "budget_exhausted"
    for column in ("time_to_target_s", "tokens_to_target", "steps_to_target"):
        cand.loc[lost, column] = math.nan
    result = verdicts(gate.compare(base, cand))
    assert result["reached"] == "regression"
    assert result["tokens_to_target"] == "regression"  # seed 2 now needs infinitely many tokens


def test_configuration_that_no_longer_reaches_on_a_gpu_is_a_regression():
    base = make_cells(device="cuda")
    cand = make_cells(device="cuda", rng_seed=1)
    cand.loc[cand["seed"] >= 2, "status"] = "diverged"
    assert verdicts(gate.compare(base, cand))["reached"] == "regression"


def test_reaching_on_half_of_an_even_number_of_seeds_no_longer_counts_as_reached():
    # on a GPU (no per-seed rule): 4 of 4 seeds reached before, 2 of 4 now; half is not more than half
    base = make_cells(device="cuda", n_seeds=4)
    cand = make_cells(device="cuda", n_seeds=4, rng_seed=1)
    cand.loc[cand["seed"] >= 2, "status"] = "budget_exhausted"
    assert verdicts(gate.compare(base, cand))["reached"] == "regression"


def test_deterministic_metrics_must_match_per_seed_on_cpu():
    base = make_cells()
    cand = make_cells(rng_seed=1)
    cand.loc[cand["seed"] == 0, "final_val_loss"] += 0.01
    comparison = gate.compare(base, cand).set_index("metric")
    assert comparison.loc["final_val_loss", "verdict"] == "regression"
    assert "seed(s) 0" in comparison.loc["final_val_loss", "note"]
    cand.loc[cand["seed"] == 0, "final_val_loss"] -= 0.02
    assert gate.compare(base, cand).set_index("metric").loc["final_val_loss", "verdict"] == "improvement"
    within = make_cells(rng_seed=1)
    within["final_val_loss"] *= 1 + 1e-6  # inside the stated tolerance
    assert verdicts(gate.compare(base, within))["final_val_loss"] == "ok"


def test_fewer_than_five_samples_is_insufficient_data_and_fails_only_when_strict():
    base = make_cells(n_seeds=3, rng_seed=1)
    cand = make_cells(n_seeds=3, rng_seed=2)
    cand["time_to_target_s"] *= 1.5
    comparison = gate.compare(base, cand)
    assert verdicts(comparison)["time_to_target_s"] == "insufficient_data"
    assert not gate.failed(comparison)
    assert gate.failed(comparison, strict=True)


def test_repeats_count_as_samples():
    base = make_cells(n_seeds=1, n_repeats=6, rng_seed=1)
    cand = make_cells(n_seeds=1, n_repeats=6, rng_seed=2)
    cand["time_to_target_s"] *= 1.2
    assert verdicts(gate.compare(base, cand))["time_to_target_s"] == "regression"


def test_faster_and_significant_is_an_improvement():
    base = make_cells(rng_seed=1)
    cand = make_cells(rng_seed=2)
    cand["time_to_target_s"] *= 0.8
    assert verdicts(gate.compare(base, cand))["time_to_target_s"] == "improvement"


def test_noise_only_twenty_trials_give_at_most_one_false_alarm():
    """A/A with 5% coefficient of variation on every noisy metric, 5 samples a side."""
    false_alarms = 0
    for trial in range(20):
        base = make_cells(cv=0.05, rng_seed=1000 + 2 * trial)
        cand = make_cells(cv=0.05, rng_seed=1001 + 2 * trial)
        false_alarms += gate.failed(gate.compare(base, cand))
    assert false_alarms <= 1


def test_compare_rejects_unknown_options():
    cells = make_cells()
    with pytest.raises(ValueError, match="time_treshold"):
        gate.compare(cells, cells, time_treshold=0.1)


# -- command line -----------------------------------------------------------------------------


def write_results(directory, cells: pd.DataFrame):
    directory.mkdir(parents=True)
    cells.to_parquet(directory / "cells.parquet")
    pd.DataFrame(
        columns=["cell_id", "step", "tokens", "train_time_s", "energy_j", "train_loss", "val_loss"]
    ).to_parquet(directory / "curves.parquet")
    pd.DataFrame(columns=["cell_id", "t_s"]).to_parquet(directory / "telemetry.parquet")
    (directory / "run.json").write_text(
        json.dumps({"schema_version": 1, "run_id": str(cells["run_id"].iloc[0]), "scenario": "gate-test"})
    )
    return directory


def test_cli_exit_codes_and_outputs(tmp_path, capsys):
    base = write_results(tmp_path / "base", make_cells(rng_seed=1))
    same = write_results(tmp_path / "same", make_cells(rng_seed=2))
    slow_cells = make_cells(rng_seed=2)
    slow_cells["time_to_target_s"] *= 1.10
    slow = write_results(tmp_path / "slow", slow_cells)
    other_cells = make_cells(rng_seed=2)
    other_cells["config_key"] = "another-configuration"
    other = write_results(tmp_path / "other", other_cells)

    assert gate_cli.cli_main([str(base), str(same)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("### benchbed gate: PASS")

    markdown, report, action = tmp_path / "gate.md", tmp_path / "gate.json", tmp_path / "bench.json"
    argv = [str(base), str(slow), "--markdown", str(markdown), "--json", str(report)]
    assert gate_cli.cli_main(argv + ["--benchmark-action", str(action)]) == 1
    assert capsys.readouterr().out == ""  # the table went to the file
    assert "FAIL" in markdown.read_text() and "**regression**" in markdown.read_text()
    parsed = json.loads(report.read_text())
    assert parsed["failed"] is True and parsed["counts"]["regression"] >= 1
    entries = json.loads(action.read_text())
    assert entries and all(set(e) >= {"name", "unit", "value"} for e in entries)
    time_entry = next(e for e in entries if e["name"].endswith("time_to_target_s"))
    assert time_entry["unit"] == "s" and time_entry["value"] == pytest.approx(11.0, rel=0.05)
    assert not any("tokens_per_s" in e["name"] or "energy" in e["name"] for e in entries)

    assert gate_cli.cli_main([str(base), str(tmp_path / "missing")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("benchbed gate: ") and "missing" in error and len(error.splitlines()) == 1

    assert gate_cli.cli_main([str(base), str(other)]) == 2
    error = capsys.readouterr().err.strip()
    assert "no cells in common" in error and str(other) in error

    (tmp_path / "empty").mkdir()
    assert gate_cli.cli_main([str(base), str(tmp_path / "empty")]) == 2
    assert "cells.parquet" in capsys.readouterr().err


def test_cli_strict_fails_on_insufficient_data(tmp_path):
    base = write_results(tmp_path / "base", make_cells(n_seeds=2, rng_seed=1))
    cand = write_results(tmp_path / "cand", make_cells(n_seeds=2, rng_seed=2))
    assert gate_cli.cli_main([str(base), str(cand), "--markdown", str(tmp_path / "m.md")]) == 0
    assert "insufficient_data" in (tmp_path / "m.md").read_text()
    assert gate_cli.cli_main([str(base), str(cand), "--strict", "--markdown", str(tmp_path / "m.md")]) == 1


# -- failing closed ------------------------------------------------------------------------------


def budget_capped(**kw) -> pd.DataFrame:
    """Every cell used its whole budget without reaching the target (a budget-capped baseline)."""
    cells = make_cells(**kw)
    cells["status"] = "budget_exhausted"
    for column in ("time_to_target_s", "tokens_to_target", "steps_to_target"):
        cells[column] = math.nan
    cells["final_val_loss"] = 1.2 + 0.001 * cells["seed"]
    return cells


def crashed(cells: pd.DataFrame, status: str = "error", where=None) -> pd.DataFrame:
    """The same cells, but (where) they produced no measurement: every metric NaN, as a failure row."""
    cells = cells.copy()
    where = slice(None) if where is None else where
    cells.loc[where, "status"] = status
    metrics = [c for c in cells.columns if c.endswith(("_s", "_j", "_bytes", "_target", "_loss"))]
    cells.loc[where, metrics] = math.nan
    return cells


@pytest.mark.parametrize("status", ["error", "timeout", "oom", "killed"])
def test_an_all_crashed_candidate_fails_against_a_budget_capped_baseline(status):
    base = budget_capped(rng_seed=1)
    cand = crashed(budget_capped(rng_seed=2), status)
    comparison = gate.compare(base, cand)
    result = verdicts(comparison)
    assert gate.failed(comparison)
    assert result["cells"] == "regression"
    assert f"{status} 5" in comparison.set_index("metric").loc["cells", "note"]
    # every metric the baseline measured is a regression, not "not measured"
    # (a budget-capped baseline measured "did not reach": +inf time and tokens to target)
    for metric in (
        "final_val_loss",
        "tokens_per_s",
        "peak_mem_bytes",
        "time_to_target_s",
        "tokens_to_target",
    ):
        assert result[metric] == "regression", metric
    assert result["energy_to_target_j"] == "not_measured"  # neither side has a sensor
    assert result["reached"] == "ok"  # 0% -> 0%: the rows above are what fail it


def test_one_crashed_seed_fails_the_gate_even_when_the_rest_reach():
    base = make_cells(rng_seed=1)
    cand = crashed(make_cells(rng_seed=2), "timeout", make_cells()["seed"] == 3)
    comparison = gate.compare(base, cand).set_index("metric")
    assert comparison.loc["cells", "verdict"] == "regression"
    assert "seed/repeat 3/0" in comparison.loc["cells", "note"]
    assert comparison.loc["final_val_loss", "verdict"] == "regression"  # seed 3 lost


def test_cells_that_failed_on_both_sides_are_insufficient_data():
    base = crashed(make_cells(rng_seed=1), "oom", make_cells()["seed"] == 0)
    cand = crashed(make_cells(rng_seed=2), "oom", make_cells()["seed"] == 0)
    comparison = gate.compare(base, cand)
    assert verdicts(comparison)["cells"] == "insufficient_data"
    assert not gate.failed(comparison) and gate.failed(comparison, strict=True)
    fixed = gate.compare(base, make_cells(rng_seed=2))
    assert verdicts(fixed)["cells"] == "improvement"


def test_a_configuration_missing_from_the_candidate_fails_unless_allowed():
    base = make_cells(variants=("adamw", "lion"))
    cand = make_cells(variants=("adamw",), rng_seed=1)
    comparison = gate.compare(base, cand)
    missing = comparison[comparison["config_key"] == "key-lion"]
    assert list(missing["verdict"]) == ["regression"] and gate.failed(comparison)
    allowed = gate.compare(base, cand, allow_missing=True)
    assert not gate.failed(allowed)


def test_different_thread_counts_are_not_held_to_bitwise_equality():
    base = make_cells(rng_seed=1).assign(threads=1)
    cand = make_cells(rng_seed=2).assign(threads=2)
    cand["final_val_loss"] += 1e-3  # what a different reduction order does to a CPU curve
    comparison = gate.compare(base, cand).set_index("metric")
    assert comparison.loc["final_val_loss", "kind"] == "noisy"
    assert comparison.loc["final_val_loss", "verdict"] == "ok"
    assert "thread counts differ ([1] vs [2])" in comparison.loc["final_val_loss", "note"]
    same = gate.compare(base, cand.assign(threads=1)).set_index("metric")
    assert same.loc["final_val_loss", "verdict"] == "regression"  # same threads: bitwise rule


def test_cli_fails_an_all_crashed_candidate(tmp_path, capsys):
    base = write_results(tmp_path / "base", budget_capped(rng_seed=1))
    cand = write_results(tmp_path / "cand", crashed(budget_capped(rng_seed=2)))
    assert gate_cli.cli_main([str(base), str(cand)]) == 1
    out = capsys.readouterr().out
    assert out.startswith("### benchbed gate: FAIL") and "| cells | " in out and "**regression**" in out
