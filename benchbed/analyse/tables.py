"""Tables over the cells table: one row per combination, speedups against the baseline, the ranking.

Everything here reads the ``cells`` table (``benchbed.results.store.load(...).cells``, columns in
docs/contracts.md) and returns DataFrames; nothing imports training code. Seeds and repeats of one
configuration are grouped by ``workload, device, config_key`` (a "combination").

A cell that did not reach its target is infinitely slow (AlgoPerf: Dahl et al. 2023, arXiv:2306.07179).
A combination reaches only when more than half of its seeds (studies, under the external ruleset)
reached; one that reached on exactly half of an even number is "did not reach", like one that
reached on fewer, and ranks after every combination that did. Point estimates and intervals come
from ``benchbed.analyse.bootstrap``.

Tuned configurations (``ruleset = external``) are ranked on their studies' winning trials: every
function here first calls ``benchbed.analyse.tuning.ranking_cells``, after which a tuned
configuration's ``config_key`` is its ``tuning_key`` and each of its rows is one study. Each
combination carries its ``ruleset`` and tuning cost (``n_trials, tuning_cost_s, tuning_cost_j``).

The column names of the returned tables are stable; docs/gate.md lists them.

Large tables (thousands of combinations) are handled in one pass: the table is grouped once
(``_Combinations``), per-cell values are computed for the whole table and sliced per group, and the
bootstrap resamples groups of the same size together.

About 430 lines, over the ~400 of the layout: ``leaderboard`` hands its one grouping pass
(``_Combinations``) to ``summarize`` and ``speedups``; split across modules, that private object
would have to become an interface.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import numpy as np
import pandas as pd

from benchbed.analyse.bootstrap import (
    CONFIDENCE,
    N_RESAMPLES,
    TO_TARGET_METRICS,
    aggregate_value,
    bootstrap_ci,
    bootstrap_many,
    energy_measured,
    median,
    ratio_ci,
    ratio_many,
    reached_mask,
    seed_is_plain,
)
from benchbed.analyse.tuning import RULESETS, cost_sum, is_external, ranking_cells, winners_text

#: seeds and repeats of one configuration on one workload and device form one combination
GROUP_KEYS = ["workload", "device", "config_key"]

#: metrics summarised per combination; True = smaller is better
METRICS: dict[str, bool] = {
    "time_to_target_s": True,
    "tokens_to_target": True,
    "energy_to_target_j": True,
    "peak_mem_bytes": True,
    "tokens_per_s": False,
    # memory by what holds it, measured on every device (benchbed.measure.memory)
    "saved_activation_bytes": True,
    "optimizer_state_bytes": True,
    "grad_bytes": True,
    "param_bytes": True,
}

#: columns describing a combination, copied from its first cell when present
_LABEL_COLUMNS = [
    "scenario",
    "variant",
    "ruleset",
    "techniques",
    "batch_size",
    "lr",
    "baseline",
    "is_baseline",
]
#: the tuning cost of a combination: trials run, and the sums of their training time and energy
COST_COLUMNS = ["n_trials", "tuning_cost_s", "tuning_cost_j", "winners_json"]


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
        self.energy_measured: np.ndarray | None = None

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
                        if self.energy_measured is None:
                            self.energy_measured = energy_measured(self.cells)
                        unreached &= self.energy_measured
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

    Columns: ``workload, device, config_key, scenario, variant, ruleset, techniques, batch_size, lr,
    baseline, is_baseline, n_seeds, n_cells, n_reached, status_counts, reached``, then for every metric in
    ``METRICS`` (``time_to_target_s, tokens_to_target, energy_to_target_j, peak_mem_bytes,
    tokens_per_s``, and the memory columns ``saved_activation_bytes, optimizer_state_bytes,
    grad_bytes, param_bytes``) the point estimate under the metric's own name plus ``<metric>_ci_low``,
    ``<metric>_ci_high`` and ``<metric>_n`` (values that were measured), and
    ``best_val_loss, final_val_loss`` (medians), and the tuning cost ``n_trials, tuning_cost_s,
    tuning_cost_j`` (sums over every trial behind the combination; NaN when a part was not measured)
    and ``winners_json`` (each study's winning values; '' under defaults).

    Under the external ruleset the rows are the studies' winners (``tuning.ranking_cells``), so
    ``n_seeds`` and ``n_cells`` count studies. ``reached`` is True only when more than half of the
    cells reached; to-target metrics count an unreached cell as +inf, so their estimate is +inf for
    a combination that did not reach.
    ``aggregate`` is ``"median"`` (default) or ``"olympic"``; intervals are percentile bootstrap
    intervals at ``confidence``, seeded by ``seed`` (NaN with fewer than two measured values).
    """
    cells = ranking_cells(cells) if _combinations is None else _combinations.cells
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
        row["reached"] = 2 * n_reached > len(positions)  # more than half: half of an even count is not
        rows.append(row)
    # one pass per metric over the whole table instead of one pandas filter per combination
    for metric in METRICS:
        samples_per_group = [combos.samples(metric, index) for index in range(len(combos.keys))]
        estimates = [aggregate_value(samples, aggregate) for samples in samples_per_group]
        if seed_is_plain(seed):
            low, high = bootstrap_many(samples_per_group, aggregate, confidence, n_resamples, seed)
            intervals = list(zip(low.tolist(), high.tolist(), strict=True))
        else:
            intervals = None  # drawn below, combination by combination in the original order
        for index, row in enumerate(rows):
            row[metric] = estimates[index]
            if intervals is not None:
                row[f"{metric}_ci_low"], row[f"{metric}_ci_high"] = intervals[index]
            row[f"{metric}_n"] = int(np.isfinite(samples_per_group[index]).sum())
    if not seed_is_plain(seed):
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
    costs = {column: combos.values(column) for column in ("n_trials", "tuning_cost_s", "tuning_cost_j")}
    external = is_external(cells)
    for index, row in enumerate(rows):
        positions = combos.positions[index]
        for column, values in costs.items():
            row[column] = cost_sum(values[positions]) if values is not None else np.nan
        row["winners_json"] = winners_text(cells.iloc[positions]) if external[positions].any() else ""
    columns = (
        GROUP_KEYS
        + _LABEL_COLUMNS
        + ["n_seeds", "n_cells", "n_reached", "status_counts", "reached"]
        + [f"{m}{suffix}" for m in METRICS for suffix in ("", "_ci_low", "_ci_high", "_n")]
        + ["best_val_loss", "final_val_loss"]
        + COST_COLUMNS
    )
    return pd.DataFrame(rows, columns=columns)


# -- speedups against the scenario's baseline ---------------------------------------------------


def _baseline_cells(
    cells: pd.DataFrame, workload, device, baseline_label, scenario=None, ruleset=None
) -> pd.DataFrame:
    """The cells of the baseline combination for one workload and device (may be empty). Only a
    baseline of the same ruleset counts: a tuned number is never divided by a defaults one."""
    if "is_baseline" not in cells.columns:
        return cells.iloc[0:0]
    is_baseline = cells["is_baseline"].fillna(False).astype(bool)
    candidates = cells[is_baseline & (cells["workload"] == workload) & (cells["device"] == device)]
    if ruleset is not None and "ruleset" in candidates.columns:
        candidates = candidates[candidates["ruleset"] == ruleset]
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
    _combinations: _Combinations | None = None,
) -> pd.DataFrame:
    """Speedup of every combination against its scenario's baseline on the same workload and device.

    Only a baseline of the combination's own ruleset counts (NaN without one).
    ``speedup = baseline / combination`` for smaller-is-better metrics (2.0 = twice as fast) and
    ``combination / baseline`` for ``tokens_per_s``; exactly 1.0 for the baseline itself; 0.0 when the
    combination did not reach and the baseline did, NaN when neither reached or no baseline is in
    the table. With several scenarios loaded together, each combination is compared with its own
    scenario's baseline. The interval is a
    two-sample bootstrap of the ratio of aggregates. Columns: ``workload, device, config_key,
    variant, baseline, metric, speedup, speedup_ci_low, speedup_ci_high``.
    """
    cells = ranking_cells(cells) if _combinations is None else _combinations.cells
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
        ruleset = first["ruleset"] if "ruleset" in cells.columns else None
        question = (workload, device, baseline_label, scenario, ruleset)
        try:
            base_positions, base_keys = baseline_lookup[question]
        except (KeyError, TypeError):  # TypeError: an unhashable label, not looked up twice
            base = _baseline_cells(baseline_pool, workload, device, baseline_label, scenario, ruleset)
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
    if seed_is_plain(seed):
        results = ratio_many(pairs, **options)
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
    "ruleset",
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
    "saved_activation_bytes",
    "saved_activation_bytes_ci_low",
    "saved_activation_bytes_ci_high",
    "optimizer_state_bytes",
    "optimizer_state_bytes_ci_low",
    "optimizer_state_bytes_ci_high",
    "grad_bytes",
    "grad_bytes_ci_low",
    "grad_bytes_ci_high",
    "param_bytes",
    "param_bytes_ci_low",
    "param_bytes_ci_high",
    "speedup",
    "speedup_ci_low",
    "speedup_ci_high",
    "best_val_loss",
    "final_val_loss",
    "is_baseline",
    "baseline",
    "scenario",
    "config_key",
    *COST_COLUMNS,
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
    """The ranked table: one row per combination, best first within each workload × device × ruleset.

    Ranks (``rank``, 1 = best) are assigned per ``workload, device, ruleset`` by the aggregate of
    ``rank_by`` (smaller first, larger first for ``tokens_per_s``): a tuned configuration is ranked
    among tuned ones, a defaults one among defaults ones, never across. Combinations that did not
    reach (no more than half of their cells, or studies, reached) rank after all that did, ordered
    by their median best validation loss; combinations whose ``rank_by`` was not measured (NaN, e.g.
    energy on a machine without a sensor) rank after the measured ones. ``speedup`` is against the
    baseline of the same ruleset for ``rank_by`` (see ``speedups``). Columns:
    ``LEADERBOARD_COLUMNS``; rows sorted by workload, device, ruleset (external first), rank.
    """
    if rank_by not in METRICS:
        raise ValueError(f"rank_by: expected one of {', '.join(METRICS)}, got {rank_by!r}")
    options = dict(aggregate=aggregate, confidence=confidence, n_resamples=n_resamples, seed=seed)
    cells = ranking_cells(cells)
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
    table["ruleset"] = table["ruleset"].fillna("defaults")
    table["_ruleset"] = (
        table["ruleset"].map({name: i for i, name in enumerate(RULESETS)}).fillna(len(RULESETS))
    )
    table = table.sort_values(
        ["workload", "device", "_ruleset", "_unreached", "_unmeasured", "_key", "_loss", "variant"],
        kind="stable",
    )
    table["rank"] = table.groupby(["workload", "device", "ruleset"], sort=False).cumcount() + 1
    return table[LEADERBOARD_COLUMNS].reset_index(drop=True)
