"""``benchbed history DIR...``: each configuration's metric across runs, oldest run first, and its trend.

DIR is a results directory or a folder of them (``history/``, one subdirectory per run, as a CI
keeps them). Prints the runs in history order, then one row per configuration and host kind with
the metric's median in each run (values by ``present.format``), then the trend: first and last
value, relative change, worse / better / flat. ``--csv`` / ``--parquet`` write the long table
(every metric). Exit codes: 0, 2 on bad input.
"""

from __future__ import annotations

import argparse
import math
import sys

import pandas as pd

from benchbed.analyse.history import DEFAULT_METRICS, HistoryError, history, result_dirs, runs, trend, wide
from benchbed.present.format import format_value

PROG = "benchbed history"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Each configuration's metrics across runs, ordered by commit and time, and the trend.",
    )
    parser.add_argument("dirs", nargs="+", metavar="DIR", help="results directories, or folders of them")
    parser.add_argument(
        "--metric",
        default="time_to_target_s",
        choices=DEFAULT_METRICS,
        help="the metric shown per run and trended (default %(default)s)",
    )
    parser.add_argument("--branch", help="only runs of this branch (run.json env.git_branch)")
    parser.add_argument("--last", type=int, metavar="N", help="only the N newest runs")
    parser.add_argument("--csv", metavar="FILE", help="write the long table (every metric) as CSV")
    parser.add_argument("--parquet", metavar="FILE", help="write the long table as Parquet")
    return parser


def _text(frame: pd.DataFrame, metric: str, skip: tuple[str, ...] = ()) -> str:
    shown = frame.copy()
    for column in shown.columns:
        if column in skip:
            continue
        if shown[column].dtype.kind == "f":
            shown[column] = [format_value(v, metric) for v in shown[column]]
    return shown.to_string(index=False)


def cli_main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        dirs = result_dirs(args.dirs)
        run_table = runs(dirs)
        if args.branch is not None:
            run_table = run_table[run_table["git_branch"] == args.branch]
        if args.last is not None:
            if args.last < 1:
                raise HistoryError(f"--last: must be >= 1, got {args.last}")
            run_table = run_table.tail(args.last)
        if run_table.empty:
            raise HistoryError(f"no run of branch {args.branch!r} in the directories given")
        table = history([d for d in dirs if str(d) in set(run_table["dir"])])
    except HistoryError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    if args.csv:
        table.to_csv(args.csv, index=False)
    if args.parquet:
        table.to_parquet(args.parquet, index=False)
    print(f"{len(run_table)} run(s), oldest first:")
    print(run_table[["order", "git_sha", "git_branch", "started_at", "dir"]].to_string(index=False))
    estimate = " -- an ESTIMATE: energy x grid intensity (docs/carbon.md)" if args.metric == "co2_kg" else ""
    print(f"\n{args.metric} per run (median over seeds and repeats){estimate}:")
    print(_text(wide(table, args.metric), args.metric))
    trends = trend(table, args.metric)
    trends["change"] = ["" if math.isnan(v) else f"{v:+.1%}" for v in trends["change"].to_numpy(dtype=float)]
    print(f"\ntrend of {args.metric} (first -> last run that measured it; not a gate verdict):")
    print(_text(trends.drop(columns=["config_key"]), args.metric, skip=("change",)))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(cli_main())
