"""AlgoPerf performance profiles and the benchmark score over submissions (variants by default).

After Dolan & Moré 2002, "Benchmarking optimization software with performance profiles", as
AlgoPerf uses them (Dahl et al. 2023, arXiv:2306.07179): per problem (workload × device) the ratio
of a submission's time to the best time, rho(tau) the fraction of problems with ratio <= tau for tau
in [1, 4], and the score the area under rho normalised by (tau_max - 1). Input is the cells table or
the output of ``benchbed.analyse.tables.summarize``. With both tuning rulesets in the table, a
submission is labelled with its ruleset ("lion (external)"): the two are never one submission.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from benchbed.analyse.tables import METRICS, summarize


def _submission_times(cells_or_summary: pd.DataFrame, metric: str, by: str, aggregate: str) -> pd.DataFrame:
    """Wide table: index = submission label (``by``), columns = problems (``workload/device``)."""
    if "n_cells" in cells_or_summary.columns:
        summary = cells_or_summary  # already one row per combination
    else:
        summary = summarize(cells_or_summary, aggregate=aggregate, n_resamples=2)
    if by not in summary.columns:
        raise ValueError(f"by: column {by!r} missing")
    frame = summary.assign(problem=summary["workload"].astype(str) + "/" + summary["device"].astype(str))
    if "ruleset" in frame.columns and frame["ruleset"].nunique() > 1:
        # a tuned and a defaults configuration are different submissions, never one
        frame[by] = frame[by].astype(str) + " (" + frame["ruleset"].astype(str) + ")"
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
