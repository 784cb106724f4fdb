"""Runner overhead: wall time of a whole scenario run against the time spent inside cells.

Runs `benchbed run SCENARIO` (fresh results directory each time) with each launcher -- `fork` (cells
forked from the fork server, the default) and `subprocess` (a new interpreter per cell, the runner
before the fork server) -- alternating, so both see the same machine, and prints per run: the wall
time, the sum over cells of train + eval + warm-up time, the sum over cells of the off-clock FLOP
and memory measurement (`measure_time_s`: replicas of sampled steps, about a second a cell on
lm-tiny), the sum of the cells' own wall time (model build, data generation and writing the part
included; process start and imports not), and two ratios:

- wall / (train + eval + warm-up): the issue's original definition, which counts the measurement
  as runner overhead although the runner does not do it;
- wall / (train + eval + warm-up + measurement): the measurement is work of the cell's own process
  (part of what a benchmark cell is), so this one is the runner's cost.

Goal for the quick matrix with the fork launcher: <= 1.10.

The load average is printed before and after: on shared cores the figures are noisy, and another
process spinning on the same cores can change them by more than the overhead being measured.

    python scripts/bench_runner_overhead.py [SCENARIO] [--repeats N] [--launcher fork|subprocess|both]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

GOAL = 1.10


def one_run(scenario: str, launcher: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "res"
        t0 = time.perf_counter()
        proc = subprocess.run(
            [
                sys.executable, "-m", "benchbed.cli", "run", scenario,
                "--out", str(out), "--quiet", "--launcher", launcher,
            ],
            capture_output=True,
            text=True,
        )  # fmt: skip
        wall = time.perf_counter() - t0
        if not (out / "cells.parquet").is_file():  # exit 1 with cells.parquet: some cell failed
            sys.exit(f"benchbed run failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
        cells = pd.read_parquet(out / "cells.parquet")
    in_cell = float((cells["train_time_s"] + cells["eval_time_s"] + cells["warmup_time_s"]).sum())
    measure = float(cells["measure_time_s"].fillna(0).sum()) if "measure_time_s" in cells else 0.0
    return {
        "launcher": launcher,
        "cells": len(cells),
        "wall_s": wall,
        "train_eval_warmup_s": in_cell,
        "cell_wall_s": float(cells["wall_time_s"].sum()),
        "measure_s": measure,
        "ratio": wall / in_cell,
        "ratio_measured": wall / (in_cell + measure),
        "launchers": cells["launcher"].value_counts().to_dict() if "launcher" in cells else {},
        "statuses": cells["status"].value_counts().to_dict(),
        "unfinished": int(cells["train_time_s"].isna().sum()),
    }


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min) on {os.cpu_count()} CPUs"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", nargs="?", default="quick")
    parser.add_argument("--repeats", type=int, default=1, help="runs per launcher (alternating)")
    parser.add_argument("--launcher", choices=("fork", "subprocess", "both"), default="both")
    args = parser.parse_args()
    launchers = ("subprocess", "fork") if args.launcher == "both" else (args.launcher,)
    print(f"before: {load()}")
    runs = [one_run(args.scenario, launcher) for _ in range(args.repeats) for launcher in launchers]
    print(f"after:  {load()}")
    for i, r in enumerate(runs):
        overhead = r["wall_s"] - r["train_eval_warmup_s"]
        print(
            f"run {i} [{r['launcher']}]: {r['cells']} cells, wall {r['wall_s']:.1f} s, in-cell "
            f"train+eval+warm-up {r['train_eval_warmup_s']:.1f} s, off-clock measurement {r['measure_s']:.1f} s, "
            f"cells' own wall {r['cell_wall_s']:.1f} s, overhead {overhead:.1f} s "
            f"({overhead / r['cells']:.2f} s a cell), ratio {r['ratio']:.3f} "
            f"({r['ratio_measured']:.3f} with the measurement as in-cell work), "
            f"launchers {r['launchers']}, statuses {r['statuses']}"
        )
    unfinished = sum(r["unfinished"] for r in runs)
    if unfinished:
        print(
            f"warning: {unfinished} cell(s) did not finish (timeout, crash): their time is in the wall "
            "but not in train + eval + warm-up, so those runs' ratios overstate the runner's cost"
        )
    for launcher in launchers:
        mine = [r for r in runs if r["launcher"] == launcher]
        goal = f" (goal <= {GOAL:.2f})" if launcher == "fork" else ""
        print(
            f"[{launcher}] median ratio wall / (train + eval + warm-up): "
            f"{statistics.median(r['ratio'] for r in mine):.3f}; "
            f"wall / (train + eval + warm-up + measurement): "
            f"{statistics.median(r['ratio_measured'] for r in mine):.3f}{goal}; "
            f"median wall / cells' own wall: {statistics.median(r['wall_s'] / r['cell_wall_s'] for r in mine):.3f}"
        )


if __name__ == "__main__":
    main()
