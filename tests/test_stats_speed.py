"""benchbed.analyse.tables computes whole tables at once; every combination must get what it gets alone.

``summarize`` and ``speedups`` resample combinations of the same size together and share the
resampling indices between them. These tests recompute each combination the slow way, one
``bootstrap_ci`` / ``ratio_ci`` call on that combination's own cells, and demand equality to the bit.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from benchbed.analyse import bootstrap, tables


def messy_cells() -> pd.DataFrame:
    """Two workloads, uneven seed counts, unmeasured values, a NaN device and shuffled rows."""
    rng = np.random.default_rng(11)
    rows = []
    for workload in ("w1", "w2"):
        for variant, n_seeds, reach_fraction in (("adamw", 5, 1.0), ("fast", 3, 1.0), ("half", 4, 0.5)):
            for seed in range(n_seeds):
                reached = seed < round(n_seeds * reach_fraction)
                rows.append(
                    {
                        "workload": workload,
                        "device": "cpu",
                        "config_key": f"{workload}:{variant}",
                        "variant": variant,
                        "techniques": variant,
                        "scenario": "s",
                        "baseline": "adamw",
                        "is_baseline": variant == "adamw",
                        "seed": seed,
                        "status": "reached" if reached else "budget_exhausted",
                        "time_to_target_s": float(rng.uniform(10, 20)) if reached else math.nan,
                        "tokens_to_target": 1000.0,  # identical across seeds
                        "energy_to_target_j": math.nan,
                        "energy_source": "unavailable",
                        "peak_mem_bytes": float(rng.uniform(1e6, 2e6)),
                        "tokens_per_s": float(rng.uniform(50, 100)) if seed != 1 else math.nan,
                        "best_val_loss": float(rng.uniform(0.4, 0.6)),
                        "final_val_loss": float(rng.uniform(0.4, 0.6)),
                    }
                )
    rows.append({**rows[0], "device": None, "config_key": "w1:orphan", "variant": "orphan"})
    return pd.DataFrame(rows).sample(frac=1.0, random_state=2).reset_index(drop=True)


def test_summarize_interval_of_each_combination_is_its_own_bootstrap():
    cells = messy_cells()
    summary = tables.summarize(cells, n_resamples=300, seed=4)
    assert len(summary) == 7  # 2 workloads x 3 variants + the orphan on a NaN device
    for _, row in summary.iterrows():
        same_device = cells["device"].isna() if pd.isna(row["device"]) else cells["device"].eq(row["device"])
        group = cells[same_device & cells["config_key"].eq(row["config_key"])]
        for metric in tables.METRICS:
            samples = bootstrap.metric_samples(group, metric)
            low, high = bootstrap.bootstrap_ci(samples, n_resamples=300, seed=4)
            assert np.array_equal(
                [row[f"{metric}_ci_low"], row[f"{metric}_ci_high"]], [low, high], equal_nan=True
            )
            assert np.array_equal([row[metric]], [bootstrap.median(samples)], equal_nan=True)


@pytest.mark.parametrize(
    "values",
    [
        [3.0, 1.0, 7.0, math.inf, 2.0],
        [2.0, 5.0, 2.0, math.inf, 5.0, math.inf],  # ties, half unreached
        [0.0, -0.0, 1.0, -0.0],  # signed zeros compare equal but are different bits
        [4.0, 1.0],
    ],
)
@pytest.mark.parametrize("aggregate", ["median", "olympic"])
def test_bootstrap_ci_is_the_documented_resampling(values, aggregate):
    """bootstrap_ci resamples exactly as rng.choice(values, (n_resamples, n)) from default_rng(seed)."""
    values = np.array(values)
    resampled = np.sort(np.random.default_rng(9).choice(values, size=(500, values.size)), axis=1)
    estimates = bootstrap._aggregate_rows(resampled, aggregate)
    expected = (np.quantile(estimates, 0.025, method="lower"), np.quantile(estimates, 0.975, method="higher"))
    got = bootstrap.bootstrap_ci(values, aggregate=aggregate, n_resamples=500, seed=9)
    assert np.array(got).tobytes() == np.array(expected).tobytes()
    # the cached index table is shared, not consumed: a second call gives the same interval
    again = bootstrap.bootstrap_ci(values, aggregate=aggregate, n_resamples=500, seed=9)
    assert np.array(again).tobytes() == np.array(expected).tobytes()


def test_constant_samples_give_a_point_interval():
    cells = messy_cells()
    summary = tables.summarize(cells)
    row = summary[summary["config_key"].eq("w1:adamw") & summary["device"].eq("cpu")].iloc[0]
    assert (row["tokens_to_target"], row["tokens_to_target_ci_low"], row["tokens_to_target_ci_high"]) == (
        1000.0,
        1000.0,
        1000.0,
    )


@pytest.mark.parametrize("metric", ["time_to_target_s", "tokens_per_s"])
def test_speedup_of_each_combination_is_its_own_ratio_ci(metric):
    cells = messy_cells()
    table = tables.speedups(cells, metric, n_resamples=200, seed=3)
    for _, row in table.iterrows():
        if pd.isna(row["device"]):
            assert math.isnan(row["speedup"])  # no baseline on a NaN device
            continue
        ours = bootstrap.metric_samples(cells[cells["config_key"].eq(row["config_key"])], metric)
        base = bootstrap.metric_samples(cells[cells["config_key"].eq(f"{row['workload']}:adamw")], metric)
        if row["variant"] == "adamw":
            expected = (1.0, 1.0, 1.0)
        elif metric == "tokens_per_s":
            expected = bootstrap.ratio_ci(ours, base, n_resamples=200, seed=3)
        else:
            expected = bootstrap.ratio_ci(base, ours, n_resamples=200, seed=3)
        got = (row["speedup"], row["speedup_ci_low"], row["speedup_ci_high"])
        assert np.array_equal(got, expected, equal_nan=True)


def test_generator_seed_draws_combination_by_combination_in_table_order():
    """A Generator cannot be shared between combinations: it is drawn from in groupby order."""
    cells = messy_cells()
    summary = tables.summarize(cells, n_resamples=50, seed=np.random.default_rng(5))
    generator = np.random.default_rng(5)
    for _, row in summary.iterrows():
        same_device = cells["device"].isna() if pd.isna(row["device"]) else cells["device"].eq(row["device"])
        group = cells[same_device & cells["config_key"].eq(row["config_key"])]
        for metric in tables.METRICS:
            expected = bootstrap.bootstrap_ci(
                bootstrap.metric_samples(group, metric), n_resamples=50, seed=generator
            )
            got = (row[f"{metric}_ci_low"], row[f"{metric}_ci_high"])
            assert np.array_equal(got, expected, equal_nan=True)
