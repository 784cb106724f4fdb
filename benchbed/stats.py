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
"""

from __future__ import annotations

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
    lower = sorted_samples[:, (n - 1) // 2]
    upper = sorted_samples[:, n // 2]
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
    rng = np.random.default_rng(seed)
    resampled = np.sort(rng.choice(samples, size=(n_resamples, samples.size), replace=True), axis=1)
    return _interval(_aggregate_rows(resampled, aggregate), confidence)


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
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = float(
            np.float64(aggregate_value(num, aggregate)) / np.float64(aggregate_value(den, aggregate))
        )
        if num.size < 2 or den.size < 2:
            return ratio, math.nan, math.nan
        rng = np.random.default_rng(seed)
        num_est = _aggregate_rows(np.sort(rng.choice(num, size=(n_resamples, num.size)), axis=1), aggregate)
        den_est = _aggregate_rows(np.sort(rng.choice(den, size=(n_resamples, den.size)), axis=1), aggregate)
        ratios = num_est / den_est
    ratios = ratios[~np.isnan(ratios)]  # inf/inf: both sides unreached in that resample
    if ratios.size == 0:
        return ratio, math.nan, math.nan
    low, high = _interval(ratios, confidence)
    return ratio, low, high


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


def summarize(
    cells: pd.DataFrame,
    *,
    aggregate: str = "median",
    confidence: float = CONFIDENCE,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
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
    rows = []
    for (workload, device, config_key), group in cells.groupby(GROUP_KEYS, sort=True, dropna=False):
        first = group.iloc[0]
        row: dict = {"workload": workload, "device": device, "config_key": config_key}
        for column in _LABEL_COLUMNS:
            row[column] = first[column] if column in group.columns else None
        if row["variant"] is None:
            row["variant"] = row["techniques"]
        n_reached = int(reached_mask(group).sum())
        row["n_seeds"] = int(group["seed"].nunique()) if "seed" in group.columns else len(group)
        row["n_cells"] = len(group)
        row["n_reached"] = n_reached
        row["status_counts"] = _status_counts(group["status"]) if "status" in group.columns else ""
        row["reached"] = 2 * n_reached >= len(group) and n_reached > 0
        for metric in METRICS:
            samples = metric_samples(group, metric)
            row[metric] = aggregate_value(samples, aggregate)
            row[f"{metric}_ci_low"], row[f"{metric}_ci_high"] = bootstrap_ci(
                samples, aggregate=aggregate, confidence=confidence, n_resamples=n_resamples, seed=seed
            )
            row[f"{metric}_n"] = int(np.isfinite(samples).sum())
        for loss in ("best_val_loss", "final_val_loss"):
            row[loss] = median(metric_samples(group, loss))
        rows.append(row)
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


def speedups(
    cells: pd.DataFrame,
    metric: str = "time_to_target_s",
    *,
    aggregate: str = "median",
    confidence: float = CONFIDENCE,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
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
    rows = []
    for (workload, device, config_key), group in cells.groupby(GROUP_KEYS, sort=True, dropna=False):
        first = group.iloc[0]
        variant = first["variant"] if "variant" in group.columns else first.get("techniques")
        baseline_label = first["baseline"] if "baseline" in group.columns else None
        scenario = first["scenario"] if "scenario" in group.columns else None
        base = _baseline_cells(cells, workload, device, baseline_label, scenario)
        ours = metric_samples(group, metric)
        theirs = metric_samples(base, metric)
        if len(base) and (base["config_key"] == config_key).all():
            value, low, high = 1.0, 1.0, 1.0  # the baseline against itself, by definition
        elif smaller_is_better:
            value, low, high = ratio_ci(
                theirs, ours, aggregate=aggregate, confidence=confidence, n_resamples=n_resamples, seed=seed
            )
        else:
            value, low, high = ratio_ci(
                ours, theirs, aggregate=aggregate, confidence=confidence, n_resamples=n_resamples, seed=seed
            )
        rows.append(
            {
                "workload": workload,
                "device": device,
                "config_key": config_key,
                "variant": variant,
                "baseline": baseline_label,
                "metric": metric,
                "speedup": value,
                "speedup_ci_low": low,
                "speedup_ci_high": high,
            }
        )
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
    summary = summarize(cells, **options)
    if summary.empty:
        return pd.DataFrame(columns=LEADERBOARD_COLUMNS)
    speedup = speedups(cells, rank_by, **options)
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
