"""``benchbed merge DIR... --out DIR``: the command line of ``benchbed.results.merge``.

Exit codes: 0 merged, 2 bad input (a directory that is not a results directory, a foreign schema
version, or two directories with different results for one cell id), with one line naming it."""

from __future__ import annotations

import argparse
import sys

from benchbed.results.merge import MergeError, merge

PROG = "benchbed merge"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Consolidate results directories (shards, Ray runs) into one store, deduplicated by cell id.",
        epilog="A cell id with different results in two directories is refused (exit 2); nothing is written then.",
    )
    parser.add_argument("dirs", nargs="+", metavar="DIR", help="results directories to merge")
    parser.add_argument("--out", required=True, metavar="DIR", help="the merged store (created, or added to)")
    return parser


def cli_main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        summary = merge(args.dirs, args.out)
    except MergeError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    print(
        f"{args.out}: {summary['cells']} cell(s) from {len(args.dirs)} director{'y' if len(args.dirs) == 1 else 'ies'}"
        f" ({summary['added']} added, {summary['duplicates']} identical duplicate(s) kept once)"
    )
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(cli_main())
