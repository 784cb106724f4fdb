"""benchbed.analyse on small hand-built cells tables (values computed by hand in the comments)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from benchbed.analyse import bootstrap, profiles, tables


def make_cells(spec: list[tuple], *, device: str = "cpu", baseline: str = "adamw") -> pd.DataFrame:
    """Rows from (workload, variant, seed, time_to_target_s or None for "did not reach")."""
    rows = []
    for index, (workload, variant, seed, time_s) in enumerate(spec):
        reached = time_s is not None
        rows.append(
            {
                "run_id": "r",
                "cell_id": f"c{index}",
                "config_key": f"{workload}:{variant}",
                "variant": variant,
                "techniques": variant,
                "scenario": "s",
                "workload": workload,
                "device": device,
                "seed": seed,
                "repeat": 0,
                "baseline": baseline,
                "is_baseline": variant == baseline,
                "status": "reached" if reached else "budget_exhausted",
                "time_to_target_s": time_s if reached else math.nan,
                "tokens_to_target": 1000.0 * seed if reached else math.nan,
                "energy_to_target_j": math.nan,  # not measured on this machine
                "energy_j": math.nan,
                "energy_source": "unavailable",
                "peak_mem_bytes": 1e6,
                "tokens_per_s": 100.0 / time_s if reached else 5.0,
                "best_val_loss": 0.5 if reached else 0.9 + 0.01 * seed,
                "final_val_loss": 0.5 if reached else 0.9,
            }
        )
    return pd.DataFrame(rows)


def test_median_treats_unreached_as_slowest():
    assert bootstrap.median([3.0, 1.0, 2.0]) == 2.0
    assert bootstrap.median([1.0, 2.0, 3.0, 10.0]) == 2.5
    assert bootstrap.median([1.0, 2.0, math.inf]) == 2.0
    # half reached is not reached: the median of an even count with +inf as upper middle is +inf
    assert bootstrap.median([1.0, 4.0, math.inf, math.inf]) == math.inf
    assert bootstrap.median([1.0, math.inf]) == math.inf
    assert bootstrap.median([1.0, math.inf, math.inf]) == math.inf
    assert math.isnan(bootstrap.median([]))


def test_olympic_mean_drops_best_and_worst():
    assert bootstrap.olympic_mean([1.0, 2.0, 3.0, 4.0, 100.0]) == 3.0  # (2+3+4)/3
    assert bootstrap.olympic_mean([5.0, 1.0, math.inf]) == 5.0  # one failed run is tolerated
    assert bootstrap.olympic_mean([5.0, math.inf, math.inf]) == math.inf  # two are not
    assert bootstrap.olympic_mean([2.0, 4.0]) == 3.0  # nothing to drop


def test_bootstrap_ci_is_seeded_contains_median_and_handles_inf():
    values = np.array([10.0, 11.0, 12.0, 13.0, 30.0])
    low, high = bootstrap.bootstrap_ci(values, seed=3)
    assert (low, high) == bootstrap.bootstrap_ci(values, seed=3)
    assert low <= 12.0 <= high
    assert low >= 10.0 and high <= 30.0
    low_inf, high_inf = bootstrap.bootstrap_ci([1.0, 2.0, math.inf], seed=0)
    assert low_inf == 1.0 and high_inf == math.inf
    assert all(math.isnan(v) for v in bootstrap.bootstrap_ci([4.0]))  # one value: no interval


def test_summarize_groups_seeds_and_applies_the_majority_rule():
    cells = make_cells(
        [
            ("w", "adamw", 1, 10.0),
            ("w", "adamw", 2, 12.0),
            ("w", "adamw", 3, 11.0),
            ("w", "lion", 1, 8.0),
            ("w", "lion", 2, None),
            ("w", "lion", 3, None),  # 1 of 3 reached: did not reach
            ("w", "sophia", 1, 9.0),
            ("w", "sophia", 2, None),  # 1 of 2 reached: not more than half, did not reach
            ("w", "nadam", 1, 9.0),
            ("w", "nadam", 2, None),
            ("w", "nadam", 3, 7.0),  # 2 of 3 reached: more than half
        ]
    )
    summary = tables.summarize(cells).set_index("variant")
    assert summary.loc["adamw", "time_to_target_s"] == 11.0
    assert summary.loc["adamw", "n_seeds"] == 3 and summary.loc["adamw", "n_reached"] == 3
    assert bool(summary.loc["lion", "reached"]) is False
    assert summary.loc["lion", "time_to_target_s"] == math.inf
    assert summary.loc["lion", "status_counts"] == "reached:1 budget_exhausted:2"
    assert bool(summary.loc["sophia", "reached"]) is False
    assert summary.loc["sophia", "time_to_target_s"] == math.inf
    assert bool(summary.loc["nadam", "reached"]) is True
    assert summary.loc["nadam", "time_to_target_s"] == 9.0
    # energy was not measured anywhere: NaN, never 0
    assert summary["energy_to_target_j"].isna().all()
    assert (summary["energy_to_target_j_n"] == 0).all()


def test_leaderboard_orders_best_first_unreached_last_with_speedups():
    cells = make_cells(
        [
            ("w", "adamw", 1, 10.0),
            ("w", "adamw", 2, 10.0),
            ("w", "lion", 1, 5.0),
            ("w", "lion", 2, 5.0),
            ("w", "broken", 1, None),
            ("w", "broken", 2, None),
            ("w", "slow", 1, 20.0),
            ("w", "slow", 2, 20.0),
        ]
    )
    table = tables.leaderboard(cells)
    assert list(table["variant"]) == ["lion", "adamw", "slow", "broken"]
    assert list(table["rank"]) == [1, 2, 3, 4]
    speedup = table.set_index("variant")["speedup"]
    assert speedup["lion"] == 2.0 and speedup["adamw"] == 1.0 and speedup["slow"] == 0.5
    assert speedup["broken"] == 0.0  # did not reach: infinitely slow
    assert set(tables.LEADERBOARD_COLUMNS) <= set(table.columns)
    # ranked by throughput instead, larger first
    by_throughput = tables.leaderboard(cells, rank_by="tokens_per_s")
    assert list(by_throughput["variant"][:3]) == ["lion", "adamw", "slow"]
    with pytest.raises(ValueError, match="rank_by"):
        tables.leaderboard(cells, rank_by="nonsense")


def test_a_half_reached_even_seed_combination_ranks_as_not_reached():
    # "fast" reached on seed 1 only (1 of 2): before the majority rule it ranked first at 5 s
    cells = make_cells(
        [
            ("w", "adamw", 1, 10.0),
            ("w", "adamw", 2, 12.0),
            ("w", "fast", 1, 5.0),
            ("w", "fast", 2, None),
        ]
    )
    table = tables.leaderboard(cells).set_index("variant")
    assert bool(table.loc["fast", "reached"]) is False
    assert table.loc["fast", "rank"] == 2 and table.loc["adamw", "rank"] == 1
    assert table.loc["fast", "time_to_target_s"] == math.inf  # shown as "not reached", not 5 s
    assert table.loc["fast", "speedup"] == 0.0


def test_leaderboard_olympic_aggregate():
    cells = make_cells([("w", "adamw", seed, t) for seed, t in enumerate([1.0, 2.0, 3.0, 4.0, 100.0])])
    assert tables.leaderboard(cells, aggregate="olympic")["time_to_target_s"].iloc[0] == 3.0
    assert tables.leaderboard(cells)["time_to_target_s"].iloc[0] == 3.0  # median


def test_speedups_use_each_scenarios_own_baseline():
    first = make_cells([("w", "adamw", 1, 10.0), ("w", "adamw", 2, 10.0), ("w", "lion", 1, 5.0)])
    second = make_cells([("w", "adamw", 1, 40.0), ("w", "adamw", 2, 40.0), ("w", "lion", 1, 5.0)])
    second = second.assign(scenario="s2", config_key=second["config_key"] + "-s2")
    table = tables.speedups(pd.concat([first, second], ignore_index=True)).set_index("config_key")
    assert table.loc["w:lion", "speedup"] == 2.0
    assert table.loc["w:lion-s2", "speedup"] == 8.0
    assert table.loc["w:adamw-s2", ["speedup", "speedup_ci_low", "speedup_ci_high"]].tolist() == [1.0] * 3


def test_speedup_interval_brackets_point_estimate():
    rng = np.random.default_rng(0)
    spec = [("w", "adamw", s, 10.0 * (1 + 0.05 * rng.standard_normal())) for s in range(8)]
    spec += [("w", "lion", s, 5.0 * (1 + 0.05 * rng.standard_normal())) for s in range(8)]
    table = tables.speedups(make_cells(spec)).set_index("variant")
    low, value, high = table.loc["lion", ["speedup_ci_low", "speedup", "speedup_ci_high"]]
    assert low <= value <= high
    assert low > 1.6 and high < 2.5


# Hand-computed performance profile. Times (one seed each):
#   workload w1: A=10, B=20, C=50      -> ratios A=1,   B=2, C=5
#   workload w2: A=30, B=20, C=unreached -> ratios A=1.5, B=1, C=inf
# rho_A(1)=1/2, rho_A(1.5)=1, rho_B(1)=1/2, rho_B(2)=1, rho_C(tau)=0 on [1, 4].
# Score = area under rho on [1, 4] / 3:
#   A: (3 + 2.5) / 2 / 3 = 11/12;  B: (2 + 3) / 2 / 3 = 5/6;  C: 0.
PROFILE_SPEC = [
    ("w1", "A", 1, 10.0),
    ("w1", "B", 1, 20.0),
    ("w1", "C", 1, 50.0),
    ("w2", "A", 1, 30.0),
    ("w2", "B", 1, 20.0),
    ("w2", "C", 1, None),
]


def test_performance_ratios_and_profile_match_hand_computation():
    cells = make_cells(PROFILE_SPEC, baseline="A")
    ratios = profiles.performance_ratios(cells)
    assert ratios.loc["A", "w1/cpu"] == 1.0 and ratios.loc["A", "w2/cpu"] == 1.5
    assert ratios.loc["B", "w1/cpu"] == 2.0 and ratios.loc["B", "w2/cpu"] == 1.0
    assert ratios.loc["C", "w1/cpu"] == 5.0 and ratios.loc["C", "w2/cpu"] == math.inf
    profile = profiles.performance_profile(cells, n_points=7)  # tau = 1, 1.5, 2, ..., 4
    rho = profile.pivot(index="tau", columns="submission", values="rho")
    assert list(rho.index) == [1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0]
    assert list(rho["A"]) == [0.5, 1, 1, 1, 1, 1, 1]
    assert list(rho["B"]) == [0.5, 0.5, 1, 1, 1, 1, 1]
    assert list(rho["C"]) == [0, 0, 0, 0, 0, 0, 0]


def test_benchmark_score_matches_hand_computation_and_profile_area():
    cells = make_cells(PROFILE_SPEC, baseline="A")
    score = profiles.benchmark_score(cells).set_index("submission")["score"]
    assert score["A"] == pytest.approx(11 / 12, abs=1e-12)
    assert score["B"] == pytest.approx(5 / 6, abs=1e-12)
    assert score["C"] == 0.0
    assert list(profiles.benchmark_score(cells)["submission"]) == ["A", "B", "C"]
    # the exact area agrees with a fine-grid integral of the profile (AlgoPerf integrates numerically)
    profile = profiles.performance_profile(cells, n_points=30001)
    area_a = np.trapezoid(
        profile[profile.submission == "A"]["rho"], profile[profile.submission == "A"]["tau"]
    )
    assert area_a / 3 == pytest.approx(11 / 12, abs=1e-3)


def test_profile_accepts_summary_and_larger_is_better_metric():
    cells = make_cells(PROFILE_SPEC, baseline="A")
    from_summary = profiles.benchmark_score(tables.summarize(cells))
    pd.testing.assert_frame_equal(from_summary, profiles.benchmark_score(cells))
    # tokens/s = 100 / time here, so the reciprocal ranking reproduces time's ratios where reached
    ratios = profiles.performance_ratios(cells, "tokens_per_s")
    assert ratios.loc["B", "w1/cpu"] == pytest.approx(2.0)
