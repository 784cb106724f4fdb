"""Measured FLOPs and time per training step of the token-dropping and masking techniques against
their baselines, on the CPU workloads (one process, no scenario): what each really removes.

    python scripts/bench_token_dropping.py [--steps 20] [--threads 1]

For each row it builds the cell's model and techniques through the worker's own assembly, counts the
FLOPs of one full training step (forward, backward; torch.utils.flop_counter.FlopCounterMode) and
times the median step. FLOPs per token divide by the tokens the budget counts (B x T; images for
the ViT). FlopCounterMode counts matmuls; on the CPU it does not count the fused attention kernel
(scaled_dot_product_attention), so the CPU figures are the matmul FLOPs only: the column says so.
random-LTD keeps a growing share of the tokens, so it is measured at two points of its ramp.
Timings on shared cores are noisy; the FLOP counts are exact.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchbed.techniques import REGISTRY, build_config
from benchbed.worker.assemble import build_context, run_settings
from benchbed.worker.context import compose_step
from benchbed.workloads import WORKLOADS, Batch

ROWS = [
    ("mlm-tiny", [], {}, None),
    ("mlm-tiny", ["importance_token_dropping"], {}, None),
    ("mlm-tiny", ["mlm_masking"], {"mlm_masking": {"ratio": 0.45}}, None),
    ("lm-tiny", [], {}, None),
    ("lm-tiny", ["random_ltd"], {"random_ltd": {"keep_last": 0}}, 0.0),
    ("lm-tiny", ["random_ltd"], {"random_ltd": {"keep_last": 0}}, 0.35),
    ("lm-tiny", ["loss_token_masking"], {}, None),
    ("vit-tiny", [], {}, None),
    ("vit-tiny", ["patch_masking"], {}, 0.0),  # a pre-training step
    ("vit-tiny", ["convit"], {}, None),
]


def build(workload: str, names: list[str], options: dict, steps: int):
    w = WORKLOADS[workload]
    techniques = [REGISTRY[n](build_config(REGISTRY[n], options.get(n, {}), n)) for n in [*names, "adamw"]]
    run = run_settings(w, torch.device("cpu"), budget_tokens=None, budget_steps=steps)
    view = {"device": "cpu", "techniques": [*names, "adamw"], "workload": workload, "world_size": 1}
    return build_context(w, techniques, run, view)


def measure(workload, names, options, progress, steps):
    total_steps = 1000
    ctx = build(workload, names, options, total_steps)
    ctx.step = int((progress or 0.0) * total_steps)
    step_fn = compose_step(ctx)
    data = ctx.workload.make_data().train_batches(ctx.run.batch_size, ctx.run.seq_len, 0)
    ctx.model.train()

    def one() -> None:
        batch = Batch(*next(data))
        for t in ctx.techniques:
            batch = t.select_batch(batch, ctx)
        step_fn(batch, ctx.step)

    one()  # warm-up
    with FlopCounterMode(display=False) as counter:
        one()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        one()
        times.append(time.perf_counter() - t0)
    tokens = ctx.run.batch_size * ctx.run.seq_len
    return counter.get_total_flops() / tokens, statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="timed steps per row (median)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (as a cell's)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"{'workload':9} {'technique':30} {'matmul FLOPs/token':>19} {'vs base':>8} {'step (ms)':>10}")
    base: dict[str, float] = {}
    for workload, names, options, progress in ROWS:
        flops, seconds = measure(workload, names, options, progress, args.steps)
        base.setdefault(workload, flops)
        label = "+".join(names) or "adamw (baseline)"
        if options:
            label += " " + ",".join(f"{k}={v}" for o in options.values() for k, v in o.items())
        if progress is not None:
            label += f" @{progress:.0%}"
        print(f"{workload:9} {label:30} {flops:19.4g} {flops / base[workload]:8.3f} {seconds * 1e3:10.1f}")


if __name__ == "__main__":
    main()
