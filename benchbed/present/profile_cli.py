"""``benchbed profile SCENARIO --only CELL [--out DIR]``: a profiler trace (and on CUDA a memory
snapshot) of cells already run, recorded in a separate short run of each, outside its timed run.

The files land in ``DIR/parts/<cell_id>/profile/`` (trace.json, summary.txt, memory_snapshot.pickle
on CUDA) and the dashboard's Profiles view links them. Exit codes: 0 every chosen cell profiled,
1 one failed, 2 bad input (a bad scenario, no cell matches, a cell not run yet).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from benchbed import plan as planning
from benchbed.run.profile import profile_cells

PROG = "benchbed profile"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Record a torch.profiler trace of cells already run (a separate short run, never the timed one).",
    )
    parser.add_argument("scenario", help="scenario file, or the name of a shipped one")
    parser.add_argument("--only", required=True, metavar="PATTERN", help="cells whose id or variant matches")
    parser.add_argument("--out", help="results directory (default: results/<scenario name>)")
    parser.add_argument(
        "--steps", type=int, help="profiled steps (default: the scenario's [profile], else 5)"
    )
    parser.add_argument("--warmup", type=int, help="steps before recording (default 2)")
    parser.add_argument("--device", choices=("cpu", "cuda", "auto"), help="override the scenario's device")
    return parser


def cli_main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        scenario = planning.load(planning.resolve_scenario_path(args.scenario), device_override=args.device)
    except planning.ScenarioError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    settings = {}
    for name in ("steps", "warmup"):
        value = getattr(args, name)
        if value is not None:
            if value < (1 if name == "steps" else 0):
                print(
                    f"{PROG}: --{name}: must be {'>= 1' if name == 'steps' else '>= 0'}, got {value}",
                    file=sys.stderr,
                )
                return 2
            settings[name] = value
    out_dir = Path(args.out or os.path.join("results", scenario.name))
    outcomes = profile_cells(scenario, out_dir, args.only, settings)
    if not outcomes:
        print(f"{PROG}: --only {args.only!r}: no cell of {scenario.name} matches", file=sys.stderr)
        return 2
    for cell_id, outcome in outcomes:
        where = f" -> {out_dir / 'parts' / cell_id / 'profile'}" if outcome == "recorded" else ""
        print(f"{cell_id}: {outcome}{where}")
    if any(o.startswith("no results yet") for _, o in outcomes):
        return 2
    return 0 if all(o == "recorded" for _, o in outcomes) else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(cli_main())
