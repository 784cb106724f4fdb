"""Tuning rulesets on the read side: each study's winning trial, and what the tuning cost.

Under the ``external`` ruleset (``benchbed.plan.tuning``) a configuration runs ``studies`` studies of
``trials`` trials; every trial is a cell. AlgoPerf (Dahl et al. 2023, arXiv:2306.07179) scores a
study by its best trial and a configuration by the median over its studies. ``ranking_cells``
turns a cells table into exactly the rows that ranking aggregates:

- a ``defaults`` cell stays as it is (cells without a ``ruleset`` column are ``defaults``);
- per tuned configuration (``tuning_key``) and study, one row: the study's winner, the trial that
  reached the target in the least training time (``time_to_target_s``, measured at validation
  evaluations); if no trial reached, the one with the lowest ``best_val_loss`` stands for the study
  (and the study did not reach). Its ``config_key`` becomes the configuration's ``tuning_key``, so
  seeds, studies and runs group and match the way they do under ``defaults``; the trial's own key
  is kept as ``trial_config_key``.

Every row gets the cost of what it stands for: ``n_trials`` (cells), ``tuning_cost_s`` (the sum of
their ``train_time_s``) and ``tuning_cost_j`` (the sum of their ``energy_j``). A sum is NaN when a
part is: energy where it was not measured, time where a trial crashed before reporting it. The
tables of ``benchbed.analyse.tables`` and the gate call this first; it returns a table that already
has ``tuning_cost_s`` unchanged, so calling it twice is harmless.
"""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pandas as pd

from benchbed.analyse.bootstrap import energy_measured, reached_mask

RULESETS = ("external", "defaults")
#: columns ``ranking_cells`` adds to every row
COST_COLUMNS = ["n_trials", "tuning_cost_s", "tuning_cost_j"]
#: a tuned configuration's study
STUDY_KEYS = ["workload", "device", "tuning_key", "study"]
#: a winner this close to an end of its range (a fraction of the range, on its scale) is at the edge
EDGE_FRACTION = 0.1
#: ``Dimension.describe()`` as written into a trial's config: "log[0.3, 30]"
_RANGE = re.compile(r"^(log|linear)\[([^,\]]+), ([^\]]+)\]$")


def _numeric(cells: pd.DataFrame, column: str) -> np.ndarray:
    if column not in cells.columns:
        return np.full(len(cells), np.nan)
    return pd.to_numeric(cells[column], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)


def is_external(cells: pd.DataFrame) -> np.ndarray:
    if "ruleset" not in cells.columns:
        return np.zeros(len(cells), dtype=bool)
    return cells["ruleset"].astype("string").eq("external").fillna(False).to_numpy(dtype=bool)


def ranking_cells(cells: pd.DataFrame) -> pd.DataFrame:
    """The rows the ranking aggregates (see the module docstring), with ``COST_COLUMNS``."""
    if "tuning_cost_s" in cells.columns:
        return cells
    energy = np.where(energy_measured(cells), _numeric(cells, "energy_j"), np.nan)
    out = cells.assign(n_trials=1, tuning_cost_s=_numeric(cells, "train_time_s"), tuning_cost_j=energy)
    if "ruleset" not in out.columns:
        out["ruleset"] = "defaults"
    else:
        out["ruleset"] = out["ruleset"].astype(object).where(out["ruleset"].notna(), "defaults")
    external = is_external(out)
    if not external.any():
        return out
    missing = [c for c in STUDY_KEYS if c not in out.columns]
    if missing:
        raise ValueError(f"cells: {', '.join(missing)}: column missing (needed for external-ruleset cells)")
    out["_position"] = np.arange(len(out))
    trials = out[external].copy()
    time = _numeric(trials, "time_to_target_s")
    reached = reached_mask(trials).to_numpy(dtype=bool)
    trials["_unreached"] = ~reached
    trials["_time"] = np.where(reached & ~np.isnan(time), time, np.inf)
    trials["_loss"] = np.nan_to_num(_numeric(trials, "best_val_loss"), nan=np.inf)
    trials["_trial"] = np.nan_to_num(_numeric(trials, "trial"), nan=np.inf)
    ordered = trials.sort_values(["_unreached", "_time", "_loss", "_trial", "_position"], kind="stable")
    grouped = ordered.groupby(STUDY_KEYS, sort=False, dropna=False)
    winners = grouped.head(1).copy()
    winners["n_trials"] = grouped["_position"].transform("size").loc[winners.index].to_numpy()
    for column in ("tuning_cost_s", "tuning_cost_j"):
        # NaN as soon as one trial's value is NaN: a partial sum would read as the whole cost
        sums = grouped[column].transform(lambda values: values.sum(min_count=len(values)))
        winners[column] = sums.loc[winners.index].to_numpy()
    winners["trial_config_key"] = winners["config_key"]
    winners["config_key"] = winners["tuning_key"]
    winners = winners.drop(columns=["_unreached", "_time", "_loss", "_trial"])
    # every row where it was in the table (a winner where its trial was)
    combined = pd.concat([out[~external], winners]).sort_values("_position", kind="stable")
    return combined.drop(columns=["_position"]).reset_index(drop=True)


def winners_text(rows: pd.DataFrame) -> str:
    """The winning values of a configuration's studies as JSON ``{study: {name: value}}`` (study
    order); '' under the defaults ruleset."""
    if "tuned_json" not in rows.columns or "study" not in rows.columns:
        return ""
    picked = {}
    for study, tuned in zip(rows["study"], rows["tuned_json"], strict=True):
        if tuned is None or (isinstance(tuned, float) and np.isnan(tuned)):
            continue
        key = str(int(study)) if pd.notna(study) else "?"
        picked[key] = json.loads(tuned)
    if not picked:
        return ""
    return json.dumps(dict(sorted(picked.items(), key=lambda kv: (len(kv[0]), kv[0]))), sort_keys=False)


def _position(value: float, text: str) -> float:
    """Where `value` lies in the range `text` ("log[0.3, 30]"), 0 = low end, 1 = high end; NaN if
    the text is not a range."""
    match = _RANGE.match(text)
    if not match:
        return math.nan
    scale, low, high = match.group(1), float(match.group(2)), float(match.group(3))
    if scale == "log":
        return (math.log(value) - math.log(low)) / (math.log(high) - math.log(low))
    return (value - low) / (high - low)


def edge_winners(cells: pd.DataFrame) -> pd.DataFrame:
    """Tuned dimensions whose studies' winners sit at an end of the search range: the median winner
    within ``EDGE_FRACTION`` of the range (on its scale) of the low or the high end. The best value
    may lie outside the range, so the configuration's number may understate it. Columns:
    ``workload, device, variant, dimension, range, winners, side`` (``low`` or ``high``), ``note``
    (one sentence for a person)."""
    columns = ["workload", "device", "variant", "dimension", "range", "winners", "side", "note"]
    rows = ranking_cells(cells)
    rows = rows[is_external(rows)]
    if rows.empty or "config_json" not in rows.columns or "tuned_json" not in rows.columns:
        return pd.DataFrame(columns=columns)
    found = []
    for (workload, device, _), group in rows.groupby(["workload", "device", "config_key"], sort=True):
        space = json.loads(group["config_json"].iloc[0]).get("tuning", {}).get("space", {})
        tuned = [json.loads(t) for t in group["tuned_json"] if isinstance(t, str)]
        for name, text in sorted(space.items()):
            values = [t[name] for t in tuned if name in t]
            if not values:
                continue
            where = float(np.median([_position(v, text) for v in values]))
            side = "low" if where <= EDGE_FRACTION else "high" if where >= 1 - EDGE_FRACTION else None
            if side:
                winners = ", ".join(f"{v:.4g}" for v in values)
                variant = group["variant"].iloc[0]
                note = (
                    f"{variant} ({workload}, {device}): the studies' winning {name} ({winners}) sit at the "
                    f"{side} end of the range {text}; the best value may lie outside it"
                )
                found.append([workload, device, variant, name, text, winners, side, note])
    return pd.DataFrame(found, columns=columns)


def cost_sum(values: np.ndarray) -> float:
    """Sum of a configuration's per-row costs: NaN when any is NaN (not measured), never a partial sum."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0 or np.isnan(values).any():
        return float("nan")
    return float(values.sum())


def ruleset_mismatches(baseline_cells: pd.DataFrame, candidate_cells: pd.DataFrame) -> pd.DataFrame:
    """Configurations (same workload, device and variant) that ran under one ruleset in the baseline
    and another in the candidate, and so were not compared. Columns: ``workload, device, variant,
    baseline_ruleset, candidate_ruleset``."""
    columns = ["workload", "device", "variant", "baseline_ruleset", "candidate_ruleset"]
    labels = ["workload", "device", "variant"]
    sides = []
    for table in (ranking_cells(baseline_cells), ranking_cells(candidate_cells)):
        if not set(labels) <= set(table.columns):
            return pd.DataFrame(columns=columns)
        sides.append(table[labels + ["ruleset"]].drop_duplicates())
    merged = sides[0].merge(sides[1], on=labels, suffixes=("_baseline", "_candidate"))
    merged = merged[merged["ruleset_baseline"] != merged["ruleset_candidate"]]
    # a configuration that also ran under the same ruleset on both sides was compared
    both = sides[0].merge(sides[1], on=labels + ["ruleset"])[labels].drop_duplicates()
    merged = merged.merge(both, on=labels, how="left", indicator=True)
    merged = merged[merged["_merge"] == "left_only"]
    out = merged.rename(
        columns={"ruleset_baseline": "baseline_ruleset", "ruleset_candidate": "candidate_ruleset"}
    )
    return out[columns].sort_values(labels).reset_index(drop=True)
