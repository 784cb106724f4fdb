"""Run N consecutive multi-process cells of each parallel technique through the runner (torchrun,
Gloo on the CPU) and count the ones that finished cleanly: trained to their budget, wrote their
row, and every process exited with code 0. No retries: a cell that fails is counted and listed.

    python scripts/parallel_soak.py                 # 20 cells of each kind (about 5 min per kind on 2 idle cores)
    python scripts/parallel_soak.py -n 5 --kinds fsdp pipeline_parallel

Kinds: data_parallel, fsdp, tensor_parallel, pipeline_parallel (1F1B), and activation_offload
(composed with fsdp and checkpointing, as 2 processes). Each cell trains lm-tiny for a few steps
at a global batch of 32, so what is exercised is start-up, training collectives and teardown.
Exit code: 0 when every cell of every kind was clean, 1 otherwise.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pandas as pd

from benchbed import plan
from benchbed.results.schema import DONE_STATUSES
from benchbed.run.runner import run_scenario

KINDS = {
    "data_parallel": ("data_parallel", 16),
    "fsdp": ("fsdp", 16),
    "tensor_parallel": ("tensor_parallel", 32),
    "pipeline_parallel": ("pipeline_parallel", 32),
    "activation_offload": ("fsdp+activation_checkpointing+activation_offload", 16),
}


def soak(kind: str, n: int, out: Path, steps: int) -> tuple[int, int, list[str]]:
    combo, batch = KINDS[kind]
    path = out / f"{kind}.toml"
    path.write_text(
        textwrap.dedent(
            f"""
            name = "soak-{kind}"
            workload = "lm-tiny"
            device = "cpu"
            seeds = [0]
            repeats = {n}
            stop_at_target = false
            timeout_s = 300
            [budget]
            steps = {steps}
            [matrix]
            techniques = ["{combo}"]
            batch_size = [{batch}]
            [techniques.activation_checkpointing]
            every = 2
            """
        )
    )
    results = run_scenario(
        plan.load(str(path)), out / kind, progress=False, log=lambda m: print("  " + m, flush=True)
    )
    cells = pd.read_parquet(results / "cells.parquet")
    clean = cells[cells.status.isin(DONE_STATUSES) & cells.teardown_error.isna()]
    problems = [
        f"r{r.repeat}: {r.status}"
        + (f" teardown: {str(r.teardown_error).splitlines()[0]}" if isinstance(r.teardown_error, str) else "")
        + (f" error: {str(r.error).splitlines()[0]}" if isinstance(r.error, str) else "")
        for r in cells.itertuples()
        if r.Index not in clean.index
    ]
    return len(clean), len(cells), problems


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=20, help="consecutive cells per kind (default 20)")
    ap.add_argument("--kinds", nargs="+", choices=sorted(KINDS), default=list(KINDS))
    ap.add_argument("--steps", type=int, default=3, help="training steps per cell (default 3)")
    ap.add_argument("--out", help="results directory (default: a temporary one)")
    args = ap.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="parallel-soak-"))
    out.mkdir(parents=True, exist_ok=True)
    summary, all_clean = [], True
    for kind in args.kinds:
        print(f"{kind}: {args.n} consecutive 2-process cells", flush=True)
        t0 = time.perf_counter()
        clean, total, problems = soak(kind, args.n, out, args.steps)
        all_clean &= clean == total == args.n
        summary.append(f"{kind:20s} {clean}/{total} clean  ({time.perf_counter() - t0:.0f} s)")
        summary += [f"    {p}" for p in problems]
    print(f"\nresults in {out}")
    print("\n".join(summary))
    return 0 if all_clean else 1


if __name__ == "__main__":
    sys.exit(main())
