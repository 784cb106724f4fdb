"""Statistics over result tables: medians with bootstrap intervals, rankings, speedups, profiles.

Everything here reads the ``cells`` table (``benchbed.store.load(...).cells``, columns in
docs/contracts.md) and returns DataFrames; nothing imports training code. Seeds and repeats of one
configuration are grouped by ``workload, device, config_key`` (a "combination").

Conventions, each taken from a benchmark that argued for it:

- A cell that did not reach its target is infinitely slow (AlgoPerf: Dahl et al. 2023,
  "Benchmarking Neural Network Training Algorithms", arXiv:2306.07179). A combination where fewer
  than half of its seeds reached is "did not reach" and ranks after every combination that did.
- Point estimates are medians across seeds and repeats with a seeded percentile bootstrap 95%
  interval (Efron & Tibshirani 1993, "An Introduction to the Bootstrap"), deterministic given
  ``seed``. The MLPerf olympic mean (drop the best and the worst run, average the rest; Mattson et
  al. 2020, "MLPerf Training Benchmark", arXiv:1910.01500) is available as ``aggregate="olympic"``.
- Performance profiles and the benchmark score follow AlgoPerf (after Dolan & Moré 2002,
  "Benchmarking optimization software with performance profiles"): per problem (workload × device)
  the ratio of a submission's time to the best time, rho(tau) the fraction of problems with ratio
  <= tau for tau in [1, 4], and the score the area under rho normalised by (tau_max - 1).

The column names of the returned tables are stable; docs/gate.md lists them.

Large tables (thousands of combinations) are handled in one pass: the table is grouped once, per-cell
values are computed for the whole table and sliced per group, and combinations with the same number
of samples are resampled together from one shared index table. Each combination's interval is still
the one ``bootstrap_ci`` / ``ratio_ci`` give for it alone, bit for bit (tests/test_stats_speed.py).
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

#: seeds and repeats of one configuration on one workload and device form one combination
GROUP_KEYS = ["workload", "device", "config_key"]

#: metrics summarised per combination; True = smaller is better
METRICS: dict[str, bool] = {
    "time_to_target_s": True,
    "tokens_to_target": True,
    "energy_to_target_j": True,
    "peak_mem_bytes": True,
    "tokens_per_s": False,
}

#: metrics that are infinite for a cell that did not reach its target
TO_TARGET_METRICS = ("time_to_target_s", "tokens_to_target", "steps_to_target", "energy_to_target_j")

#: columns describing a combination, copied from its first cell when present
_LABEL_COLUMNS = ["scenario", "variant", "techniques", "batch_size", "lr", "baseline", "is_baseline"]

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
            unreached &= _energy_measured(cells)
        values = np.where(unreached, np.inf, values)
    return values[~np.isnan(values)]


def _energy_measured(cells: pd.DataFrame) -> np.ndarray:
    measured = np.ones(len(cells), dtype=bool)
    if "energy_source" in cells.columns:
        measured &= cells["energy_source"].astype("string").fillna("unavailable").ne("unavailable").to_numpy()
    if "energy_j" in cells.columns:
        measured &= pd.to_numeric(cells["energy_j"], errors="coerce").notna().to_numpy()
    return measured


def _median_rows(sorted_samples: np.ndarray) -> np.ndarray:
    """Median of each row of an already sorted 2-D array, tolerant of +inf.

    The midpoint of a finite value and +inf is undefined in the usual sense (it evaluates to inf and
    would call a half-reached combination infinitely slow), so when the upper middle is +inf the
    lower middle is the median.
    """
    n = sorted_samples.shape[1]
    return _median_of_middles(sorted_samples[:, (n - 1) // 2], sorted_samples[:, n // 2])


def _median_of_middles(lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """``_median_rows`` from the lower and upper middle values alone."""
    with np.errstate(invalid="ignore"):
        midpoint = (lower + upper) / 2.0
    return np.where(np.isinf(upper) & ~np.isinf(lower), lower, midpoint)


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


def _seed_is_plain(seed) -> bool:
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
    if _seed_is_plain(seed) and n_resamples * sum(sizes) <= _MAX_CACHED_INDICES:
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


def _bootstrap_many(
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


def _status_counts(statuses: pd.Series) -> str:
    counts = statuses.astype("string").fillna("unknown").value_counts()
    # "reached" first, then the rest alphabetically, so the string is stable across runs
    order = sorted(counts.index, key=lambda status: (status != "reached", status))
    return " ".join(f"{status}:{int(counts[status])}" for status in order)


def _require_columns(cells: pd.DataFrame, columns: Sequence[str]) -> None:
    missing = [column for column in columns if column not in cells.columns]
    if missing:
        raise ValueError(f"cells: {', '.join(missing)}: column missing")


# -- per-combination summary ------------------------------------------------------------------


def _status_counts_of(statuses: tuple[np.ndarray, np.ndarray], positions: np.ndarray) -> str:
    """``_status_counts`` of the cells at ``positions`` from the table's factorized statuses."""
    codes, names = statuses
    counts = np.bincount(codes[positions], minlength=len(names))
    present = np.flatnonzero(counts)
    order = sorted(present, key=lambda code: (names[code] != "reached", names[code]))
    return " ".join(f"{names[code]}:{int(counts[code])}" for code in order)


class _Combinations:
    """The table grouped by ``GROUP_KEYS`` once: keys in ``groupby`` order and each group's row positions.

    Per-cell quantities (reached, metric values) are computed once for the whole table and sliced
    per group; element by element they are what ``reached_mask`` and ``metric_samples`` give on a
    group, so the results are unchanged.
    """

    def __init__(self, cells: pd.DataFrame):
        self.cells = cells
        grouped = cells.groupby(GROUP_KEYS, sort=True, dropna=False)
        self.group_ids = grouped.ngroup().to_numpy()
        self.keys = list(grouped.size().index) if len(cells) else []
        order = np.argsort(self.group_ids, kind="stable")  # stable: rows keep their table order
        bounds = np.searchsorted(self.group_ids[order], np.arange(len(self.keys) + 1))
        self.positions = [order[bounds[i] : bounds[i + 1]] for i in range(len(self.keys))]
        self.reached = reached_mask(cells).to_numpy(dtype=bool)
        first_rows = cells.iloc[[positions[0] for positions in self.positions]]
        label_columns = [c for c in GROUP_KEYS + _LABEL_COLUMNS if c in cells.columns]
        if len(cells) and cells.iloc[0].dtype == cells[label_columns].iloc[0].dtype:
            # a row read from fewer columns has the same values as long as its common dtype is the
            # same (object when any column is text): reading 10 columns instead of 50 per row
            first_rows = first_rows[label_columns]
        self._first_rows = first_rows
        self._first_row_cache: dict[int, pd.Series] = {}
        self._values: dict[str, np.ndarray | None] = {}
        self._energy_measured: np.ndarray | None = None

    def first_row(self, index: int) -> pd.Series:
        if index not in self._first_row_cache:  # read by summarize and again by speedups
            self._first_row_cache[index] = self._first_rows.iloc[index]
        return self._first_row_cache[index]

    def values(self, metric: str) -> np.ndarray | None:
        """``metric_samples`` of the whole table before NaN is dropped (None: column missing)."""
        if metric not in self._values:
            if metric not in self.cells.columns:
                self._values[metric] = None
            else:
                values = pd.to_numeric(self.cells[metric], errors="coerce").to_numpy(
                    dtype=np.float64, na_value=np.nan
                )
                if metric in TO_TARGET_METRICS:
                    unreached = ~self.reached
                    if metric == "energy_to_target_j":
                        if self._energy_measured is None:
                            self._energy_measured = _energy_measured(self.cells)
                        unreached &= self._energy_measured
                    values = np.where(unreached, np.inf, values)
                self._values[metric] = values
        return self._values[metric]

    def samples(self, metric: str, index: int) -> np.ndarray:
        """``metric_samples`` of group ``index``."""
        values = self.values(metric)
        if values is None:
            return np.array([], dtype=np.float64)
        group_values = values[self.positions[index]]
        return group_values[~np.isnan(group_values)]


def summarize(
    cells: pd.DataFrame,
    *,
    aggregate: str = "median",
    confidence: float = CONFIDENCE,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
    _combinations: _Combinations | None = None,
) -> pd.DataFrame:
    """One row per combination (``workload, device, config_key``) summarising its seeds and repeats.

    Columns: ``workload, device, config_key, scenario, variant, techniques, batch_size, lr, baseline,
    is_baseline, n_seeds, n_cells, n_reached, status_counts, reached``, then for every metric in
    ``METRICS`` (``time_to_target_s, tokens_to_target, energy_to_target_j, peak_mem_bytes,
    tokens_per_s``) the point estimate under the metric's own name plus ``<metric>_ci_low``,
    ``<metric>_ci_high`` and ``<metric>_n`` (values that were measured), and
    ``best_val_loss, final_val_loss`` (medians).

    ``reached`` is False when fewer than half of the cells reached; to-target metrics count an
    unreached cell as +inf, so their estimate is +inf for a combination that did not reach.
    ``aggregate`` is ``"median"`` (default) or ``"olympic"``; intervals are percentile bootstrap
    intervals at ``confidence``, seeded by ``seed`` (NaN with fewer than two measured values).
    """
    _require_columns(cells, GROUP_KEYS)
    # leaderboard passes the grouping it already made for summarize
    combos = _combinations if _combinations is not None else _Combinations(cells)
    statuses = None
    if "status" in cells.columns:
        status_codes, status_names = pd.factorize(cells["status"].astype("string").fillna("unknown"))
        statuses = (status_codes, np.asarray(status_names, dtype=object))
    n_seeds = (
        pd.Series(cells["seed"].to_numpy()).groupby(combos.group_ids).nunique().to_numpy()
        if "seed" in cells.columns
        else None
    )
    rows = []
    for index, (workload, device, config_key) in enumerate(combos.keys):
        first = combos.first_row(index)
        positions = combos.positions[index]
        row: dict = {"workload": workload, "device": device, "config_key": config_key}
        for column in _LABEL_COLUMNS:
            row[column] = first[column] if column in cells.columns else None
        if row["variant"] is None:
            row["variant"] = row["techniques"]
        n_reached = int(combos.reached[positions].sum())
        row["n_seeds"] = int(n_seeds[index]) if n_seeds is not None else len(positions)
        row["n_cells"] = len(positions)
        row["n_reached"] = n_reached
        row["status_counts"] = _status_counts_of(statuses, positions) if statuses is not None else ""
        row["reached"] = 2 * n_reached >= len(positions) and n_reached > 0
        rows.append(row)
    # one pass per metric over the whole table instead of one pandas filter per combination
    for metric in METRICS:
        samples_per_group = [combos.samples(metric, index) for index in range(len(combos.keys))]
        estimates = [aggregate_value(samples, aggregate) for samples in samples_per_group]
        if _seed_is_plain(seed):
            low, high = _bootstrap_many(samples_per_group, aggregate, confidence, n_resamples, seed)
            intervals = list(zip(low.tolist(), high.tolist(), strict=True))
        else:
            intervals = None  # drawn below, combination by combination in the original order
        for index, row in enumerate(rows):
            row[metric] = estimates[index]
            if intervals is not None:
                row[f"{metric}_ci_low"], row[f"{metric}_ci_high"] = intervals[index]
            row[f"{metric}_n"] = int(np.isfinite(samples_per_group[index]).sum())
    if not _seed_is_plain(seed):
        for index, row in enumerate(rows):
            for metric in METRICS:
                row[f"{metric}_ci_low"], row[f"{metric}_ci_high"] = bootstrap_ci(
                    combos.samples(metric, index),
                    aggregate=aggregate,
                    confidence=confidence,
                    n_resamples=n_resamples,
                    seed=seed,
                )
    for loss in ("best_val_loss", "final_val_loss"):
        for index, row in enumerate(rows):
            row[loss] = median(combos.samples(loss, index))
    columns = (
        GROUP_KEYS
        + _LABEL_COLUMNS
        + ["n_seeds", "n_cells", "n_reached", "status_counts", "reached"]
        + [f"{m}{suffix}" for m in METRICS for suffix in ("", "_ci_low", "_ci_high", "_n")]
        + ["best_val_loss", "final_val_loss"]
    )
    return pd.DataFrame(rows, columns=columns)


# -- speedups against the scenario's baseline ---------------------------------------------------


def _baseline_cells(cells: pd.DataFrame, workload, device, baseline_label, scenario=None) -> pd.DataFrame:
    """The cells of the baseline combination for one workload and device (may be empty)."""
    if "is_baseline" not in cells.columns:
        return cells.iloc[0:0]
    is_baseline = cells["is_baseline"].fillna(False).astype(bool)
    candidates = cells[is_baseline & (cells["workload"] == workload) & (cells["device"] == device)]
    if candidates["config_key"].nunique() > 1 and scenario is not None and "scenario" in candidates.columns:
        # several scenarios loaded together: a combination's baseline is its own scenario's
        same_scenario = candidates[candidates["scenario"] == scenario]
        if len(same_scenario):
            candidates = same_scenario
    if candidates["config_key"].nunique() > 1 and baseline_label is not None:
        # several scenarios with different baselines loaded together: pick the named one
        for label_column in ("variant", "techniques"):
            if label_column in candidates.columns:
                named = candidates[candidates[label_column] == baseline_label]
                if len(named):
                    candidates = named
                    break
    if candidates["config_key"].nunique() > 1:
        return cells.iloc[0:0]  # ambiguous: no speedup rather than a wrong one
    return candidates


def _ratio_many(
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


def speedups(
    cells: pd.DataFrame,
    metric: str = "time_to_target_s",
    *,
    aggregate: str = "median",
    confidence: float = CONFIDENCE,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
    _combinations: _Combinations | None = None,
) -> pd.DataFrame:
    """Speedup of every combination against its scenario's baseline on the same workload and device.

    ``speedup = baseline / combination`` for smaller-is-better metrics (2.0 = twice as fast) and
    ``combination / baseline`` for ``tokens_per_s``; exactly 1.0 for the baseline itself; 0.0 when the
    combination did not reach and the baseline did, NaN when neither reached or no baseline is in
    the table. With several scenarios loaded together, each combination is compared with its own
    scenario's baseline. The interval is a
    two-sample bootstrap of the ratio of aggregates. Columns: ``workload, device, config_key,
    variant, baseline, metric, speedup, speedup_ci_low, speedup_ci_high``.
    """
    _require_columns(cells, GROUP_KEYS)
    if metric not in METRICS:
        raise ValueError(f"metric: expected one of {', '.join(METRICS)}, got {metric!r}")
    smaller_is_better = METRICS[metric]
    # leaderboard passes the grouping it already made for summarize
    combos = _combinations if _combinations is not None else _Combinations(cells)
    # the baseline cells are few: search them, not the whole table, and once per distinct question
    pool_positions = (
        np.flatnonzero(cells["is_baseline"].fillna(False).astype(bool).to_numpy())
        if "is_baseline" in cells.columns
        else np.array([], dtype=np.int64)
    )
    # indexed by table position, so the cells _baseline_cells picks are positions directly
    baseline_pool = cells.iloc[pool_positions].set_axis(pool_positions)
    baseline_lookup: dict = {}
    pairs = []  # per combination: (value, low, high) or (numerator, denominator) still to resample
    rows = []
    for index, (workload, device, config_key) in enumerate(combos.keys):
        first = combos.first_row(index)
        variant = first["variant"] if "variant" in cells.columns else first.get("techniques")
        baseline_label = first["baseline"] if "baseline" in cells.columns else None
        scenario = first["scenario"] if "scenario" in cells.columns else None
        question = (workload, device, baseline_label, scenario)
        try:
            base_positions, base_keys = baseline_lookup[question]
        except (KeyError, TypeError):  # TypeError: an unhashable label, not looked up twice
            base = _baseline_cells(baseline_pool, workload, device, baseline_label, scenario)
            base_positions = base.index.to_numpy(dtype=np.int64)
            base_keys = base["config_key"]
            with contextlib.suppress(TypeError):
                baseline_lookup[question] = (base_positions, base_keys)
        ours = combos.samples(metric, index)
        values = combos.values(metric)
        if values is None:
            theirs = np.array([], dtype=np.float64)
        else:
            theirs = values[base_positions]
            theirs = theirs[~np.isnan(theirs)]
        if len(base_positions) and (base_keys == config_key).all():
            pairs.append((1.0, 1.0, 1.0))  # the baseline against itself, by definition
        elif smaller_is_better:
            pairs.append((theirs, ours))
        else:
            pairs.append((ours, theirs))
        rows.append(
            {
                "workload": workload,
                "device": device,
                "config_key": config_key,
                "variant": variant,
                "baseline": baseline_label,
                "metric": metric,
            }
        )
    options = dict(aggregate=aggregate, confidence=confidence, n_resamples=n_resamples, seed=seed)
    if _seed_is_plain(seed):
        results = _ratio_many(pairs, **options)
    else:  # a Generator: draw combination by combination, in order
        results = [pair if len(pair) == 3 else ratio_ci(*pair, **options) for pair in pairs]
    for row, (value, low, high) in zip(rows, results, strict=True):
        row["speedup"], row["speedup_ci_low"], row["speedup_ci_high"] = value, low, high
    return pd.DataFrame(
        rows,
        columns=GROUP_KEYS
        + ["variant", "baseline", "metric", "speedup", "speedup_ci_low", "speedup_ci_high"],
    )


# -- the ranked table -------------------------------------------------------------------------

#: columns of ``leaderboard`` in order (the dashboard shows them as they are)
LEADERBOARD_COLUMNS = [
    "rank",
    "workload",
    "device",
    "variant",
    "techniques",
    "n_seeds",
    "n_cells",
    "n_reached",
    "status_counts",
    "reached",
    "time_to_target_s",
    "time_to_target_s_ci_low",
    "time_to_target_s_ci_high",
    "tokens_to_target",
    "tokens_to_target_ci_low",
    "tokens_to_target_ci_high",
    "energy_to_target_j",
    "energy_to_target_j_ci_low",
    "energy_to_target_j_ci_high",
    "peak_mem_bytes",
    "peak_mem_bytes_ci_low",
    "peak_mem_bytes_ci_high",
    "tokens_per_s",
    "tokens_per_s_ci_low",
    "tokens_per_s_ci_high",
    "speedup",
    "speedup_ci_low",
    "speedup_ci_high",
    "best_val_loss",
    "final_val_loss",
    "is_baseline",
    "baseline",
    "scenario",
    "config_key",
]


def leaderboard(
    cells: pd.DataFrame,
    rank_by: str = "time_to_target_s",
    *,
    aggregate: str = "median",
    confidence: float = CONFIDENCE,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
) -> pd.DataFrame:
    """The ranked table: one row per combination, best first within each workload × device.

    Ranks (``rank``, 1 = best) are assigned per ``workload, device`` by the aggregate of ``rank_by``
    (smaller first, larger first for ``tokens_per_s``). Combinations that did not reach (fewer than
    half of their cells reached) rank after all that did, ordered by their median best validation
    loss; combinations whose ``rank_by`` was not measured (NaN, e.g. energy on a machine without a
    sensor) rank after the measured ones. ``speedup`` is against the baseline for ``rank_by``
    (see ``speedups``). Columns: ``LEADERBOARD_COLUMNS``; rows sorted by workload, device, rank.
    """
    if rank_by not in METRICS:
        raise ValueError(f"rank_by: expected one of {', '.join(METRICS)}, got {rank_by!r}")
    options = dict(aggregate=aggregate, confidence=confidence, n_resamples=n_resamples, seed=seed)
    _require_columns(cells, GROUP_KEYS)
    combos = _Combinations(cells)
    summary = summarize(cells, **options, _combinations=combos)
    if summary.empty:
        return pd.DataFrame(columns=LEADERBOARD_COLUMNS)
    speedup = speedups(cells, rank_by, **options, _combinations=combos)
    table = summary.merge(
        speedup[GROUP_KEYS + ["speedup", "speedup_ci_low", "speedup_ci_high"]], on=GROUP_KEYS, how="left"
    )
    value = table[rank_by].astype(float)
    sign = 1.0 if METRICS[rank_by] else -1.0
    table["_unreached"] = ~table["reached"].astype(bool)
    table["_unmeasured"] = value.isna()
    table["_key"] = (sign * value).fillna(np.inf)
    table["_loss"] = table["best_val_loss"].astype(float).fillna(np.inf)
    table = table.sort_values(
        ["workload", "device", "_unreached", "_unmeasured", "_key", "_loss", "variant"], kind="stable"
    )
    table["rank"] = table.groupby(["workload", "device"], sort=False).cumcount() + 1
    return table[LEADERBOARD_COLUMNS].reset_index(drop=True)


# -- AlgoPerf performance profiles ------------------------------------------------------------


def _submission_times(cells_or_summary: pd.DataFrame, metric: str, by: str, aggregate: str) -> pd.DataFrame:
    """Wide table: index = submission label (``by``), columns = problems (``workload/device``)."""
    if "n_cells" in cells_or_summary.columns:
        summary = cells_or_summary  # already one row per combination
    else:
        summary = summarize(cells_or_summary, aggregate=aggregate, n_resamples=2)
    if by not in summary.columns:
        raise ValueError(f"by: column {by!r} missing")
    frame = summary.assign(problem=summary["workload"].astype(str) + "/" + summary["device"].astype(str))
    values = frame[metric].astype(float)
    if not METRICS.get(metric, True):
        values = 1.0 / values  # larger-is-better metrics: compare their reciprocals
    # an unreached combination has +inf already; a submission absent from a problem is +inf too
    wide = frame.assign(_value=values).pivot_table(
        index=by, columns="problem", values="_value", aggfunc="min", dropna=False
    )
    return wide.fillna(np.inf)


def performance_ratios(
    cells_or_summary: pd.DataFrame,
    metric: str = "time_to_target_s",
    *,
    by: str = "variant",
    aggregate: str = "median",
) -> pd.DataFrame:
    """Ratio of each submission's aggregate ``metric`` to the best on each problem (workload/device).

    Index: submission label (column ``by``, default ``variant``); columns: ``workload/device``.
    +inf where a submission did not reach or did not run on a problem; a problem nobody reached
    gives +inf for everyone.
    """
    wide = _submission_times(cells_or_summary, metric, by, aggregate)
    best = wide.min(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = wide / best
    ratios.loc[:, ~np.isfinite(best.to_numpy())] = np.inf  # nobody reached: no finite ratio
    return ratios.fillna(np.inf)


def performance_profile(
    cells_or_summary: pd.DataFrame,
    metric: str = "time_to_target_s",
    *,
    by: str = "variant",
    max_tau: float = 4.0,
    n_points: int = 121,
    aggregate: str = "median",
) -> pd.DataFrame:
    """AlgoPerf performance profile: rho_s(tau) = fraction of problems where ratio_s <= tau.

    Accepts cells or the output of ``summarize``. Returns a long table with columns
    ``submission, tau, rho`` for ``n_points`` values of tau evenly spaced on [1, ``max_tau``].
    """
    ratios = performance_ratios(cells_or_summary, metric, by=by, aggregate=aggregate)
    taus = np.linspace(1.0, max_tau, n_points)
    rows = []
    n_problems = ratios.shape[1]
    for submission, ratio_row in ratios.iterrows():
        values = ratio_row.to_numpy(dtype=np.float64)
        for tau in taus:
            rho = float((values <= tau).sum() / n_problems) if n_problems else math.nan
            rows.append({"submission": submission, "tau": float(tau), "rho": rho})
    return pd.DataFrame(rows, columns=["submission", "tau", "rho"])


def benchmark_score(
    cells_or_summary: pd.DataFrame,
    metric: str = "time_to_target_s",
    *,
    by: str = "variant",
    max_tau: float = 4.0,
    aggregate: str = "median",
) -> pd.DataFrame:
    """AlgoPerf benchmark score: area under the performance profile on [1, max_tau] / (max_tau - 1).

    The profile is a step function, so the area is computed exactly: each problem contributes
    ``(max_tau - clip(ratio, 1, max_tau)) / (max_tau - 1)`` divided by the number of problems.
    1.0 = best on every problem; 0.0 = never within ``max_tau`` of the best. Columns:
    ``submission, score, n_problems, n_within_max_tau``, best score first.
    """
    ratios = performance_ratios(cells_or_summary, metric, by=by, aggregate=aggregate)
    n_problems = ratios.shape[1]
    rows = []
    for submission, ratio_row in ratios.iterrows():
        values = np.clip(ratio_row.to_numpy(dtype=np.float64), 1.0, max_tau)
        area = float(np.sum(max_tau - values)) / (max_tau - 1.0)
        rows.append(
            {
                "submission": submission,
                "score": area / n_problems if n_problems else math.nan,
                "n_problems": n_problems,
                "n_within_max_tau": int((ratio_row.to_numpy(dtype=np.float64) <= max_tau).sum()),
            }
        )
    table = pd.DataFrame(rows, columns=["submission", "score", "n_problems", "n_within_max_tau"])
    return table.sort_values(["score", "submission"], ascending=[False, True], kind="stable").reset_index(
        drop=True
    )
