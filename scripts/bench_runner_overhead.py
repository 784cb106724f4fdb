"""Runner overhead: wall time of a whole scenario run against the time spent inside cells.

Prints the wall time of `benchbed run SCENARIO` (fresh results directory), the sum over cells of
train + eval + warm-up time, the sum of the cells' own wall time (process start, imports, model
build, data generation included), and the ratios. Goal for the quick matrix: wall / (train + eval
+ warm-up) <= 1.15.

    python scripts/bench_runner_overhead.py [SCENARIO] [--repeats N]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd


def one_run(scenario: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "res"
        t0 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "benchbed.cli", "run", scenario, "--out", str(out), "--quiet"],
            capture_output=True,
            text=True,
        )
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            sys.exit(f"benchbed run failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
        cells = pd.read_parquet(out / "cells.parquet")
    in_cell = float((cells["train_time_s"] + cells["eval_time_s"] + cells["warmup_time_s"]).sum())
    return {
        "cells": len(cells),
        "wall_s": wall,
        "train_eval_warmup_s": in_cell,
        "cell_wall_s": float(cells["wall_time_s"].sum()),
        "ratio": wall / in_cell,
        "statuses": cells["status"].value_counts().to_dict(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", nargs="?", default="quick")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    runs = [one_run(args.scenario) for _ in range(args.repeats)]
    for i, r in enumerate(runs):
        print(
            f"run {i}: {r['cells']} cells, wall {r['wall_s']:.1f} s, in-cell train+eval+warm-up "
            f"{r['train_eval_warmup_s']:.1f} s, cells' own wall {r['cell_wall_s']:.1f} s, "
            f"ratio {r['ratio']:.3f}, statuses {r['statuses']}"
        )
    print(
        f"median ratio wall / (train + eval + warm-up): {statistics.median(r['ratio'] for r in runs):.3f} (goal <= 1.15)"
    )
    print(
        f"median ratio wall / cells' own wall: {statistics.median(r['wall_s'] / r['cell_wall_s'] for r in runs):.3f}"
    )


if __name__ == "__main__":
    main()
