"""The CI regression gate: compare a candidate's results with a baseline's, cell by cell.

``benchbed gate BASELINE_DIR CANDIDATE_DIR`` matches cells by ``config_key`` (the configuration,
never the run id) and gives every cell × metric one verdict:

- deterministic metrics (``tokens_to_target, steps_to_target, final_val_loss``): on the CPU a fixed
  seed reproduces them, so seed by seed they must be equal within a stated tolerance; a worse value
  is a regression, a better one an improvement. On other devices (non-deterministic kernels) they
  are judged like noisy metrics.
- noisy metrics (``time_to_target_s, tokens_per_s, energy_to_target_j, peak_mem_bytes``): a
  regression only when the ratio of medians passes a threshold (5% time, 10% memory by default)
  *and* a one-sided Mann-Whitney U test over seeds and repeats gives p < 0.01, as asv does
  (ratio threshold plus a significance test) and PyTorch's dashboard argues (one noisy sample is
  not a regression). A ratio over the threshold without significance is "suspicious". The exact
  test cannot reach p < 0.01 with fewer than 5 samples per side (the smallest p with 4 and 4 is
  1/70), so fewer samples give "insufficient_data", which fails only under ``--strict``.
- ``reached``: a configuration that reached its target before (more than half of its cells) and
  does not now is a regression.
- ``cells``: the gate fails closed. A candidate cell that produced no measurement (status
  ``error``, ``timeout``, ``oom`` or ``killed``, or absent) where the baseline cell of the same
  seed and repeat had one is a regression, and so is a configuration of the baseline the candidate
  does not have at all (``allow_missing`` makes that insufficient data, for configurations removed
  on purpose). Such cells add no sample to any metric (they are not "did not reach": nothing was
  measured), and a metric measured in the baseline but not in the candidate is a regression too.

Tuning rulesets (docs/gate.md): both tables go through ``benchbed.analyse.tuning.ranking_cells``
first, so a tuned configuration is matched by its ``tuning_key``, with its studies' winners as
samples, and judged as noisy (winners are picked by measured time); defaults never match external.

Verdicts: ``ok, regression, suspicious, improvement, insufficient_data, not_measured``
(``not_measured`` only when neither side measured the metric: one this machine cannot measure).
``failed`` says whether they fail the gate (any regression; under ``strict`` also insufficient
data). Fixed-seed equality needs the same torch thread count on both sides (CPU curves are
bitwise-reproducible only at a fixed count); where the ``threads`` columns differ the deterministic
metrics are judged as noisy ones. Mann & Whitney 1947, "On a test of whether one of two random
variables is stochastically larger than the other".

This module decides; ``benchbed.present.gate_cli`` writes the markdown, JSON and benchmark-action
outputs and owns the command line (exit code 1 on a failed gate, 0 otherwise, 2 on bad input).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import mannwhitneyu

from benchbed.analyse.bootstrap import TO_TARGET_METRICS, median, metric_samples, reached_mask
from benchbed.analyse.tuning import ranking_cells
from benchbed.results import store
from benchbed.results.schema import FAILED_STATUSES

VERDICTS = ("regression", "insufficient_data", "suspicious", "improvement", "ok", "not_measured")

#: metric -> (smaller_is_better, the GateThresholds field that applies)
NOISY_METRICS: dict[str, tuple[bool, str]] = {
    "time_to_target_s": (True, "time_threshold"),
    "tokens_per_s": (False, "throughput_threshold"),
    "energy_to_target_j": (True, "energy_threshold"),
    "peak_mem_bytes": (True, "memory_threshold"),
}
DETERMINISTIC_METRICS: dict[str, tuple[bool, str]] = {
    "tokens_to_target": (True, "count_rtol"),
    "steps_to_target": (True, "count_rtol"),
    "final_val_loss": (True, "loss_rtol"),
}


@dataclasses.dataclass(frozen=True)
class GateThresholds:
    """What counts as a change. The defaults are the gate's; ``benchbed gate`` flags override them."""

    #: relative change of the median that counts, per noisy metric
    time_threshold: float = 0.05
    throughput_threshold: float = 0.05
    energy_threshold: float = 0.05
    memory_threshold: float = 0.10
    #: a non-deterministic device's "deterministic" metrics are judged with this threshold
    nondeterministic_threshold: float = 0.05
    #: significance level of the one-sided Mann-Whitney U test
    alpha: float = 0.01
    #: samples per side below which a noisy verdict is insufficient_data
    min_samples: int = 5
    #: tokens and steps are integers: a fixed seed on the CPU reproduces them
    count_rtol: float = 0.0
    #: float reductions may differ in the last bits between builds
    loss_rtol: float = 1e-4


#: devices whose fixed-seed runs are reproducible (deterministic kernels)
DETERMINISTIC_DEVICES = ("cpu",)

COMPARE_COLUMNS = [
    "workload",
    "device",
    "host_kind",
    "variant",
    "ruleset",
    "config_key",
    "metric",
    "kind",
    "baseline_value",
    "candidate_value",
    "ratio",
    "threshold",
    "p_value",
    "n_baseline",
    "n_candidate",
    "verdict",
    "note",
]


class GateInputError(Exception):
    """Bad input; the message is the one line printed after ``benchbed gate: ``."""


# -- single comparisons -----------------------------------------------------------------------


def _noisy_verdict(
    base: np.ndarray,
    cand: np.ndarray,
    smaller_is_better: bool,
    threshold: float,
    alpha: float,
    min_samples: int,
) -> dict:
    """Verdict for one noisy metric from the two samples (NaN dropped, +inf = did not reach)."""
    out = {"p_value": math.nan, "ratio": math.nan, "note": ""}
    out["baseline_value"] = median(base)
    out["candidate_value"] = median(cand)
    if base.size == 0 and cand.size == 0:
        return {**out, "verdict": "not_measured", "note": "NaN on both sides"}
    if cand.size == 0:
        return {**out, "verdict": "regression", "note": "measured in the baseline, not in the candidate"}
    if base.size == 0:
        return {**out, "verdict": "insufficient_data", "note": "not measured in the baseline"}
    if np.isinf(base).all() and np.isinf(cand).all():
        return {**out, "verdict": "ok", "note": "target reached on neither side"}
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = float(np.float64(out["candidate_value"]) / np.float64(out["baseline_value"]))
    out["ratio"] = ratio
    # "worse" means slower / hungrier: ratio above 1+t, or below 1/(1+t) for larger-is-better
    limit = 1.0 + threshold
    worse = ratio > limit if smaller_is_better else ratio < 1.0 / limit
    better = ratio < 1.0 / limit if smaller_is_better else ratio > limit
    if base.size < min_samples or cand.size < min_samples:
        note = f"{min(base.size, cand.size)} samples on one side; the test needs {min_samples} to reach p < {alpha:g}"
        return {**out, "verdict": "insufficient_data", "note": note}
    worse_alternative = "greater" if smaller_is_better else "less"
    better_alternative = "less" if smaller_is_better else "greater"
    p_worse = float(mannwhitneyu(cand, base, alternative=worse_alternative).pvalue)
    p_better = float(mannwhitneyu(cand, base, alternative=better_alternative).pvalue)
    if worse:
        out["p_value"] = p_worse
        if p_worse < alpha:
            return {**out, "verdict": "regression"}
        return {
            **out,
            "verdict": "suspicious",
            "note": f"over the threshold but p = {p_worse:.3g} >= {alpha:g}",
        }
    if better and p_better < alpha:
        return {**out, "p_value": p_better, "verdict": "improvement"}
    return {**out, "p_value": p_worse, "verdict": "ok"}


def _per_seed_medians(cells: pd.DataFrame, metric: str) -> pd.Series:
    """The metric per seed (median over repeats); unreached = +inf for to-target metrics."""
    seeds = cells["seed"] if "seed" in cells.columns else pd.Series(0, index=cells.index)
    values = pd.to_numeric(cells[metric], errors="coerce").astype(float) if metric in cells.columns else None
    if values is None:
        return pd.Series(dtype=float)
    if metric in TO_TARGET_METRICS:
        values = values.where(reached_mask(cells), np.inf)
    frame = pd.DataFrame({"seed": seeds.to_numpy(), "value": values.to_numpy()}).dropna()
    return frame.groupby("seed")["value"].agg(median)


def _deterministic_verdict(
    base_cells: pd.DataFrame, cand_cells: pd.DataFrame, metric: str, smaller_is_better: bool, rtol: float
) -> dict:
    """Seed-by-seed equality within ``rtol``; the worst seed decides."""
    base = _per_seed_medians(base_cells, metric)
    cand = _per_seed_medians(cand_cells, metric)
    out = {
        "baseline_value": median(base.to_numpy()),
        "candidate_value": median(cand.to_numpy()),
        "p_value": math.nan,
        "ratio": math.nan,
        "note": "",
    }
    common = base.index.intersection(cand.index)
    if base.empty and cand.empty:
        return {**out, "verdict": "not_measured", "note": "NaN on both sides"}
    lost = [str(seed) for seed in base.index.difference(cand.index)]
    if lost:
        note = f"seed(s) {', '.join(lost)} measured in the baseline, not in the candidate"
        return {**out, "verdict": "regression", "note": note}
    if len(common) == 0:
        return {**out, "verdict": "insufficient_data", "note": "not measured in the baseline"}
    b = base.loc[common].to_numpy(dtype=np.float64)
    c = cand.loc[common].to_numpy(dtype=np.float64)
    if np.isinf(b).all() and np.isinf(c).all():
        return {**out, "verdict": "ok", "note": "target reached on neither side"}
    with np.errstate(divide="ignore", invalid="ignore"):
        out["ratio"] = float(np.float64(median(c)) / np.float64(median(b)))
        both_inf = np.isinf(b) & np.isinf(c)
        difference = np.where(both_inf, 0.0, c - b)
        tolerance = rtol * np.abs(np.where(np.isinf(b), 0.0, b))
    if not smaller_is_better:
        difference = -difference
    worse = difference > tolerance
    better = difference < -tolerance
    seeds = [str(seed) for seed in common]
    if worse.any():
        changed = ", ".join(seeds[i] for i in np.flatnonzero(worse))
        return {**out, "verdict": "regression", "note": f"worse beyond rtol {rtol:g} for seed(s) {changed}"}
    if better.any():
        changed = ", ".join(seeds[i] for i in np.flatnonzero(better))
        return {**out, "verdict": "improvement", "note": f"better beyond rtol {rtol:g} for seed(s) {changed}"}
    return {**out, "verdict": "ok", "note": f"equal within rtol {rtol:g} on {len(common)} seed(s)"}


def _reached_verdict(base_cells: pd.DataFrame, cand_cells: pd.DataFrame, deterministic: bool) -> dict:
    """Reached before and not now = regression (and the reverse an improvement)."""
    base_reached = reached_mask(base_cells)
    cand_reached = reached_mask(cand_cells)
    base_fraction = float(base_reached.mean()) if len(base_cells) else math.nan
    cand_fraction = float(cand_reached.mean()) if len(cand_cells) else math.nan
    # more than half reached (half of an even count is not), as in benchbed.analyse.tables
    base_ok = 2 * int(base_reached.sum()) > len(base_cells)
    cand_ok = 2 * int(cand_reached.sum()) > len(cand_cells)
    out = {
        "baseline_value": base_fraction,
        "candidate_value": cand_fraction,
        "ratio": math.nan,
        "p_value": math.nan,
        "note": f"fraction of cells that reached: {base_fraction:.2f} -> {cand_fraction:.2f}",
    }
    if base_ok and not cand_ok:
        return {**out, "verdict": "regression"}
    if deterministic and "seed" in base_cells.columns and "seed" in cand_cells.columns:
        # a fixed seed on a deterministic device that reached every time before must still reach
        base_by_seed = base_reached.groupby(base_cells["seed"]).all()
        cand_by_seed = cand_reached.groupby(cand_cells["seed"]).all()
        common = base_by_seed.index.intersection(cand_by_seed.index)
        lost = [str(seed) for seed in common if base_by_seed[seed] and not cand_by_seed[seed]]
        if lost:
            note = out["note"] + f"; seed(s) {', '.join(lost)} stopped reaching"
            return {**out, "verdict": "regression", "note": note}
    if cand_ok and not base_ok:
        return {**out, "verdict": "improvement"}
    return {**out, "verdict": "ok"}


def failed_mask(cells: pd.DataFrame) -> pd.Series:
    """True for cells that produced no measurement (error, timeout, oom, killed)."""
    if "status" not in cells.columns:
        return pd.Series(False, index=cells.index)
    return cells["status"].astype("string").isin(FAILED_STATUSES).fillna(False).astype(bool)


def _samples_key(cells: pd.DataFrame) -> pd.Series:
    seed = cells["seed"].astype(str) if "seed" in cells.columns else pd.Series("?", index=cells.index)
    repeat = cells["repeat"].astype(str) if "repeat" in cells.columns else pd.Series("0", index=cells.index)
    return seed + "/" + repeat


def _status_summary(cells: pd.DataFrame) -> str:
    bad = cells.loc[failed_mask(cells), "status"].astype(str)
    counts = ", ".join(f"{status} {n}" for status, n in bad.value_counts().items())
    return f"{len(bad)} of {len(cells)} failed" + (f" ({counts})" if counts else "")


def _cells_verdict(base_cells: pd.DataFrame, cand_cells: pd.DataFrame) -> dict:
    """Fail closed: a (seed, repeat) measured in the baseline and failed or absent in the candidate."""
    base_ok = ~failed_mask(base_cells)
    cand_ok = ~failed_mask(cand_cells)
    base_keys = set(_samples_key(base_cells)[base_ok])
    cand_keys_ok = set(_samples_key(cand_cells)[cand_ok])
    lost = sorted(base_keys - cand_keys_ok)
    out = {
        "baseline_value": float(base_ok.sum()),
        "candidate_value": float(cand_ok.sum()),
        "ratio": math.nan,
        "p_value": math.nan,
        "note": f"measured cells; baseline {_status_summary(base_cells)}, candidate {_status_summary(cand_cells)}",
    }
    if lost:
        shown = ", ".join(lost[:8]) + (" ..." if len(lost) > 8 else "")
        note = f"{len(lost)} cell(s) (seed/repeat {shown}) measured in the baseline, not in the candidate; "
        return {**out, "verdict": "regression", "note": note + out["note"]}
    if (~cand_ok).any():
        return {**out, "verdict": "insufficient_data", "note": "cells failed on both sides; " + out["note"]}
    if (~base_ok).any():
        return {**out, "verdict": "improvement"}
    return {**out, "verdict": "ok"}


def _threads(cells: pd.DataFrame) -> set:
    if "threads" not in cells.columns:
        return set()
    return set(pd.to_numeric(cells["threads"], errors="coerce").dropna().astype(int))


# -- the table-level comparison ---------------------------------------------------------------


def host_kind(cells: pd.DataFrame) -> pd.Series:
    """The hardware a cell's numbers belong to: its ``device_name`` (the GPU's name for a GPU cell,
    the CPU's model for a CPU cell); "" where a table does not record it. Cells of one configuration
    are compared only between equal host kinds: an H100 baseline says nothing about an A100 run,
    nor one CPU model about another, whichever host or Ray node ran them."""
    if "device_name" not in cells.columns:
        return pd.Series("", index=cells.index, dtype=object)
    return cells["device_name"].fillna("").astype(str)


def compare(
    baseline_cells: pd.DataFrame,
    candidate_cells: pd.DataFrame,
    thresholds: GateThresholds | None = None,
    *,
    allow_missing: bool = False,
    **options,
) -> pd.DataFrame:
    """Compare two cells tables; one row per matched configuration × host kind × metric with its verdict.

    Cells are matched by ``config_key`` and ``host_kind`` (GPU name or CPU model, see
    ``host_kind``); seeds and repeats of one configuration on one host kind are the samples.
    ``thresholds``: a ``GateThresholds`` (its fields and defaults are the gate's); keyword
    ``options`` with its field names override single fields (``compare(a, b, time_threshold=0.1)``).

    Columns (``COMPARE_COLUMNS``): ``workload, device, host_kind, variant, ruleset, config_key,
    metric, kind`` (``cells | reached | deterministic | noisy``), ``baseline_value,
    candidate_value`` (medians; for ``reached`` the fraction of cells that reached, for ``cells``
    the number of measured cells), ``ratio`` (candidate / baseline), ``threshold, p_value,
    n_baseline, n_candidate, verdict, note``. A configuration only in the baseline gets one
    ``cells`` row, a regression unless ``allow_missing`` (then insufficient data); one only in the
    candidate, or on both sides but never on the same host kind, is not compared (``unmatched``).
    Raises ValueError on an unknown option or missing column.
    """
    unknown = sorted(set(options) - {field.name for field in dataclasses.fields(GateThresholds)})
    if unknown:
        raise ValueError(f"compare: unknown option(s) {', '.join(unknown)}")
    limits = dataclasses.replace(thresholds or GateThresholds(), **options)
    for name, table in (("baseline", baseline_cells), ("candidate", candidate_cells)):
        if "config_key" not in table.columns:
            raise ValueError(f"{name} cells: config_key: column missing")
    baseline_cells, candidate_cells = ranking_cells(baseline_cells), ranking_cells(candidate_cells)
    base_kinds, cand_kinds = host_kind(baseline_cells), host_kind(candidate_cells)
    base_groups = set(zip(baseline_cells["config_key"], base_kinds, strict=True))
    cand_groups = set(zip(candidate_cells["config_key"], cand_kinds, strict=True))
    common = sorted(g for g in base_groups & cand_groups if isinstance(g[0], str))
    base_keys = set(baseline_cells["config_key"].dropna())
    rows = []
    for config_key, kind in common:
        base_all = baseline_cells[(baseline_cells["config_key"] == config_key) & (base_kinds == kind)]
        cand_all = candidate_cells[(candidate_cells["config_key"] == config_key) & (cand_kinds == kind)]
        label = _label(cand_all.iloc[0], kind, config_key)
        device, ruleset = label["device"], label["ruleset"]
        threads = (_threads(base_all), _threads(cand_all))
        same_threads = threads[0] == threads[1] or not (threads[0] and threads[1])
        # a tuned configuration's winners are picked by measured time: not reproducible seed by seed
        deterministic = (
            device.split(":")[0] in DETERMINISTIC_DEVICES and same_threads and ruleset != "external"
        )
        counts = {"n_baseline": len(base_all), "n_candidate": len(cand_all)}
        rows.append(
            {**label, "metric": "cells", "kind": "cells", "threshold": math.nan, **counts}
            | _cells_verdict(base_all, cand_all)
        )
        rows.append(
            {**label, "metric": "reached", "kind": "reached", "threshold": math.nan, **counts}
            | _reached_verdict(base_all, cand_all, deterministic)
        )
        # a failed cell measured nothing: it is no sample (not "did not reach") of any metric
        base = base_all[~failed_mask(base_all)]
        cand = cand_all[~failed_mask(cand_all)]
        for metric, (smaller_is_better, option) in DETERMINISTIC_METRICS.items():
            if deterministic:
                verdict = _deterministic_verdict(
                    base, cand, metric, smaller_is_better, getattr(limits, option)
                )
                rows.append(
                    {
                        **label,
                        "metric": metric,
                        "kind": "deterministic",
                        "threshold": getattr(limits, option),
                        **counts,
                    }
                    | verdict
                )
            else:
                b, c = metric_samples(base, metric), metric_samples(cand, metric)
                threshold = limits.nondeterministic_threshold
                verdict = _noisy_verdict(b, c, smaller_is_better, threshold, limits.alpha, limits.min_samples)
                if not same_threads:
                    why = f"thread counts differ ({sorted(threads[0])} vs {sorted(threads[1])}): not bitwise comparable"
                    verdict["note"] = f"{why}; {verdict['note']}".rstrip("; ")
                rows.append(
                    {**label, "metric": metric, "kind": "noisy", "threshold": threshold}
                    | {"n_baseline": b.size, "n_candidate": c.size}
                    | verdict
                )
        for metric, (smaller_is_better, option) in NOISY_METRICS.items():
            b, c = metric_samples(base, metric), metric_samples(cand, metric)
            verdict = _noisy_verdict(
                b, c, smaller_is_better, getattr(limits, option), limits.alpha, limits.min_samples
            )
            rows.append(
                {**label, "metric": metric, "kind": "noisy", "threshold": getattr(limits, option)}
                | {"n_baseline": b.size, "n_candidate": c.size}
                | verdict
            )
    # a configuration the candidate lacks entirely fails closed; one it ran on another host kind only
    # is not comparable (unmatched()["other_host_kind"])
    for config_key in sorted(base_keys - set(candidate_cells["config_key"].dropna())):
        base_all = baseline_cells[baseline_cells["config_key"] == config_key]
        measured = int((~failed_mask(base_all)).sum())
        rows.append(
            _label(base_all.iloc[0], str(host_kind(base_all).iloc[0]), config_key)
            | {
                "metric": "cells",
                "kind": "cells",
                "baseline_value": float(measured),
                "candidate_value": 0.0,
                "ratio": math.nan,
                "threshold": math.nan,
                "p_value": math.nan,
                "n_baseline": len(base_all),
                "n_candidate": 0,
                "verdict": "insufficient_data" if allow_missing else "regression",
                "note": "configuration in the baseline, missing from the candidate"
                + (" (allowed)" if allow_missing else "; --allow-missing if it was removed on purpose"),
            }
        )
    return pd.DataFrame(rows, columns=COMPARE_COLUMNS)


def _label(first: pd.Series, kind: str, config_key: str) -> dict:
    """The columns naming a compared configuration, from one of its cells."""
    return {
        "workload": first.get("workload"),
        "device": str(first.get("device", "")),
        "host_kind": kind,
        "variant": first.get("variant", first.get("techniques")),
        "ruleset": str(first.get("ruleset", "defaults")),
        "config_key": config_key,
    }


def unmatched(baseline_cells: pd.DataFrame, candidate_cells: pd.DataFrame) -> dict[str, list[str]]:
    """config_keys (tuned: tuning_keys) on one side only (``baseline_only``, ``candidate_only``), and
    those on both sides but never on the same host kind (``other_host_kind``): not compared."""
    baseline_cells, candidate_cells = ranking_cells(baseline_cells), ranking_cells(candidate_cells)
    base = set(baseline_cells["config_key"].dropna())
    cand = set(candidate_cells["config_key"].dropna())
    base_groups = set(zip(baseline_cells["config_key"], host_kind(baseline_cells), strict=True))
    cand_groups = set(zip(candidate_cells["config_key"], host_kind(candidate_cells), strict=True))
    compared = {key for key, _ in base_groups & cand_groups}
    return {
        "baseline_only": sorted(base - cand),
        "candidate_only": sorted(cand - base),
        "other_host_kind": sorted((base & cand) - compared),
    }


def failed(comparison: pd.DataFrame, *, strict: bool = False) -> bool:
    """True when the gate fails: any regression, or (``strict``) any insufficient data."""
    verdicts = set(comparison["verdict"])
    return "regression" in verdicts or (strict and "insufficient_data" in verdicts)


# -- reading a results directory ----------------------------------------------------------------


def load_cells(directory: str | Path) -> pd.DataFrame:
    """The cells table of one results directory; GateInputError naming the directory if unusable."""
    path = Path(directory)
    if not path.is_dir():
        raise GateInputError(f"{path}: directory does not exist")
    if not (path / "cells.parquet").is_file():
        raise GateInputError(f"{path / 'cells.parquet'}: file missing (not a benchbed results directory)")
    try:
        cells = store.load(path).cells
    except store.StoreError as error:  # its message names the file
        raise GateInputError(str(error)) from error
    if "config_key" not in cells.columns:
        raise GateInputError(f"{path / 'cells.parquet'}: config_key: column missing")
    if cells.empty:
        raise GateInputError(f"{path / 'cells.parquet'}: no cells")
    return cells
