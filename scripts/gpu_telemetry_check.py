"""Device-machine check of the telemetry NVML path: counter vs integral, jitter and overhead.

Runs a matrix-multiply load on one CUDA device for ``--seconds`` (default 60) inside one training
window and prints:

- the NVML energy counter vs the trapezoid integral of sampled power over the window, and their
  disagreement (the cell flag fires above 5% over >= 30 s);
- sampler jitter at ``--power-hz``: p50 / p99 of |actual - scheduled| sample time;
- sampler overhead: matmul throughput with the sampler on vs off, interleaved A/B pairs, median ratio;
- what the device supports (describe_environment) and machine_info.

Writes ``gpu_telemetry_check.parquet`` (the samples) and ``gpu_telemetry_check.json`` (the figures)
under $OUT when it is set. Exit code 2 without CUDA.

    python scripts/gpu_telemetry_check.py [--seconds 60] [--pairs 20] [--pair-seconds 1.0]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchbed.measure.idle import measure_idle_power
from benchbed.measure.machine import describe_environment, machine_info
from benchbed.measure.telemetry import Telemetry


def matmul_load(device: torch.device, size: int):
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)

    def run_for(seconds: float) -> int:
        """Matmuls issued until ``seconds`` elapse (synchronised), so throughput = count / seconds."""
        count = 0
        end_s = time.perf_counter() + seconds
        while time.perf_counter() < end_s:
            for _ in range(8):
                torch.matmul(a, b)
            count += 8
            torch.cuda.synchronize(device)
        return count

    return run_for


def jitter_ms(frame) -> tuple[float, float]:
    lags = frame["sample_lag_s"].dropna().abs().to_numpy() * 1e3 if "sample_lag_s" in frame else np.array([])
    if len(lags) == 0:
        return math.nan, math.nan
    return float(np.percentile(lags, 50)), float(np.percentile(lags, 99))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the measured load")
    parser.add_argument("--pairs", type=int, default=20, help="A/B pairs for the overhead")
    parser.add_argument("--pair-seconds", type=float, default=1.0, help="load per A or B block")
    parser.add_argument("--idle-seconds", type=float, default=5.0)
    parser.add_argument("--power-hz", type=float, default=10.0)
    parser.add_argument("--size", type=int, default=8192, help="matrix side")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_telemetry_check: no CUDA device: nothing to check", file=sys.stderr)
        return 2
    device = torch.device("cuda", 0)
    figures: dict = {"machine": machine_info(), "environment": describe_environment()}
    for row in figures["environment"]:
        print(
            f"  {row['quantity']:<26} {'yes' if row['available'] else 'no ':<4} {row['source']} {row['reason']}"
        )
    gpu = figures["machine"]["gpus"][0] if figures["machine"]["gpus"] else {}
    print(f"device: {gpu.get('name')} driver {figures['machine']['driver_version']}")

    idle = measure_idle_power(args.idle_seconds, device, power_hz=args.power_hz)
    figures["idle"] = idle
    print(f"idle power: {idle['idle_power_w']:.1f} W ({idle['idle_source']}, {idle['idle_window_s']:.1f} s)")

    run_for = matmul_load(device, args.size)
    run_for(2.0)  # warm-up: cuBLAS heuristics, clocks ramp

    tel = Telemetry(device, "gpu-check", power_hz=args.power_hz, idle_power_w=idle["idle_power_w"])
    tel.start()
    torch.cuda.synchronize(device)
    tel.window_start()
    run_for(args.seconds)
    torch.cuda.synchronize(device)
    tel.window_end()
    summary = tel.stop()
    frame = tel.samples()
    p50_ms, p99_ms = jitter_ms(frame)
    figures["summary"] = summary
    figures["jitter_p50_ms"], figures["jitter_p99_ms"] = p50_ms, p99_ms
    print(
        f"counter energy {summary['energy_j']:.1f} J ({summary['energy_source']}), integral "
        f"{summary['energy_integral_j']:.1f} J ({summary['power_source']}), disagreement "
        f"{summary['energy_disagreement'] * 100:.2f}% over {summary['telemetry_window_s']:.1f} s, "
        f"flag {summary['energy_flag']}"
    )
    print(
        f"mean power {summary['mean_power_w']:.1f} W, peak {summary['peak_power_w']:.1f} W, net energy "
        f"{summary['net_energy_j']:.1f} J, peak mem {summary['peak_mem_bytes'] / 2**30:.2f} GiB"
    )
    print(
        f"jitter at {args.power_hz:g} Hz: p50 {p50_ms:.3f} ms, p99 {p99_ms:.3f} ms over {len(frame)} samples"
    )
    if summary["sensor_errors"]:
        print(f"sensor errors: {summary['sensor_errors']}")

    ratios = []
    for pair in range(args.pairs):
        rates = {}
        for sampled in (False, True) if pair % 2 == 0 else (True, False):
            block = Telemetry(device, "ab", power_hz=args.power_hz) if sampled else None
            if block is not None:
                block.start()
            start_s = time.perf_counter()
            count = run_for(args.pair_seconds)
            rates[sampled] = count / (time.perf_counter() - start_s)
            if block is not None:
                block.stop()
        ratios.append(rates[False] / rates[True])  # time per matmul, on / off
    figures["overhead_ratios"] = ratios
    figures["overhead_median_ratio"] = statistics.median(ratios)
    print(f"overhead: median time ratio on/off over {len(ratios)} pairs {statistics.median(ratios):.4f}")

    out = os.environ.get("OUT")
    if out:
        frame.to_parquet(Path(out) / "gpu_telemetry_check.parquet", index=False)
        with open(Path(out) / "gpu_telemetry_check.json", "w") as handle:
            json.dump(figures, handle, indent=2, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
