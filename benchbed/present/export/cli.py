"""``benchbed export mlflow|tensorboard|wandb DIR... [--to TARGET]``: results into a tracker.

Reads the result tables of finished runs and writes one tracker run per cell (docs/trackers.md).
The trackers are optional: ``pip install 'benchbed[trackers]'``. Exit codes: 0, 2 on bad input
(an unreadable results directory, a tracker that is not installed).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys

from benchbed.present.export.records import records
from benchbed.results.store import StoreError

PROG = "benchbed export"
#: tracker -> (the package it needs, the default target)
TRACKERS = {
    "mlflow": ("mlflow", "mlruns"),
    "tensorboard": ("tensorboard", "tensorboard"),
    "wandb": ("wandb", "wandb-offline"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Export finished results to MLflow (file store or URI), TensorBoard event files, or W&B offline runs.",
    )
    parser.add_argument("tracker", choices=tuple(TRACKERS))
    parser.add_argument("dirs", nargs="+", metavar="DIR", help="results directories")
    parser.add_argument(
        "--to",
        metavar="TARGET",
        help="mlflow: a directory (file store) or tracking URI (default mlruns); tensorboard: a log "
        "directory (default tensorboard); wandb: a directory for offline runs (default wandb-offline)",
    )
    parser.add_argument("--experiment", help="MLflow experiment / W&B project (default: the scenario's name)")
    return parser


def cli_main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    package, default = TRACKERS[args.tracker]
    if importlib.util.find_spec(package) is None:
        print(
            f"{PROG}: {args.tracker}: the {package} package is not installed (pip install 'benchbed[trackers]')",
            file=sys.stderr,
        )
        return 2
    try:
        cells = records(args.dirs)
    except StoreError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    target = args.to or default
    if args.tracker == "mlflow":
        from benchbed.present.export import mlflow as exporter

        written = exporter.export(cells, target, args.experiment)
    elif args.tracker == "tensorboard":
        from benchbed.present.export import tensorboard as exporter

        written = exporter.export(cells, target)
    else:
        from benchbed.present.export import wandb as exporter

        written = exporter.export(cells, target, args.experiment)
    skipped = len(cells) - len(written)
    print(
        f"{args.tracker}: {len(written)} run(s) written to {target}"
        + (f" ({skipped} already exported, skipped)" if skipped else "")
    )
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(cli_main())
