"""The first impression: `benchbed run` (the embedded default) as a new user runs it, timed.

Runs `benchbed run` into a fresh results directory and prints its wall time, the cells that
reached their target, the statuses and the ranked table, in up to three ways:

- ``default``: as installed, on every core this process may use;
- ``one-core``: under ``taskset -c 0`` (one core: the stress check);
- ``avx2``: with the instruction sets capped at AVX2 (``ATEN_CPU_CAPABILITY=avx2``,
  ``ONEDNN_MAX_CPU_ISA=AVX2``, ``MKL_ENABLE_INSTRUCTIONS=AVX2``), which makes an AVX-512 machine
  compute like an AVX2-only one (bf16 becomes emulated; `benchbed env` says so).

The goal: the default run finishes in at most 180 s on any 2-core x86-64 machine with every cell
reaching its target. The load average is printed before and after each run: on shared cores the
wall time says as much about the neighbours as about benchbed.

    python scripts/bench_first_run.py [--mode default|one-core|avx2|all] [--threads N] [--keep DIR]

``--threads N`` runs a copy of the default scenario with ``threads = N`` (torch's intra-op threads
per cell; quick.toml says 1): what a second thread gains on idle cores, and what it costs on cores
other processes also use (there two threads spin-wait for each other).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

GOAL_S = 180.0
AVX2_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min) on {os.cpu_count()} CPUs"


def scenario_with_threads(threads: int, directory: Path) -> Path:
    """A copy of the default scenario with `threads = N`."""
    from benchbed import plan

    text = Path(plan.default_scenario_path()).read_text()
    lines = [line for line in text.splitlines() if not line.startswith("threads")]
    at = next(i for i, line in enumerate(lines) if line.startswith("["))  # before the first table
    path = directory / f"quick-threads{threads}.toml"
    path.write_text("\n".join([*lines[:at], f"threads = {threads}", *lines[at:]]) + "\n")
    return path


def run(mode: str, out: Path, scenario: Path | None) -> None:
    prefix = ["taskset", "-c", "0"] if mode == "one-core" else []
    env = {**os.environ, **(AVX2_ENV if mode == "avx2" else {})}
    command = [*prefix, sys.executable, "-m", "benchbed.cli", "run", *([str(scenario)] if scenario else [])]
    command += ["--out", str(out), "--quiet"]
    shown = " ".join([*(f"{k}={v}" for k, v in AVX2_ENV.items() if mode == "avx2"), *prefix])
    what = f"benchbed run {scenario}" if scenario else "benchbed run"
    print(f"== {mode}: {shown + ' ' if shown else ''}{what} --out {out}  ({load()})", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    print(proc.stdout.rstrip())
    if not (out / "cells.parquet").is_file():
        print(f"benchbed run exited {proc.returncode} without results:\n{proc.stderr[-2000:]}")
        return
    cells = pd.read_parquet(out / "cells.parquet")
    reached = int((cells["status"] == "reached").sum())
    slowest = cells["wall_time_s"].max()
    verdict = "ok" if wall <= GOAL_S and reached == len(cells) else "MISSED"
    print(
        f"{mode}: exit {proc.returncode}, wall {wall:.1f} s (goal <= {GOAL_S:.0f} s), {reached}/{len(cells)} cells "
        f"reached, statuses {cells['status'].value_counts().to_dict()}, slowest cell {slowest:.1f} s, "
        f"launchers {cells['launcher'].value_counts().to_dict()}: {verdict}  ({load()})\n",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("default", "one-core", "avx2", "all"), default="all")
    parser.add_argument("--threads", type=int, help="run the default scenario with threads = N")
    parser.add_argument("--keep", type=Path, help="keep the results directories under DIR")
    args = parser.parse_args()
    modes = ("default", "one-core", "avx2") if args.mode == "all" else (args.mode,)
    if "one-core" in modes and shutil.which("taskset") is None:
        sys.exit("taskset not found (util-linux): run --mode default or --mode avx2")
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        scenario = scenario_with_threads(args.threads, root) if args.threads else None
        for mode in modes:
            out = root / f"quick-{mode}{f'-threads{args.threads}' if args.threads else ''}"
            shutil.rmtree(out, ignore_errors=True)
            run(mode, out, scenario)


if __name__ == "__main__":
    main()
