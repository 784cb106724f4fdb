"""`benchbed report DIR... --html FILE`: one self-contained HTML page with the dashboard's figures and tables.

The data, filters and text tables come from ``benchbed.present.display`` (the dashboard's own read
side), the figures from ``benchbed.present.figures``; plotly.js is inlined once so the page works
offline as a CI artifact. Directories or files that cannot be read become red error lines on the
page and exit code 2, while everything readable is still shown.
"""

from __future__ import annotations

import argparse
import html
import sys
import time
from pathlib import Path

import pandas as pd

from benchbed.present import figures
from benchbed.present.display import (
    cell_labels,
    display_table,
    edge_notes,
    gate_compare,
    leaderboard,
    leaderboard_display,
    load_for_display,
    ranked_cells,
    ruleset_mismatches,
    with_ruleset_labels,
)

CSS = """
body { font-family: -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2rem auto; max-width: 1200px;
       color: #1f2933; padding: 0 1rem; }
h1 { margin-bottom: 0.2rem; } h2 { margin-top: 2.2rem; border-bottom: 1px solid #d9e2ec; padding-bottom: .3rem; }
.meta { color: #52606d; }
table { border-collapse: collapse; font-size: 0.85rem; margin: 0.6rem 0; }
th, td { border-bottom: 1px solid #e4e7eb; padding: 4px 10px; text-align: left; vertical-align: top; }
th { background: #f5f7fa; }
.error { background: #fde8e8; border: 1px solid #f8b4b4; color: #9b1c1c; padding: .6rem 1rem;
         border-radius: 6px; margin: .4rem 0; }
.note { background: #eef6ff; border: 1px solid #b6d4fe; padding: .5rem 1rem; border-radius: 6px; }
"""

#: rank_by value -> section title. The report ranks by the two headline metrics; every table still
#: carries peak memory and tokens/s with their intervals, and the dashboard ranks by those too.
REPORT_RANKINGS = {
    "time_to_target_s": "time to target",
    "energy_to_target_j": "energy to target",
}

RULESET_NOTE = (
    "Every row names the tuning ruleset its numbers come from. external: each configuration was tuned "
    "in several studies of quasi-random trials; a study's number is its best trial's, the row the "
    "median over studies, and the tuning time and energy the sums over all its trials. defaults: one "
    "run per seed at the paper defaults, median over seeds. A row reaches only when more than half of "
    "its studies (seeds) reached; speedups compare rows of the same ruleset only."
)

TELEMETRY_CELLS_IN_REPORT = 6
CURVE_VARIANTS_IN_REPORT = 8
ROWS_PER_TABLE_IN_REPORT = 60
LEADERBOARD_ROWS_PER_WORKLOAD_IN_REPORT = 15


class _Page:
    def __init__(self) -> None:
        self.parts: list[str] = []
        self.plotly_js_included = False

    def add(self, text: str) -> None:
        self.parts.append(text)

    def heading(self, text: str, level: int = 2) -> None:
        self.add(f"<h{level}>{html.escape(text)}</h{level}>")

    def error(self, text: str) -> None:
        self.add(f'<div class="error">{html.escape(text)}</div>')

    def note(self, text: str) -> None:
        self.add(f'<div class="note">{html.escape(text)}</div>')

    def table(self, frame: pd.DataFrame) -> None:
        shown = frame.head(ROWS_PER_TABLE_IN_REPORT)
        self.add(shown.to_html(index=False, border=0, na_rep="not measured", escape=True))
        if len(frame) > len(shown):
            self.note(f"{len(frame) - len(shown)} more rows not shown; the dashboard lists them all")

    def figure(self, fig) -> None:
        # plotly.js goes in once, inline, so the page works offline as a CI artifact.
        self.add(fig.to_html(full_html=False, include_plotlyjs=not self.plotly_js_included))
        self.plotly_js_included = True


def _leaderboard_sections(page: _Page, cells: pd.DataFrame) -> pd.DataFrame | None:
    """One table per headline ranking; returns the time-to-target board (None if time was not recorded)."""
    time_board = None
    for rank_by, title in REPORT_RANKINGS.items():
        page.heading(f"Leaderboard: {title}", 3)
        reason = figures.not_measured_reason(cells, rank_by)
        if reason and reason.startswith("not measured"):
            page.note(f"{title}: {reason}")
            continue
        board = leaderboard(cells, rank_by)
        if rank_by == "time_to_target_s":
            time_board = board
        groups = [c for c in ("workload", "device") if c in board]
        top = (
            board.groupby(groups, sort=False).head(LEADERBOARD_ROWS_PER_WORKLOAD_IN_REPORT)
            if groups
            else board
        )
        page.table(leaderboard_display(top, rank_by, cells))
        if len(top) < len(board):
            page.note(
                f"best {LEADERBOARD_ROWS_PER_WORKLOAD_IN_REPORT} per workload and device shown "
                f"({len(board)} configurations in all); the dashboard lists them all"
            )
    return time_board


def build_html(dirs: list[str], title: str = "benchbed report") -> tuple[str, list[str]]:
    """The report page and the error lines of directories or files that could not be shown."""
    loaded = load_for_display(dirs)
    page = _Page()
    page.add(f"<h1>{html.escape(title)}</h1>")
    runs = loaded.runs
    page.add(
        f'<p class="meta">{len(runs)} run(s), {len(loaded.cells)} cell(s), generated '
        f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}</p>"
    )
    for error in loaded.errors:
        page.error(error)
    if len(runs):
        page.table(runs)
    cells = loaded.cells
    if len(cells):
        page.heading("Leaderboard")
        page.note(RULESET_NOTE)
        for note in edge_notes(cells):
            page.note(f"Search range: {note}.")
        time_board = _leaderboard_sections(page, cells)
        if time_board is not None:
            time_board = with_ruleset_labels(time_board)
        order = list(dict.fromkeys(time_board["variant"].astype(str))) if time_board is not None else []
        variants = (
            order[:CURVE_VARIANTS_IN_REPORT]
            or sorted(cells["variant"].astype(str).unique())[:CURVE_VARIANTS_IN_REPORT]
        )

        page.heading("Curves")
        for axis in figures.CURVE_AXES:
            page.figure(figures.curves_figure(loaded.curves, ranked_cells(cells), x=axis, variants=variants))

        page.heading("Pareto fronts")
        if time_board is None:
            page.note("Pareto fronts need time_to_target_s, which these cells do not have")
        for y in ("energy_to_target_j", "peak_mem_bytes"):
            reason = figures.not_measured_reason(cells, y)
            if reason and reason.startswith("not measured"):
                page.note(f"time against {figures.METRICS[y][0]}: {reason}")
            elif time_board is not None:
                page.figure(figures.pareto_figure(time_board, "time_to_target_s", y))

        page.heading("Telemetry")
        chosen = cells.head(TELEMETRY_CELLS_IN_REPORT)
        page.figure(figures.telemetry_figure(loaded.telemetry, cell_labels(chosen)))
        if len(cells) > len(chosen):
            page.note(f"first {len(chosen)} cells shown; the dashboard shows any cell")

        if len(runs) >= 2:
            page.heading("Compare")
            _compare_section(page, cells, runs)
    if len(loaded.kernels):
        page.heading("Kernels")
        speedups = figures.kernel_speedups(loaded.kernels)
        page.figure(figures.kernels_figure(speedups))
        page.table(display_table(speedups, cells))
    document = (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{CSS}</style></head><body>\n" + "\n".join(page.parts) + "\n</body></html>\n"
    )
    return document, loaded.errors


def _compare_section(page: _Page, cells: pd.DataFrame, runs: pd.DataFrame) -> None:
    baseline_id, candidate_id = str(runs["run_id"].iloc[0]), str(runs["run_id"].iloc[-1])
    page.note(f"baseline run {baseline_id} against candidate run {candidate_id}")
    run_ids = cells["run_id"].astype(str)
    base, cand = cells[run_ids == baseline_id], cells[run_ids == candidate_id]
    try:
        verdicts = gate_compare(base, cand)
    except ValueError as exc:  # the gate names the missing column
        page.error(f"compare: {exc}")
        return
    mismatched = ruleset_mismatches(base, cand)
    if len(mismatched):
        page.note(
            f"{len(mismatched)} configuration(s) ran under a different tuning ruleset in each run and are "
            "not compared (a defaults number is never compared with an external one)"
        )
        page.table(mismatched)
    page.table(display_table(verdicts, cells))


def cli_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="benchbed report",
        description="Write one self-contained HTML page (plotly inlined) with the dashboard's figures and tables.",
    )
    parser.add_argument(
        "dirs", nargs="+", metavar="DIR", help="results directories written by `benchbed run`"
    )
    parser.add_argument("--html", required=True, metavar="FILE", help="where to write the HTML report")
    parser.add_argument("--title", default="benchbed report", help="page title")
    args = parser.parse_args(argv)
    document, errors = build_html(args.dirs, title=args.title)
    out = Path(args.html)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(document, encoding="utf-8")
    except OSError as exc:
        print(f"benchbed report: {out}: cannot write ({exc.strerror or exc})", file=sys.stderr)
        return 2
    for error in errors:
        print(f"benchbed report: {error}", file=sys.stderr)
    # The page is written even with bad inputs (their errors are on it), but CI must notice them.
    return 2 if errors else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(cli_main(sys.argv[1:]))
