"""``benchbed gate BASELINE_DIR CANDIDATE_DIR``: the regression gate's outputs and command line.

The verdicts come from ``benchbed.analyse.gate.compare``; this module writes them as a pull-request
comment (markdown, values by ``benchbed.present.format``), as JSON, and as github-action-benchmark
entries, and maps them to the exit code: 1 on a regression (or insufficient data under
``--strict``), 0 otherwise, 2 on bad input. ``benchbed ab`` shares the options and ``run_gate``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import pandas as pd

from benchbed.analyse.gate import (
    VERDICTS,
    GateInputError,
    GateThresholds,
    compare,
    failed,
    load_cells,
    ruleset_mismatches,
    unmatched,
)
from benchbed.present.format import NOT_MEASURED, format_value

PROG = "benchbed gate"


def _format_value(value, metric: str) -> str:
    # in the comparison table a target never reached is +inf: a gap is always "not measured"
    return format_value(value, metric, missing=NOT_MEASURED)


def to_markdown(comparison: pd.DataFrame, *, strict: bool = False, title: str = "benchbed gate") -> str:
    """A pull-request comment: a one-line verdict, counts, then the table (problems first)."""
    counts = comparison["verdict"].value_counts()
    status = "FAIL" if failed(comparison, strict=strict) else "PASS"
    summary = ", ".join(f"{int(counts[v])} {v}" for v in VERDICTS if v in counts.index)
    lines = [
        f"### {title}: {status}",
        "",
        f"{comparison['config_key'].nunique()} configuration(s) compared: {summary}.",
    ]
    if "insufficient_data" in counts.index and not strict:
        lines.append(
            "Insufficient data does not fail the gate without `--strict`; run more seeds or `--repeat`."
        )
    lines += [
        "",
        "| workload | device | variant | ruleset | metric | baseline | candidate | ratio | p | verdict | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    order = {verdict: i for i, verdict in enumerate(VERDICTS)}
    ordered = comparison.assign(_order=comparison["verdict"].map(order)).sort_values(
        ["_order", "workload", "device", "variant", "metric"], kind="stable"
    )
    for row in ordered.itertuples(index=False):
        ratio = "" if math.isnan(row.ratio) else f"{row.ratio:.3f}"
        p_value = "" if math.isnan(row.p_value) else f"{row.p_value:.3g}"
        verdict = f"**{row.verdict}**" if row.verdict in ("regression", "suspicious") else row.verdict
        note = str(row.note).replace("|", "/")
        lines.append(
            f"| {row.workload} | {row.device} | {row.variant} | {row.ruleset} | {row.metric} | "
            f"{_format_value(row.baseline_value, row.metric)} | {_format_value(row.candidate_value, row.metric)} | "
            f"{ratio} | {p_value} | {verdict} | {note} |"
        )
    return "\n".join(lines) + "\n"


def _json_number(value):
    if value is None:
        return None
    value = float(value)
    if math.isnan(value):
        return None
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return value


def to_json(comparison: pd.DataFrame, *, strict: bool = False, extra: dict | None = None) -> dict:
    """The report as a JSON-ready dict: ``failed``, verdict counts and one record per row
    (NaN as null, +inf as the string "inf")."""
    records = []
    for row in comparison.to_dict(orient="records"):
        for key in ("baseline_value", "candidate_value", "ratio", "threshold", "p_value"):
            row[key] = _json_number(row[key])
        row["n_baseline"] = int(row["n_baseline"])
        row["n_candidate"] = int(row["n_candidate"])
        records.append(row)
    report = {
        "failed": failed(comparison, strict=strict),
        "strict": strict,
        "counts": {str(k): int(v) for k, v in comparison["verdict"].value_counts().items()},
        "rows": records,
    }
    return {**report, **(extra or {})}


#: github-action-benchmark units of the metrics it tracks (smaller is better for all of them)
BENCHMARK_UNITS = {
    "time_to_target_s": "s",
    "energy_to_target_j": "J",
    "peak_mem_bytes": "bytes",
    "tokens_to_target": "tokens",
    "steps_to_target": "steps",
    "final_val_loss": "nats/token",
}


def to_benchmark_action(comparison: pd.DataFrame) -> list[dict]:
    """github-action-benchmark ``customSmallerIsBetter`` entries of the candidate's medians.

    Only smaller-is-better metrics appear (tokens/s would read inverted); values that are NaN or
    infinite (not measured, not reached) are left out, since the format has no such value.
    """
    entries = []
    for row in comparison.itertuples(index=False):
        if row.metric not in BENCHMARK_UNITS:
            continue
        value = float(row.candidate_value)
        if not math.isfinite(value):
            continue
        entries.append(
            {
                "name": f"{row.workload}/{row.device}/{row.variant} ({row.ruleset}) {row.metric}",
                "unit": BENCHMARK_UNITS[row.metric],
                "value": value,
                "extra": f"baseline {_format_value(row.baseline_value, row.metric)}; verdict {row.verdict}",
            }
        )
    return entries


# -- command line -----------------------------------------------------------------------------


def add_gate_options(parser: argparse.ArgumentParser) -> None:
    """The thresholds and outputs shared by ``benchbed gate`` and ``benchbed ab``."""
    options = parser.add_argument_group("gate")
    defaults = GateThresholds()
    for name, what in (
        ("time_threshold", "relative slowdown of time-to-target that counts"),
        ("throughput_threshold", "relative drop of tokens/s that counts"),
        ("energy_threshold", "relative growth of energy-to-target that counts"),
        ("memory_threshold", "relative growth of peak memory that counts"),
        ("alpha", "significance level of the one-sided Mann-Whitney U test"),
        ("loss_rtol", "relative tolerance of final_val_loss for a fixed seed on the CPU"),
    ):
        flag = "--" + name.replace("_", "-")
        options.add_argument(
            flag,
            type=float,
            metavar="X",
            default=getattr(defaults, name),
            help=f"{what} (default %(default)s)",
        )
    options.add_argument(
        "--min-samples",
        type=int,
        default=defaults.min_samples,
        help="samples per side below which the verdict is insufficient_data (default %(default)s)",
    )
    options.add_argument("--strict", action="store_true", help="insufficient data fails the gate")
    options.add_argument(
        "--markdown", metavar="FILE", help="write the markdown table here instead of printing it"
    )
    options.add_argument("--json", metavar="FILE", help="write the full report as JSON")
    options.add_argument(
        "--benchmark-action", metavar="FILE", help="write github-action-benchmark customSmallerIsBetter JSON"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Compare a candidate's results with a baseline's; exit 1 on a regression.",
        epilog="Exit codes: 0 no regression, 1 regression (or insufficient data under --strict), 2 bad input.",
    )
    parser.add_argument("baseline_dir", help="results directory of the baseline (e.g. main)")
    parser.add_argument("candidate_dir", help="results directory of the candidate (e.g. the pull request)")
    add_gate_options(parser)
    return parser


def run_gate(
    args: argparse.Namespace, baseline_dir: str | Path, candidate_dir: str | Path, prog: str = PROG
) -> int:
    """Load, compare, write the outputs named in ``args``; the exit code (0, 1 or 2)."""
    try:
        baseline_cells = load_cells(baseline_dir)
        candidate_cells = load_cells(candidate_dir)
        thresholds = {
            "time_threshold": args.time_threshold,
            "throughput_threshold": args.throughput_threshold,
            "energy_threshold": args.energy_threshold,
            "memory_threshold": args.memory_threshold,
            "alpha": args.alpha,
            "min_samples": args.min_samples,
            "loss_rtol": args.loss_rtol,
        }
        for name, value in thresholds.items():
            if not (value >= 0 and math.isfinite(value)):
                raise GateInputError(f"--{name.replace('_', '-')}: must be a finite number >= 0, got {value}")
        comparison = compare(baseline_cells, candidate_cells, GateThresholds(**thresholds))
        mismatched = ruleset_mismatches(baseline_cells, candidate_cells)
        if comparison.empty:
            why = (
                f"; {len(mismatched)} ran under a different tuning ruleset on each side "
                "(defaults and external are never compared)"
                if len(mismatched)
                else ""
            )
            raise GateInputError(
                f"{candidate_dir}: no cells in common with {baseline_dir} (matched by config_key){why}"
            )
    except GateInputError as error:
        print(f"{prog}: {error}", file=sys.stderr)
        return 2
    markdown = to_markdown(comparison, strict=args.strict)
    missing = unmatched(baseline_cells, candidate_cells)
    if missing["baseline_only"] or missing["candidate_only"]:
        markdown += (
            f"\nNot compared: {len(missing['baseline_only'])} configuration(s) only in the baseline, "
            f"{len(missing['candidate_only'])} only in the candidate.\n"
        )
    markdown += ruleset_note(mismatched)
    if args.markdown:
        Path(args.markdown).write_text(markdown)
    else:
        print(markdown, end="")
    if args.json:
        extra = {
            "baseline_dir": str(baseline_dir),
            "candidate_dir": str(candidate_dir),
            "thresholds": thresholds,
            "unmatched": missing,
            "ruleset_mismatches": mismatched.to_dict(orient="records"),
        }
        report = to_json(comparison, strict=args.strict, extra=extra)
        Path(args.json).write_text(json.dumps(report, indent=2, default=str) + "\n")
    if args.benchmark_action:
        Path(args.benchmark_action).write_text(json.dumps(to_benchmark_action(comparison), indent=2) + "\n")
    return 1 if failed(comparison, strict=args.strict) else 0


def ruleset_note(mismatched: pd.DataFrame) -> str:
    """Markdown naming the configurations not compared because their tuning rulesets differ."""
    if mismatched.empty:
        return ""
    lines = [
        "",
        f"Not compared, tuning rulesets differ ({len(mismatched)}): a `defaults` number is never "
        "compared with an `external` (tuned) one.",
        "",
    ]
    for row in mismatched.itertuples(index=False):
        lines.append(
            f"- {row.workload} | {row.device} | {row.variant}: baseline {row.baseline_ruleset}, "
            f"candidate {row.candidate_ruleset}"
        )
    return "\n".join(lines) + "\n"


def cli_main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_gate(args, args.baseline_dir, args.candidate_dir)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(cli_main())
