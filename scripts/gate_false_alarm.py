"""Measure the gate's false-alarm rate on real A/A runs and its detection rate of a 10% slowdown.

Runs ``--pairs`` A/A pairs of a small CPU scenario (``benchbed ab`` with this source tree on both
sides, or with ``--mode blocks`` one ``benchbed run`` per side; ``--repeat`` runs of each cell so
the Mann-Whitney test can reach p < 0.01), gates every pair with the default
thresholds, and counts the pairs the gate fails: with identical code every failure is a false alarm.
Then it plants a slowdown in a copy of each pair's candidate table (times scaled by 1 + slowdown,
throughput divided by it) and counts the pairs whose time-to-target is flagged as a regression.

    python scripts/gate_false_alarm.py --pairs 10 --repeat 5

Prints one line per pair and the two rates. Without ``--scenario`` a built-in scenario is used:
lm-tiny, one seed, 4 steps, a target of 3.40 nats reached after 2 steps.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from benchbed.analyse import gate
from benchbed.results import store

BUILT_IN_SCENARIO = """\
name = "gate-false-alarm"
workload = "lm-tiny"
device = "cpu"
seeds = [0]
baseline = "adamw"
target_loss = 3.40
stop_at_target = false
timeout_s = 300
eval_every_tokens = 4032

[budget]
steps = 4
"""

#: columns that scale with a uniform slowdown of the training step (tokens_per_s divides)
SLOWED_COLUMNS = ("time_to_target_s", "train_time_s", "energy_to_target_j", "energy_j")


REPO = Path(__file__).resolve().parents[1]


def run_ab_pair(scenario: Path, out_dir: Path, repeat: int) -> tuple[Path, Path]:
    """Both sides from this source tree, interleaved cell by cell (A B B A ...) by ``benchbed ab``."""
    command = [sys.executable, "-m", "benchbed.cli", "ab", str(scenario), "--baseline-src", str(REPO)]
    command += ["--candidate-src", str(REPO), "--out", str(out_dir), "--pairs", str(repeat)]
    command += ["--markdown", str(out_dir / "gate.md")]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode == 2:
        raise SystemExit(f"benchbed ab failed for {out_dir}:\n{result.stderr[-2000:]}")
    return out_dir / "baseline", out_dir / "candidate"


def run_once(scenario: Path, out_dir: Path, repeat: int) -> Path:
    command = [sys.executable, "-m", "benchbed.cli", "run", str(scenario), "--out", str(out_dir)]
    command += ["--repeat", str(repeat), "--quiet"]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"benchbed run failed ({result.returncode}) for {out_dir}:\n{result.stderr[-2000:]}")
    return out_dir


def planted_slowdown(cells: pd.DataFrame, slowdown: float) -> pd.DataFrame:
    slowed = cells.copy()
    for column in SLOWED_COLUMNS:
        if column in slowed.columns:
            slowed[column] = slowed[column] * (1.0 + slowdown)
    slowed["tokens_per_s"] = slowed["tokens_per_s"] / (1.0 + slowdown)
    return slowed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=10, help="A/A pairs (default %(default)s)")
    parser.add_argument(
        "--repeat", type=int, default=5, help="runs of each cell per side (default %(default)s)"
    )
    parser.add_argument("--slowdown", type=float, default=0.10, help="planted slowdown (default %(default)s)")
    parser.add_argument("--scenario", type=Path, help="scenario file (default: a built-in 4-step lm-tiny)")
    parser.add_argument("--out", type=Path, help="keep the results here (default: a temporary directory)")
    parser.add_argument(
        "--mode",
        choices=("ab", "blocks"),
        default="ab",
        help="ab: the sides interleaved cell by cell by `benchbed ab` (default); "
        "blocks: one `benchbed run --repeat` per side, one after the other",
    )
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="gate-false-alarm-") as tmp:
        out = args.out or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        scenario = args.scenario
        if scenario is None:
            scenario = out / "gate-false-alarm.toml"
            scenario.write_text(BUILT_IN_SCENARIO)
        false_alarms = detected = suspicious = 0
        started = time.perf_counter()
        print("pair  time ratio  p(A/A)    A/A verdicts                planted time verdict  p(planted)")
        for pair in range(args.pairs):
            pair_dir = out / f"pair{pair:02d}"
            if args.mode == "ab":
                base_dir, cand_dir = run_ab_pair(scenario, pair_dir, args.repeat)
            else:
                base_dir, cand_dir = pair_dir / "a", pair_dir / "b"
                for side_dir in (base_dir, cand_dir) if pair % 2 == 0 else (cand_dir, base_dir):
                    run_once(scenario, side_dir, args.repeat)  # alternate which side runs first
            base, cand = store.load(base_dir).cells, store.load(cand_dir).cells
            same = gate.compare(base, cand)
            planted = gate.compare(base, planted_slowdown(cand, args.slowdown))
            false_alarms += gate.failed(same)
            suspicious += bool((same["verdict"] == "suspicious").any())
            time_same = same[same["metric"] == "time_to_target_s"].iloc[0]
            time_planted = planted[planted["metric"] == "time_to_target_s"].iloc[0]
            detected += time_planted["verdict"] == "regression"
            counts = ",".join(f"{k}:{v}" for k, v in same["verdict"].value_counts().items())
            print(
                f"{pair:4d}  {time_same['ratio']:10.3f}  {time_same['p_value']:7.3g}   {counts:26s}  "
                f"{time_planted['verdict']:20s}  {time_planted['p_value']:.3g}",
                flush=True,
            )
        elapsed_s = time.perf_counter() - started
    n = args.pairs
    print(f"\n{n} A/A pairs x {args.repeat} repeats a side, mode {args.mode} ({elapsed_s:.0f} s):")
    print(f"false-alarm rate (gate failed on identical code): {false_alarms}/{n} = {false_alarms / n:.0%}")
    print(f"pairs with a 'suspicious' verdict (reported, not failing): {suspicious}/{n}")
    print(
        f"detection rate of a planted {args.slowdown:.0%} slowdown (time_to_target_s regression): "
        f"{detected}/{n} = {detected / n:.0%}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
