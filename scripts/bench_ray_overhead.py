"""What the Ray backend costs against the local runner, on this machine.

Prints: `import ray` time, `ray.init` time (a local cluster of --num-cpus CPUs), and for the same
scenario run with each backend (fresh results directories): the whole run's wall time, the mean of
the cells' own wall time, and per cell the run's wall time over the cells'. Also checks that both
backends gave the same deterministic metrics. Noisy on a shared machine: quote figures from a quiet
one.

    python scripts/bench_ray_overhead.py [SCENARIO] [--num-cpus 2]

The default scenario is 3 cells of lm-tiny, 12 steps each (the one the Ray tests use).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

TINY = (
    'name = "three"\nworkload = "lm-tiny"\ndevice = "cpu"\nseeds = [0, 1, 2]\ntarget_loss = 3.2\n'
    "eval_every_tokens = 8064\nstop_at_target = false\ntimeout_s = 240\n[budget]\nsteps = 12\n"
)
DETERMINISTIC = ["status", "final_val_loss", "steps", "tokens", "steps_to_target"]


def timed(code: str) -> float:
    out = subprocess.run(
        [sys.executable, "-c", f"import time; t=time.perf_counter(); {code}; print(time.perf_counter()-t)"],
        capture_output=True,
        text=True,
        env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"},
    )
    if out.returncode:
        sys.exit(out.stderr[-2000:])
    return float(out.stdout.strip().splitlines()[-1])


def run(scenario: str, out: Path, backend: str) -> tuple[float, pd.DataFrame]:
    t0 = time.perf_counter()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchbed.cli",
            "run",
            scenario,
            "--out",
            str(out),
            "--quiet",
            "--backend",
            backend,
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"},
    )
    if done.returncode:
        sys.exit(f"{backend} run failed:\n{done.stderr[-2000:]}")
    return time.perf_counter() - t0, pd.read_parquet(out / "cells.parquet").set_index("cell_id").sort_index()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", nargs="?")
    parser.add_argument("--num-cpus", type=int, default=2)
    args = parser.parse_args()
    print(f"import ray: {timed('import ray'):.2f} s")
    init = timed(f"import ray; ray.init(num_cpus={args.num_cpus}, include_dashboard=False); ray.shutdown()")
    print(f"ray.init(num_cpus={args.num_cpus}) + shutdown: {init:.2f} s")
    with tempfile.TemporaryDirectory() as tmp:
        scenario = args.scenario or str(Path(tmp) / "three.toml")
        if not args.scenario:
            Path(scenario).write_text(TINY)
        figures = {}
        for backend in ("local", "ray"):
            wall, cells = run(scenario, Path(tmp) / backend, backend)
            figures[backend] = cells
            per_cell = wall / len(cells)
            print(
                f"{backend:>5}: {len(cells)} cells in {wall:.1f} s ({per_cell:.1f} s a cell; "
                f"a cell's own process {cells['wall_time_s'].mean():.1f} s)"
            )
        same = figures["local"][DETERMINISTIC].equals(figures["ray"][DETERMINISTIC])
        print(f"same deterministic metrics: {'yes' if same else 'NO'}")


if __name__ == "__main__":
    main()
