"""Is a CPU cell bitwise-reproducible? Trains one lm-tiny cell twice at each torch thread count and
counts the curve points (validation and training loss at each evaluation) that differ.

Expected: 0 differing points between two runs at the same thread count, and some at different
counts (the reduction order of a matmul depends on how it is split across threads). This is why
every row records `threads` and the gate holds fixed-seed metrics to bitwise equality only when
both sides trained with the same count.

    python scripts/check_determinism.py [--threads 1 2] [--steps 60]
"""

from __future__ import annotations

import argparse
import tempfile
import textwrap
from pathlib import Path

import pandas as pd
import torch

from benchbed import plan
from benchbed.worker.cell import train_cell

SCENARIO = """
name = "determinism"
workload = "lm-tiny"
device = "cpu"
seeds = [0]
target_loss = 0.01
stop_at_target = false
eval_every_tokens = {every}
[budget]
steps = {steps}
"""


def curve(spec: dict, threads: int) -> pd.DataFrame:
    torch.set_num_threads(threads)
    _, curves, _ = train_cell(spec)
    return curves[["step", "train_loss", "val_loss"]].reset_index(drop=True)


def differing(a: pd.DataFrame, b: pd.DataFrame) -> int:
    values_a = a[["train_loss", "val_loss"]].to_numpy()
    values_b = b[["train_loss", "val_loss"]].to_numpy()
    same = (values_a == values_b) | (pd.isna(values_a) & pd.isna(values_b))
    return int((~same).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "determinism.toml"
        path.write_text(textwrap.dedent(SCENARIO.format(steps=args.steps, every=32 * 63 * 2)))
        (cell,) = plan.load(str(path)).cells
    spec = cell.to_spec()
    runs = {t: (curve(spec, t), curve(spec, t)) for t in args.threads}
    points = 2 * len(next(iter(runs.values()))[0])
    print(f"lm-tiny, {args.steps} steps, {points} curve values per run (train and validation loss)")
    for t, (first, second) in runs.items():
        print(f"  {t} thread(s), run 1 vs run 2: {differing(first, second)} of {points} values differ")
    ref = args.threads[0]
    for t in args.threads[1:]:
        print(f"  {ref} vs {t} thread(s): {differing(runs[ref][0], runs[t][0])} of {points} values differ")


if __name__ == "__main__":
    main()
