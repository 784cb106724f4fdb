"""Benchmark the telemetry sampler on this machine (CPU is enough).

(a) Overhead: the time of a block of training steps of a small torch model with the sampler running
    vs not, interleaved A/B (order alternating per pair so drift cancels), >= 20 pairs; prints the
    median on/off ratio (goal <= 1.01).
(b) Jitter at ``--power-hz``: |actual - scheduled| sample time, p50 and p99, both on an idle process
    and while the training steps of (a) run (goal p99 <= 10 ms).

On a machine without NVML or RAPL the sampler reads only the process RSS, so (a) measures the cost of
the thread's wake-ups and bookkeeping, not of NVML calls; scripts/gpu_telemetry_check.py measures the
NVML path on a GPU.

    python scripts/bench_sampler.py [--pairs 20] [--steps 10] [--idle-seconds 10] [--out FILE.parquet]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np
import pandas as pd
import torch

from benchbed.measure.telemetry import Telemetry

TICKS_FOR_COST = 2000


def small_model_step() -> callable:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(256, 1024), torch.nn.GELU(), torch.nn.Linear(1024, 256), torch.nn.LayerNorm(256)
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    inputs = torch.randn(64, 256)
    targets = torch.randn(64, 256)

    def step() -> None:
        loss = torch.nn.functional.mse_loss(model(inputs), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def timed_block(step, steps: int, power_hz: float, sampled: bool, lags: list[float]) -> float:
    tel = Telemetry(torch.device("cpu"), "bench", power_hz=power_hz) if sampled else None
    if tel is not None:
        tel.start()
        tel.window_start()
    start_s = time.perf_counter()
    for _ in range(steps):
        step()
    elapsed_s = time.perf_counter() - start_s
    if tel is not None:
        tel.window_end()
        tel.stop()
        lags.extend(tel.samples()["sample_lag_s"].dropna().abs().tolist())
    return elapsed_s


def percentiles_ms(lags_s: list[float]) -> tuple[float, float]:
    if not lags_s:
        return float("nan"), float("nan")
    values = np.asarray(lags_s) * 1e3
    return float(np.percentile(values, 50)), float(np.percentile(values, 99))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=20)
    parser.add_argument("--steps", type=int, default=250, help="training steps per timed block")
    parser.add_argument("--power-hz", type=float, default=10.0)
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: less noise on shared CPUs)")
    parser.add_argument(
        "--switch-interval-ms",
        type=float,
        help="set sys.setswitchinterval for the whole benchmark (the GIL hand-off delay; Python's default 5 ms)",
    )
    parser.add_argument("--out", help="write the per-pair timings to this Parquet file")
    args = parser.parse_args(argv)
    if args.pairs < 20:
        print("bench_sampler: --pairs: at least 20 pairs are needed", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    if args.switch_interval_ms is not None:
        sys.setswitchinterval(args.switch_interval_ms / 1e3)
    step = small_model_step()
    for _ in range(5):  # warm-up: allocator, autograd graph caches
        step()

    rows, load_lags = [], []
    for pair in range(args.pairs):
        order = (False, True) if pair % 2 == 0 else (True, False)
        times = {
            sampled: timed_block(step, args.steps, args.power_hz, sampled, load_lags) for sampled in order
        }
        rows.append(
            {"pair": pair, "off_s": times[False], "on_s": times[True], "ratio": times[True] / times[False]}
        )
    pairs = pd.DataFrame(rows)

    # The A/B ratio is noisy on a shared CPU; the CPU time of one tick bounds the overhead without noise.
    ticks = Telemetry(torch.device("cpu"), "ticks", power_hz=args.power_hz, threaded=False)
    ticks.start()
    start_cpu_s = time.thread_time()
    for index in range(TICKS_FOR_COST):
        ticks.sample_once(slow=index % ticks.slow_every == 0)
    tick_cost_s = (time.thread_time() - start_cpu_s) / TICKS_FOR_COST
    ticks.stop()

    idle = Telemetry(torch.device("cpu"), "idle", power_hz=args.power_hz)
    idle.start()
    time.sleep(args.idle_seconds)
    idle.stop()
    idle_lags = idle.samples()["sample_lag_s"].dropna().abs().tolist()

    median_ratio = statistics.median(pairs["ratio"])
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {args.steps} steps/block, "
        f"GIL switch interval {sys.getswitchinterval() * 1e3:g} ms"
    )
    print(
        f"step block median: off {pairs['off_s'].median() * 1e3:.2f} ms, on {pairs['on_s'].median() * 1e3:.2f} ms"
    )
    quartiles = pairs["ratio"].quantile([0.25, 0.75]).tolist()
    print(
        f"(a) overhead, median on/off ratio over {len(pairs)} interleaved pairs: {median_ratio:.4f} "
        f"(IQR {quartiles[0]:.4f}-{quartiles[1]:.4f}; goal <= 1.01)"
    )
    print(
        f"(a') sampler CPU time per tick {tick_cost_s * 1e6:.1f} us -> {tick_cost_s * args.power_hz * 100:.3f}% "
        f"of one core at {args.power_hz:g} Hz"
    )
    for label, lags in (("idle", idle_lags), ("under training load", load_lags)):
        p50_ms, p99_ms = percentiles_ms(lags)
        print(
            f"(b) jitter at {args.power_hz:g} Hz, {label}: p50 {p50_ms:.3f} ms, p99 {p99_ms:.3f} ms "
            f"over {len(lags)} samples (goal p99 <= 10 ms)"
        )
    if args.out:
        pairs.to_parquet(args.out, index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
