"""``benchbed gate BASELINE_DIR CANDIDATE_DIR``: the regression gate's outputs and command line.

The verdicts come from ``benchbed.analyse.gate.compare``; this module writes them as a pull-request
comment (markdown, values by ``benchbed.present.format``), as JSON, and as github-action-benchmark
entries, and maps them to the exit code: 1 on a regression (or insufficient data under
``--strict``), 0 otherwise, 2 on bad input. ``benchbed ab`` shares the options and ``run_gate``.

Every string from the results (workload, device, variant, note) is escaped before it enters the
markdown (`markdown_text`): a variant named ``<img src=x onerror=...>`` or ``[x](http://...)`` or
``@team`` shows as text in the pull-request comment, never as HTML, a link or a mention. The output
files are checked before anything is compared (a directory, a missing folder, no permission), so a
bad ``--json`` or ``--markdown`` is one line and exit 2 with nothing written.
"""

from __future__ import annotations

import argparse
import json
import math
import os
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
    unmatched,
)
from benchbed.analyse.tuning import ranking_cells, ruleset_mismatches
from benchbed.present.format import NOT_MEASURED, format_value
from benchbed.text import printable

PROG = "benchbed gate"


#: characters that would become markup: HTML ones as entities, markdown punctuation backslash-escaped,
#: '@' broken by a zero-width space (no mention), ':' as an entity (no autolinked scheme)
_MARKDOWN_LITERAL = {
    **{c: "\\" + c for c in "\\`*_{}[]()#+-.!|~"},
    "&": "&amp;",
    "<": "&lt;",
    ">": "&gt;",
    '"': "&quot;",
    "'": "&#39;",
    ":": "&#58;",
    "@": "@\u200b",
}


def markdown_text(value) -> str:
    """`value` as literal text in a GitHub markdown table cell: no HTML, link, emphasis, mention or
    cell break can come out of it; line breaks and control characters become spaces."""
    return "".join(_MARKDOWN_LITERAL.get(c, c) if c.isprintable() else " " for c in str(value))


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
        note = markdown_text(row.note)
        workload, device, variant = (markdown_text(v) for v in (row.workload, row.device, row.variant))
        lines.append(
            f"| {workload} | {device} | {variant} | {markdown_text(row.ruleset)} | {row.metric} | "
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
        "--allow-missing",
        action="store_true",
        help="a configuration of the baseline missing from the candidate is insufficient data, not a "
        "regression (for configurations removed on purpose)",
    )
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
    parser.add_argument(
        "dirs",
        nargs="+",
        metavar="DIR",
        help="BASELINE_DIR CANDIDATE_DIR (e.g. main's results, then the pull request's); "
        "only CANDIDATE_DIR with --baseline-history",
    )
    history = parser.add_argument_group("baseline from history")
    history.add_argument(
        "--baseline-history",
        nargs="+",
        metavar="DIR",
        help="results directories (or folders of them) of earlier runs; the baseline pools the last --last of them",
    )
    history.add_argument(
        "--last", type=int, default=5, metavar="N", help="runs the baseline pools (default 5)"
    )
    history.add_argument("--branch", help="only runs of this branch (run.json env.git_branch), e.g. main")
    add_gate_options(parser)
    return parser


def check_output(path: str | None, flag: str) -> None:
    """GateInputError unless `path` can be written: not a directory, its folder exists and is writable."""
    if not path:
        return
    target = Path(path)
    parent = target.parent if str(target.parent) else Path(".")
    if target.is_dir():
        raise GateInputError(f"{flag}: {path}: is a directory")
    if not parent.is_dir():
        why = "is not a folder" if parent.exists() else "does not exist"
        raise GateInputError(f"{flag}: {path}: {parent} {why}")
    if not os.access(parent, os.W_OK | os.X_OK) or (target.exists() and not os.access(target, os.W_OK)):
        raise GateInputError(f"{flag}: {path}: not writable")


def _write_outputs(outputs: list[tuple[str, str, str]]) -> None:
    for flag, path, text in outputs:
        try:
            Path(path).write_text(text)
        except OSError as exc:
            raise GateInputError(f"{flag}: {path}: cannot write ({exc.strerror or exc})") from None


def run_gate(
    args: argparse.Namespace,
    baseline_dir: str | Path,
    candidate_dir: str | Path,
    prog: str = PROG,
    baseline_cells: pd.DataFrame | None = None,
) -> int:
    """Load, compare, write the outputs named in ``args``; the exit code (0, 1 or 2). Given
    ``baseline_cells`` (pooled from history), ``baseline_dir`` is only its label."""
    try:
        for flag in ("markdown", "json", "benchmark_action"):
            check_output(getattr(args, flag, None), "--" + flag.replace("_", "-"))
        baseline_cells = load_cells(baseline_dir) if baseline_cells is None else baseline_cells
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
        missing = unmatched(baseline_cells, candidate_cells)
        mismatched = ruleset_mismatches(baseline_cells, candidate_cells)
        if set(ranking_cells(baseline_cells)["config_key"].dropna()) <= set(missing["baseline_only"]):
            why = (
                f"; {len(mismatched)} ran under a different tuning ruleset on each side "
                "(defaults and external are never compared)"
                if len(mismatched)
                else ""
            )
            raise GateInputError(
                f"{candidate_dir}: no cells in common with {baseline_dir} "
                f"(matched by config_key on the same host kind: GPU name or CPU model){why}"
            )
        comparison = compare(
            baseline_cells,
            candidate_cells,
            GateThresholds(**thresholds),
            allow_missing=getattr(args, "allow_missing", False),
        )
    except GateInputError as error:
        print(f"{prog}: {printable(str(error))}", file=sys.stderr)
        return 2
    markdown = to_markdown(comparison, strict=args.strict)
    if missing["candidate_only"] or missing["other_host_kind"]:
        markdown += (
            f"\nNot compared: {len(missing['candidate_only'])} configuration(s) only in the candidate, "
            f"{len(missing['other_host_kind'])} run on different host kinds (GPU name / CPU model).\n"
        )
    markdown += ruleset_note(mismatched)
    outputs = []
    if args.markdown:
        outputs.append(("--markdown", args.markdown, markdown))
    if args.json:
        extra = {
            "baseline_dir": str(baseline_dir),
            "candidate_dir": str(candidate_dir),
            "thresholds": thresholds,
            "unmatched": missing,
            "ruleset_mismatches": mismatched.to_dict(orient="records"),
        }
        report = to_json(comparison, strict=args.strict, extra=extra)
        outputs.append(("--json", args.json, json.dumps(report, indent=2, default=str) + "\n"))
    if args.benchmark_action:
        text = json.dumps(to_benchmark_action(comparison), indent=2) + "\n"
        outputs.append(("--benchmark-action", args.benchmark_action, text))
    try:
        _write_outputs(outputs)
    except GateInputError as error:
        print(f"{prog}: {printable(str(error))}", file=sys.stderr)
        return 2
    if not args.markdown:
        print(markdown, end="")
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
            f"- {markdown_text(row.workload)} | {markdown_text(row.device)} | {markdown_text(row.variant)}: "
            f"baseline {markdown_text(row.baseline_ruleset)}, candidate {markdown_text(row.candidate_ruleset)}"
        )
    return "\n".join(lines) + "\n"


def cli_main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.baseline_history:
        if len(args.dirs) != 2:
            parser.error("give BASELINE_DIR and CANDIDATE_DIR (or CANDIDATE_DIR with --baseline-history)")
        return run_gate(args, args.dirs[0], args.dirs[1])
    if len(args.dirs) != 1:
        parser.error("with --baseline-history give only CANDIDATE_DIR (after --last N, or before the option)")
    from benchbed.analyse.history import HistoryError, baseline_cells, result_dirs

    try:
        cells, chosen = baseline_cells(result_dirs(args.baseline_history), args.last, args.branch)
    except HistoryError as error:
        print(f"{PROG}: {error}", file=sys.stderr)
        return 2
    label = f"the last {len(chosen)} run(s)" + (f" of {args.branch}" if args.branch else "")
    print(f"{PROG}: baseline: {label}: {', '.join(chosen['label'])}", file=sys.stderr)
    return run_gate(args, label, args.dirs[0], baseline_cells=cells)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(cli_main())
