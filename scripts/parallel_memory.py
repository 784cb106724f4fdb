"""The per-rank memory table of the parallel techniques: every rank's parameter, gradient,
optimizer-state and saved-activation bytes, measured in real cells launched by the runner
(torchrun; Gloo on the CPU, NCCL on GPUs), all at the same global batch.

    python scripts/parallel_memory.py                        # lm-tiny on the CPU (about 3 min on 2 idle cores)
    python scripts/parallel_memory.py --device cuda --workload lm-small --batch 8

Rows: the single-process baseline; DDP and FSDP over 2 ranks, FSDP over 4; tensor parallelism
over 2 (with and without sequence parallelism); 2-D FSDP x TP over 4 (2 x 2); GPipe and 1F1B
pipelines of 2 stages (with the schedule's bubble and each stage's measured idle fraction);
activation checkpointing, offloading, and both, in one process. `p+o / DDP` is a rank's
parameter + optimizer-state bytes over a DDP rank's (1/world for FSDP). On a machine with fewer
GPUs than a cell needs, that cell is left out. Figures come from `memory_per_rank_json`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import textwrap
from pathlib import Path

import pandas as pd

from benchbed import plan
from benchbed.run.runner import run_scenario


def scenario(name: str, body: str, args) -> str:
    return textwrap.dedent(
        f"""
            name = "{name}"
            workload = "{args.workload}"
            device = "{args.device}"
            seeds = [0]
            stop_at_target = false
            timeout_s = 1800
            [budget]
            steps = {args.steps}
            """
    ) + textwrap.dedent(body)


def bodies(b: int) -> dict[str, str]:
    """Scenario bodies by process count (a machine with fewer GPUs skips the larger ones)."""
    return {
        "one": f"""
            [matrix]
            techniques = ["adamw", "activation_checkpointing", "activation_offload",
                          "activation_checkpointing+activation_offload"]
            batch_size = [{b}]
            [techniques.activation_checkpointing]
            every = 2
            """,
        "two": f"""
            [matrix]
            techniques = ["tensor_parallel", "pipeline_parallel"]
            batch_size = [{b}]
            "tensor_parallel.sequence_parallel" = [false, true]
            "pipeline_parallel.schedule" = ["gpipe", "1f1b"]
            [[include]]
            techniques = "data_parallel"
            batch_size = {b // 2}
            [[include]]
            techniques = "fsdp"
            batch_size = {b // 2}
            """,
        "four": f"""
            [matrix]
            techniques = ["fsdp"]
            batch_size = [{b // 4}]
            [[include]]
            techniques = "fsdp+tensor_parallel"
            batch_size = {b // 2}
            [techniques.fsdp]
            world_size = 4
            """,
    }


def run(args, out: Path) -> pd.DataFrame:
    frames = []
    for name, body in bodies(args.batch).items():
        path = out / f"{name}.toml"
        path.write_text(scenario(f"memory-{name}", body, args))
        try:
            sc = plan.load(str(path))
        except plan.ScenarioError as exc:  # e.g. fewer GPUs than these cells need
            print(f"skipped the {name}-process cells: {exc}", file=sys.stderr)
            continue
        res = run_scenario(sc, out / name, progress=False, log=lambda m: print("  " + m, file=sys.stderr))
        frames.append(pd.read_parquet(res / "cells.parquet"))
    return pd.concat(frames, ignore_index=True)


def kib(x) -> str:
    return "NaN" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x / 1024:,.1f}"


def table(cells: pd.DataFrame) -> str:
    ddp = cells[cells.techniques == "adamw+data_parallel"]
    ref = math.nan
    if len(ddp):
        r0 = json.loads(ddp.iloc[0].memory_per_rank_json)[0]
        ref = r0["param_bytes"] + r0["optimizer_state_bytes"]
    head = f"{'cell':58s} {'rank':>4s} {'params KiB':>11s} {'grads KiB':>10s} {'optim KiB':>10s} {'p+o / DDP':>9s} {'saved act KiB':>13s}  notes"
    lines = [head, "-" * len(head)]
    for row in cells.sort_values(["techniques", "variant"]).itertuples():
        extra = json.loads(row.run_extra or "{}")
        if row.status not in ("budget_exhausted", "reached"):
            lines.append(
                f"{row.variant:58s} {row.status}: {str(row.error).splitlines()[0] if row.error else ''}"
            )
            continue
        for r in json.loads(row.memory_per_rank_json):
            notes = []
            if "stage_blocks" in r:
                notes.append(f"stage blocks {r['stage_blocks']}, idle {r['pipeline_idle_frac']:.2f}")
            if r["rank"] == 0 and not math.isnan(row.pipeline_bubble):
                notes.append(f"bubble (p-1)/(m+p-1) = {row.pipeline_bubble:.2f}")
            off = extra.get("activation_offload")
            if off and r["rank"] == 0:
                notes.append(
                    f"offload blocks {off['blocks']}"
                    + (
                        f", moved {kib(off['offloaded_bytes'])} KiB to host"
                        if off["active"]
                        else ", inactive (CPU)"
                    )
                )
            po = (r["param_bytes"] + r["optimizer_state_bytes"]) / ref if ref == ref else math.nan
            lines.append(
                f"{row.variant:58s} {r['rank']:>4d} {kib(r['param_bytes']):>11s} {kib(r['grad_bytes']):>10s} "
                f"{kib(r['optimizer_state_bytes']):>10s} {po:>9.3f} {kib(r['saved_activation_bytes']):>13s}  "
                + "; ".join(notes)
            )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--workload", default="lm-tiny")
    ap.add_argument("--batch", type=int, default=32, help="global batch in sequences (divisible by 8)")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--out", help="results directory (default: a temporary one)")
    args = ap.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="parallel-memory-"))
    out.mkdir(parents=True, exist_ok=True)
    cells = run(args, out)
    print(
        f"{args.workload} on {args.device}, global batch {args.batch}, {args.steps} steps; results in {out}"
    )
    print(table(cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
