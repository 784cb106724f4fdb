"""Resampling statistics: medians and olympic means tolerant of +inf, seeded bootstrap intervals.

The per-cell samples of a metric come from the ``cells`` table (``benchbed.results.store.load(...).cells``,
columns in docs/contracts.md): a cell that did not reach its target is infinitely slow for the
to-target metrics (AlgoPerf: Dahl et al. 2023, "Benchmarking Neural Network Training Algorithms",
arXiv:2306.07179), a value that was not measured (NaN) is dropped, never a number.

Point estimates are medians across seeds and repeats with a seeded percentile bootstrap 95%
interval (Efron & Tibshirani 1993, "An Introduction to the Bootstrap"), deterministic given
``seed``. The MLPerf olympic mean (drop the best and the worst run, average the rest; Mattson et
al. 2020, "MLPerf Training Benchmark", arXiv:1910.01500) is available as ``aggregate="olympic"``.

Large tables (thousands of combinations) are resampled together: combinations with the same number
of samples share one index table (``bootstrap_many``, ``ratio_many``). Each combination's interval
is still the one ``bootstrap_ci`` / ``ratio_ci`` give for it alone, bit for bit
(tests/test_stats_speed.py). The tables built on these (summaries, speedups, the leaderboard) are in
``benchbed.analyse.tables``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

#: metrics that are infinite for a cell that did not reach its target
TO_TARGET_METRICS = ("time_to_target_s", "tokens_to_target", "steps_to_target", "energy_to_target_j")

CONFIDENCE = 0.95
N_RESAMPLES = 2000

# -- small numeric helpers --------------------------------------------------------------------


def reached_mask(cells: pd.DataFrame) -> pd.Series:
    """True for cells that reached their target (``status == "reached"``)."""
    if "status" in cells.columns:
        return cells["status"].astype("string").eq("reached").fillna(False).astype(bool)
    return cells["time_to_target_s"].notna()


def metric_samples(cells: pd.DataFrame, metric: str) -> np.ndarray:
    """The metric's values of ``cells`` as float64, unreached cells as +inf for to-target metrics.

    Unmeasured values (NaN in the table of a cell that did reach) are dropped: NaN stays "not
    measured", never a number.
    """
    if metric not in cells.columns:
        return np.array([], dtype=np.float64)
    values = pd.to_numeric(cells[metric], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    if metric in TO_TARGET_METRICS:
        unreached = ~reached_mask(cells).to_numpy()
        if metric == "energy_to_target_j":
            # an unreached cell is infinitely costly only where energy was measured at all
            unreached &= energy_measured(cells)
        values = np.where(unreached, np.inf, values)
    return values[~np.isnan(values)]


def energy_measured(cells: pd.DataFrame) -> np.ndarray:
    measured = np.ones(len(cells), dtype=bool)
    if "energy_source" in cells.columns:
        measured &= cells["energy_source"].astype("string").fillna("unavailable").ne("unavailable").to_numpy()
    if "energy_j" in cells.columns:
        measured &= pd.to_numeric(cells["energy_j"], errors="coerce").notna().to_numpy()
    return measured


def _median_rows(sorted_samples: np.ndarray) -> np.ndarray:
    """Median of each row of an already sorted 2-D array, tolerant of +inf.

    With an even count whose upper middle is +inf (exactly half reached, or fewer) the median is
    +inf: a combination reaches only when more than half of its cells did, and its median time says
    the same (the midpoint of a finite value and +inf is +inf).
    """
    n = sorted_samples.shape[1]
    return _median_of_middles(sorted_samples[:, (n - 1) // 2], sorted_samples[:, n // 2])


def _median_of_middles(lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """``_median_rows`` from the lower and upper middle values alone."""
    with np.errstate(invalid="ignore"):
        return (lower + upper) / 2.0


def median(values: Sequence[float] | np.ndarray) -> float:
    """Median that treats +inf as "slower than everything" (see ``_median_rows``); NaN if empty."""
    samples = np.sort(np.asarray(values, dtype=np.float64))
    if samples.size == 0:
        return math.nan
    return float(_median_rows(samples[None, :])[0])


def olympic_mean(values: Sequence[float] | np.ndarray) -> float:
    """MLPerf olympic mean: drop the single best and worst value, average the rest.

    With fewer than three values nothing can be dropped and the plain mean is returned; an
    infinite value (a run that did not reach) is dropped as the worst, so one failed run is
    tolerated, two are not (the result is then +inf). NaN if empty.
    """
    samples = np.sort(np.asarray(values, dtype=np.float64))
    if samples.size == 0:
        return math.nan
    if samples.size >= 3:
        samples = samples[1:-1]
    return float(np.mean(samples))


def _aggregate_rows(sorted_samples: np.ndarray, aggregate: str) -> np.ndarray:
    if aggregate == "median":
        return _median_rows(sorted_samples)
    if aggregate == "olympic":
        if sorted_samples.shape[1] >= 3:
            sorted_samples = sorted_samples[:, 1:-1]
        return sorted_samples.mean(axis=1)
    raise ValueError(f"aggregate: expected 'median' or 'olympic', got {aggregate!r}")


def aggregate_value(values: Sequence[float] | np.ndarray, aggregate: str = "median") -> float:
    """The point estimate used in tables: ``median`` (default) or ``olympic`` (MLPerf)."""
    samples = np.sort(np.asarray(values, dtype=np.float64))
    if samples.size == 0:
        return math.nan
    return float(_aggregate_rows(samples[None, :], aggregate)[0])


def _interval(estimates: np.ndarray, confidence: float) -> tuple[float, float]:
    # order statistics, not interpolation: interpolating towards +inf gives NaN
    alpha = (1.0 - confidence) / 2.0
    low = np.quantile(estimates, alpha, method="lower")
    high = np.quantile(estimates, 1.0 - alpha, method="higher")
    return float(low), float(high)


#: resample index tables larger than this many entries are drawn per call instead of cached
_MAX_CACHED_INDICES = 1 << 20
#: groups resampled together are chunked so one chunk holds at most this many float64 values
_CHUNK_VALUES = 1 << 22


def seed_is_plain(seed) -> bool:
    # an int seed gives the same stream on every call, so its draws can be cached and shared
    # between combinations; a Generator (or anything else) must be drawn from in call order
    return isinstance(seed, (int, np.integer))


@functools.lru_cache(maxsize=64)
def _cached_indices(seed: int, n_resamples: int, sizes: tuple[int, ...]) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    tables = tuple(rng.choice(size, size=(n_resamples, size), replace=True) for size in sizes)
    for table in tables:
        table.setflags(write=False)
    return tables


def _resample_indices(seed, n_resamples: int, sizes: tuple[int, ...]) -> tuple[np.ndarray, ...]:
    """Index tables drawn exactly as ``rng.choice(samples, size=(n_resamples, n))`` draws them.

    ``Generator.choice`` with replacement draws ``integers(0, n)`` whatever the values are, so the
    indices depend only on the seed and the sample sizes: every combination of the same size shares
    them (one draw instead of thousands), and ``samples[indices]`` equals the original resample bit
    for bit. Sizes drawn from one generator follow each other in order (``ratio_ci``).
    """
    if seed_is_plain(seed) and n_resamples * sum(sizes) <= _MAX_CACHED_INDICES:
        return _cached_indices(int(seed), int(n_resamples), sizes)
    rng = np.random.default_rng(seed)
    return tuple(rng.choice(size, size=(n_resamples, size), replace=True) for size in sizes)


def _resampled_estimates(sample_rows: np.ndarray, indices: np.ndarray, aggregate: str) -> np.ndarray:
    """Aggregate of every resample of every row: ``(groups, n)`` samples -> ``(groups, n_resamples)``."""
    n_groups = sample_rows.shape[0]
    n_resamples, size = indices.shape
    if aggregate == "median":
        # a signed zero equals an unsigned one but is not the same bits: keep such rows on the sort path
        by_rank = ~(sample_rows == 0.0).any(axis=1) if n_groups else np.zeros(0, dtype=bool)
        if by_rank.all():
            return _resampled_medians_by_rank(sample_rows, indices)
        estimates = np.empty((n_groups, n_resamples))
        estimates[by_rank] = _resampled_medians_by_rank(sample_rows[by_rank], indices)
        estimates[~by_rank] = _resampled_estimates(sample_rows[~by_rank], indices, "sorted-median")
        return estimates
    if aggregate == "sorted-median":
        aggregate = "median"
    resampled = np.sort(sample_rows[:, indices], axis=2).reshape(n_groups * n_resamples, size)
    return _aggregate_rows(resampled, aggregate).reshape(n_groups, n_resamples)


def _resampled_medians_by_rank(sample_rows: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """Median of every resample without sorting resampled values.

    The middle of a sorted resample is the sample whose rank (in the sorted row) is the middle of
    the resampled ranks, so the ranks' order statistics give the same values, bit for bit (equal
    values are equal bits once signed zeros are excluded). Rows whose values are in the same order
    share the ranks' order statistics: computed once per order, not once per row.
    """
    n_groups = sample_rows.shape[0]
    n_resamples, size = indices.shape
    estimates = np.empty((n_groups, n_resamples))
    if n_groups == 0:
        return estimates
    order = np.argsort(sample_rows, axis=1, kind="stable")
    sorted_rows = np.take_along_axis(sample_rows, order, axis=1)
    rank_of_position = np.argsort(order, axis=1)
    distinct_ranks, which = np.unique(rank_of_position, axis=0, return_inverse=True)
    which = which.reshape(-1)
    for distinct, ranks in enumerate(distinct_ranks):
        resampled_ranks = np.sort(ranks[indices], axis=1)
        members = np.flatnonzero(which == distinct)
        member_rows = sorted_rows[members]
        estimates[members] = _median_of_middles(
            member_rows[:, resampled_ranks[:, (size - 1) // 2]], member_rows[:, resampled_ranks[:, size // 2]]
        )
    return estimates


def _chunks(n_groups: int, values_per_group: int):
    step = max(1, _CHUNK_VALUES // max(1, values_per_group))
    for start in range(0, n_groups, step):
        yield slice(start, min(n_groups, start + step))


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    *,
    aggregate: str = "median",
    confidence: float = CONFIDENCE,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the aggregate of ``values`` (+inf allowed).

    Deterministic given ``seed``. With fewer than two values there is nothing to resample and the
    interval is (NaN, NaN): not measured rather than a falsely tight interval.
    """
    samples = np.asarray(values, dtype=np.float64)
    if samples.size < 2:
        return math.nan, math.nan
    (indices,) = _resample_indices(seed, n_resamples, (samples.size,))
    return _interval(_resampled_estimates(samples[None, :], indices, aggregate)[0], confidence)


def bootstrap_many(
    samples_per_group: list[np.ndarray], aggregate: str, confidence: float, n_resamples: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """``bootstrap_ci`` of every entry of ``samples_per_group`` (an int seed), as two arrays.

    Groups of the same size share one index table and are resampled together; the result of each
    group is the one ``bootstrap_ci`` gives for it alone.
    """
    low = np.full(len(samples_per_group), np.nan)
    high = np.full(len(samples_per_group), np.nan)
    by_size: dict[int, list[int]] = {}
    for position, samples in enumerate(samples_per_group):
        if samples.size < 2:
            continue
        bits = samples.view(np.int64)
        if aggregate == "median" and (bits == bits[0]).all():
            # every resample of identical values is that row again: its median is the interval
            low[position] = high[position] = _aggregate_rows(samples[None, :], aggregate)[0]
            continue
        by_size.setdefault(samples.size, []).append(position)
    alpha = (1.0 - confidence) / 2.0
    for size, positions in by_size.items():
        (indices,) = _resample_indices(seed, n_resamples, (size,))
        rows = np.stack([samples_per_group[position] for position in positions])
        for part in _chunks(len(positions), n_resamples * size):
            estimates = _resampled_estimates(rows[part], indices, aggregate)
            # order statistics, as in _interval, row by row
            low[positions[part]] = np.quantile(estimates, alpha, axis=1, method="lower")
            high[positions[part]] = np.quantile(estimates, 1.0 - alpha, axis=1, method="higher")
    return low, high


def ratio_ci(
    numerator: Sequence[float] | np.ndarray,
    denominator: Sequence[float] | np.ndarray,
    *,
    aggregate: str = "median",
    confidence: float = CONFIDENCE,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Ratio of aggregates ``agg(numerator) / agg(denominator)`` with a two-sample bootstrap interval.

    Both samples are resampled independently (they come from different cells). Returns
    ``(ratio, low, high)``; NaN where a side is empty, interval NaN where a side has one value.
    """
    num = np.asarray(numerator, dtype=np.float64)
    den = np.asarray(denominator, dtype=np.float64)
    if num.size == 0 or den.size == 0:
        return math.nan, math.nan, math.nan
    ratio = _point_ratio(num, den, aggregate)
    if num.size < 2 or den.size < 2:
        return ratio, math.nan, math.nan
    num_indices, den_indices = _resample_indices(seed, n_resamples, (num.size, den.size))
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = (
            _resampled_estimates(num[None, :], num_indices, aggregate)[0]
            / _resampled_estimates(den[None, :], den_indices, aggregate)[0]
        )
    return (ratio, *_ratio_interval(ratios, confidence))


def _point_ratio(num: np.ndarray, den: np.ndarray, aggregate: str) -> float:
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(
            np.float64(aggregate_value(num, aggregate)) / np.float64(aggregate_value(den, aggregate))
        )


def _ratio_interval(ratios: np.ndarray, confidence: float) -> tuple[float, float]:
    ratios = ratios[~np.isnan(ratios)]  # inf/inf: both sides unreached in that resample
    if ratios.size == 0:
        return math.nan, math.nan
    return _interval(ratios, confidence)


def ratio_many(
    pairs: list, *, aggregate: str, confidence: float, n_resamples: int, seed: int
) -> list[tuple[float, float, float]]:
    """``ratio_ci`` of every ``(numerator, denominator)`` pair (an int seed); 3-tuples pass through.

    Pairs with the same two sample sizes share the index tables and are resampled together.
    """
    results: list = [None] * len(pairs)
    by_sizes: dict[tuple[int, int], list[int]] = {}
    for position, pair in enumerate(pairs):
        if len(pair) == 3:
            results[position] = pair
            continue
        num, den = pair
        if num.size == 0 or den.size == 0:
            results[position] = (math.nan, math.nan, math.nan)
        elif num.size < 2 or den.size < 2:
            results[position] = (_point_ratio(num, den, aggregate), math.nan, math.nan)
        else:
            by_sizes.setdefault((num.size, den.size), []).append(position)
    for sizes, positions in by_sizes.items():
        num_indices, den_indices = _resample_indices(seed, n_resamples, sizes)
        num_rows = np.stack([pairs[position][0] for position in positions])
        den_rows = np.stack([pairs[position][1] for position in positions])
        for part in _chunks(len(positions), n_resamples * max(sizes)):
            with np.errstate(divide="ignore", invalid="ignore"):
                ratios = _resampled_estimates(num_rows[part], num_indices, aggregate) / _resampled_estimates(
                    den_rows[part], den_indices, aggregate
                )
            part_positions = positions[part]
            # rows without inf/inf resamples: order statistics of all rows at once, as _interval takes them
            clean = ~np.isnan(ratios).any(axis=1)
            alpha = (1.0 - confidence) / 2.0
            clean_low = np.quantile(ratios[clean], alpha, axis=1, method="lower").tolist()
            clean_high = np.quantile(ratios[clean], 1.0 - alpha, axis=1, method="higher").tolist()
            clean_rank = np.cumsum(clean) - 1
            for offset, position in enumerate(part_positions):
                num, den = pairs[position]
                if clean[offset]:
                    interval = (clean_low[clean_rank[offset]], clean_high[clean_rank[offset]])
                else:
                    interval = _ratio_interval(ratios[offset], confidence)
                results[position] = (_point_ratio(num, den, aggregate), *interval)
    return results
