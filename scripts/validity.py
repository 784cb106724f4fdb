"""Validity checks of benchbed's measurement: runs ``scenarios/validity.toml`` (resumable) and prints
two tables.

1. Measurement checks: activation checkpointing against the baseline (seed 0 of each) must show
   lower ``saved_activation_bytes`` and higher ``hardware_flops_per_token``, with the same
   ``model_flops_per_token`` (the useful work does not change). PASS / FAIL per check; the exit code
   is 1 when one fails.
2. Equal budget ("No Train No Gain", Kaddour et al. 2023): every combination trains the workload's
   whole budget, the baseline AdamW with its cosine schedule decayed to zero at the end; the final
   validation loss, time to target, training time, and counted model FLOPs per token, each as the
   median over seeds with a 95% bootstrap interval, and the time-to-target speedup against AdamW
   with its interval. Reported whatever it shows.

Timings are the machine's: on a shared or busy CPU they are noisy (the intervals say how much).

    python scripts/validity.py [--out results/validity] [--device cpu|cuda|auto] [--no-run]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from benchbed import plan
from benchbed.analyse.bootstrap import bootstrap_ci, median
from benchbed.analyse.tables import speedups, summarize
from benchbed.present.format import format_value
from benchbed.results import store
from benchbed.run.runner import run_scenario

SCENARIO = Path(__file__).resolve().parents[1] / "scenarios" / "validity.toml"
CHECKPOINTED = "activation_checkpointing+adamw"


def interval(values, column: str) -> str:
    values = np.asarray([v for v in values if not pd.isna(v)], dtype=float)
    if not len(values):
        return format_value(float("nan"), column)
    low, high = bootstrap_ci(values)
    text = format_value(median(values), column)
    if np.isnan(low):
        return text
    return f"{text} [{format_value(low, column)}, {format_value(high, column)}]"


def print_table(title: str, header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]
    print(f"\n{title}")
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(str(x).ljust(w) for x, w in zip(row, widths, strict=True)))


def measurement_checks(cells: pd.DataFrame) -> bool:
    first = cells[cells["seed"] == 0].set_index("techniques")
    if "adamw" not in first.index or CHECKPOINTED not in first.index:
        print("measurement checks: the seed-0 adamw and checkpointing cells are missing", file=sys.stderr)
        return False
    base, ckpt = first.loc["adamw"], first.loc[CHECKPOINTED]
    checks = [
        ("saved_activation_bytes", "lower", ckpt["saved_activation_bytes"] < base["saved_activation_bytes"]),
        ("hardware_flops_per_token", "higher", ckpt["hardware_flops_per_token"] > base["hardware_flops_per_token"]),
        (
            "model_flops_per_token",
            "equal",
            bool(np.isclose(ckpt["model_flops_per_token"], base["model_flops_per_token"], rtol=1e-6)),
        ),
    ]  # fmt: skip
    rows = [
        [col, format_value(base[col], col), format_value(ckpt[col], col), want, "PASS" if ok else "FAIL"]
        for col, want, ok in checks
    ]
    print_table(
        "1. activation checkpointing against the baseline (seed 0; memory in GiB, FLOPs per token)",
        ["column", "adamw", "adamw+activation_checkpointing", "expected", "check"],
        rows,
    )
    return all(ok for *_, ok in checks)


def equal_budget(cells: pd.DataFrame) -> None:
    cells = cells[cells["techniques"] != CHECKPOINTED]
    summary = summarize(cells).set_index("techniques")
    speed = speedups(cells).set_index("variant")
    rows = []
    for techniques, group in cells.groupby("techniques", sort=False):
        s = summary.loc[techniques]
        sp = speed.loc[s["variant"]]
        low, high = sp["speedup_ci_low"], sp["speedup_ci_high"]
        ttt = format_value(s["time_to_target_s"], "time_to_target_s")
        if not pd.isna(s["time_to_target_s_ci_low"]):
            ttt += f" [{format_value(s['time_to_target_s_ci_low'], 'time_to_target_s')}, "
            ttt += f"{format_value(s['time_to_target_s_ci_high'], 'time_to_target_s')}]"
        rows.append(
            [
                s["variant"],
                f"{int(s['n_reached'])}/{int(s['n_cells'])}",
                interval(group["final_val_loss"], "final_val_loss"),
                ttt,
                format_value(sp["speedup"], "speedup")
                + ("" if pd.isna(low) else f" [{format_value(low, 'x')}, {format_value(high, 'x')}]"),
                interval(group["train_time_s"], "train_time_s"),
                interval(group["model_flops_per_token"], "model_flops_per_token"),
                interval(group["tokens"], "tokens"),
            ]
        )
    print_table(
        "2. equal budget against fully decayed AdamW (median over seeds [95% bootstrap interval])",
        [
            "variant", "reached", "final val loss", "time to target (s)", "speedup vs adamw",
            "train time, whole budget (s)", "model FLOPs/token", "tokens",
        ],
        rows,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results/validity", help="results directory (resumable)")
    parser.add_argument("--device", choices=("cpu", "cuda", "auto"), help="override the scenario's device")
    parser.add_argument("--no-run", action="store_true", help="only print the tables of --out")
    parser.add_argument(
        "--scenario", default=str(SCENARIO), help="a smaller copy of validity.toml (smoke tests)"
    )
    args = parser.parse_args(argv)
    scenario = plan.load(args.scenario, device_override=args.device)
    if not args.no_run:
        run_scenario(scenario, args.out)
    cells = store.load(args.out).cells
    cells = cells[cells["cell_id"].isin({c.cell_id for c in scenario.cells})]
    if cells.empty:
        print(f"no cells of the validity scenario in {args.out}", file=sys.stderr)
        return 2
    ok = measurement_checks(cells)
    equal_budget(cells)
    print(
        "\nTimes are this machine's and noisy on a shared CPU; the intervals are over seeds. "
        f"Cells: {len(cells)}, statuses: {dict(cells['status'].value_counts())}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
