"""`benchbed report DIR... --html FILE`: one self-contained HTML page with the dashboard's figures and tables.

Also the read side the dashboard shares: `load_for_display` reads each results directory on its own so
one empty directory, corrupt Parquet file or foreign schema version becomes one error line naming the
file while every other directory is still shown. Rankings, confidence intervals and verdicts come
from `benchbed.stats` and `benchbed.gate`; nothing here ranks cells itself.
"""

from __future__ import annotations

import argparse
import dataclasses
import html
import math
import sys
import time
from pathlib import Path

import pandas as pd

from benchbed import figures, gate, stats
from benchbed.results import store

TABLES = ("cells", "curves", "telemetry")
KERNELS_FILE = "kernels.parquet"


@dataclasses.dataclass
class DisplayResults:
    """The tables of every directory that loaded, plus one error line per file that did not."""

    cells: pd.DataFrame
    curves: pd.DataFrame
    telemetry: pd.DataFrame
    runs: pd.DataFrame
    kernels: pd.DataFrame
    errors: list[str]


def _load_one(directory: Path) -> dict[str, pd.DataFrame]:
    results = store.load(directory)
    return {
        "cells": results.cells,
        "curves": results.curves,
        "telemetry": results.telemetry,
        "runs": results.runs,
    }


def _empty(columns: list[str]) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=object) for c in columns})


def load_for_display(dirs: list[str] | tuple[str, ...]) -> DisplayResults:
    """Load every directory that can be loaded; each one that cannot adds one error line naming the file.

    A directory holding only kernels.parquet (from `benchbed kernels bench`) contributes kernels only.
    Cell ids that repeat across directories are prefixed with their run id so curves stay attached
    to the right cell."""
    per_dir: list[tuple[Path, dict[str, pd.DataFrame]]] = []
    kernels: list[pd.DataFrame] = []
    errors: list[str] = []
    for raw in dirs:
        directory = Path(raw)
        if not directory.is_dir():
            errors.append(f"{directory}: not a directory")
            continue
        kernels_path = directory / KERNELS_FILE
        if kernels_path.exists():
            try:
                kernels.append(pd.read_parquet(kernels_path).assign(source_dir=str(directory)))
            except Exception as exc:  # noqa: BLE001
                errors.append(f"{kernels_path}: not a readable Parquet file ({type(exc).__name__}: {exc})")
        has_results = any((directory / name).exists() for name in ("cells.parquet", "run.json"))
        if not has_results:
            if not kernels_path.exists():
                errors.append(f"{directory}: empty results directory (no cells.parquet, no run.json)")
            continue
        try:
            frames = _load_one(directory)
        except Exception as exc:  # noqa: BLE001 -- one bad directory must not hide the others
            # the store's messages name the file (and field); anything else gets the directory
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            errors.append(message if str(directory) in message else f"{directory}: {message}")
            continue
        per_dir.append((directory, frames))

    # Mixed schema versions need nothing here: store.load refuses a run.json whose schema_version is
    # not the one this benchbed reads, naming the file, and that directory becomes one error line.
    seen_ids: set[str] = set()
    tables: dict[str, list[pd.DataFrame]] = {t: [] for t in (*TABLES, "runs")}
    for directory, frames in per_dir:
        cells = frames["cells"]
        ids = set(cells["cell_id"].astype(str)) if "cell_id" in cells else set()
        if ids & seen_ids:
            run_id = str(frames["runs"]["run_id"].iloc[0]) if len(frames["runs"]) else directory.name
            frames = {
                t: (f.assign(cell_id=run_id + "/" + f["cell_id"].astype(str)) if "cell_id" in f else f)
                for t, f in frames.items()
            }
            ids = {f"{run_id}/{i}" for i in ids}
        seen_ids |= ids
        for table, frame in frames.items():
            tables[table].append(frame)

    def concat(table: str, columns: list[str]) -> pd.DataFrame:
        parts = [f for f in tables[table] if len(f.columns)]
        return pd.concat(parts, ignore_index=True) if parts else _empty(columns)

    return DisplayResults(
        cells=concat(
            "cells", ["run_id", "cell_id", "workload", "variant", "techniques", "device", "scenario"]
        ),
        curves=concat("curves", ["cell_id", "step", "tokens", "train_time_s", "energy_j", "val_loss"]),
        telemetry=concat("telemetry", ["cell_id", "t_s"]),
        runs=concat("runs", ["dir", "run_id", "scenario", "schema_version"]),
        kernels=pd.concat(kernels, ignore_index=True) if kernels else _empty(["op", "backend", "shape"]),
        errors=errors,
    )


# -- adapters to benchbed.stats / benchbed.gate ------------------------------------------------------


def technique_categories(techniques: str) -> list[str]:
    """Survey categories of a `+`-joined techniques string; 'unregistered' for unknown names."""
    registry = _technique_registry()
    names = [t for t in str(techniques).split("+") if t]
    return sorted({registry[n].category if n in registry else "unregistered" for n in names})


def _technique_registry() -> dict:
    # imported on first use: the registry imports every technique module (and torch)
    from benchbed.techniques import REGISTRY

    return REGISTRY


def filter_cells(
    cells: pd.DataFrame,
    workloads: list[str] | None = None,
    devices: list[str] | None = None,
    scenarios: list[str] | None = None,
    categories: list[str] | None = None,
) -> pd.DataFrame:
    """Cells matching every non-empty filter. A technique-category filter keeps a cell when any of its
    techniques is in a chosen category, and always keeps baseline cells so speedups stay defined."""
    keep = pd.Series(True, index=cells.index)
    for column, chosen in (("workload", workloads), ("device", devices), ("scenario", scenarios)):
        if chosen and column in cells:
            keep &= cells[column].isin(chosen)
    if categories and "techniques" in cells:
        wanted = set(categories)
        by_techniques = {t: bool(wanted & set(technique_categories(t))) for t in cells["techniques"].unique()}
        matches = cells["techniques"].map(by_techniques)
        if "is_baseline" in cells:
            matches |= cells["is_baseline"].fillna(False).astype(bool)
        keep &= matches
    return cells[keep]


def leaderboard(cells: pd.DataFrame, rank_by: str) -> pd.DataFrame:
    """The statistics module's leaderboard, unchanged in order."""
    return stats.leaderboard(cells, rank_by=rank_by)


def gate_compare(baseline_cells: pd.DataFrame, candidate_cells: pd.DataFrame) -> pd.DataFrame:
    """`benchbed.gate.compare` on two runs' cells: one row per configuration x metric with its verdict."""
    return gate.compare(baseline_cells, candidate_cells)


# -- display formatting ------------------------------------------------------------------------------


def format_value(value, column: str, reason_not_measured: str | None = None) -> str:
    """A number for a table cell; NaN becomes 'not reached' (targets) or 'not measured', never 0."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        if reason_not_measured:
            return "not measured"
        return "not reached" if "to_target" in column else "not measured"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float) and math.isinf(value):
        # stats encode "never reached the target" as +inf (infinitely slow)
        return "not reached" if value > 0 else "-inf"
    if isinstance(value, int | float):
        if column.endswith("_bytes"):
            return f"{value / 2**30:.3g} GiB"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.4g}"
    return str(value)


def display_table(table: pd.DataFrame, cells: pd.DataFrame) -> pd.DataFrame:
    """Every float column as text, with NaN spelled out: 'not measured' where the metric family was not
    measured on these cells (energy without a sensor), 'not reached' for targets never reached."""
    unmeasured_energy = figures.not_measured_reason(cells, "energy_j") is not None and (
        "energy_source" not in cells or set(cells["energy_source"].dropna()) <= {"unavailable"}
    )
    out = table.copy()
    for column in out.columns:
        if pd.api.types.is_float_dtype(out[column]):
            reason = "energy" if unmeasured_energy and "energy" in column else None
            out[column] = [format_value(v, column, reason) for v in out[column]]
    return out


def _interval_text(value, low, high, column: str, unmeasured: bool) -> str:
    """'12.3 [11.9, 12.8]' (bytes in GiB, the column label says so), or why there is no number."""
    if unmeasured:
        return "not measured"
    text = format_value(value, column).removesuffix(" GiB")
    if text in ("not reached", "not measured") or low is None or high is None:
        return text
    if any(isinstance(v, float) and math.isnan(v) for v in (low, high)):
        return text
    low_text = format_value(low, column).removesuffix(" GiB")
    high_text = format_value(high, column).removesuffix(" GiB")
    return f"{text} [{low_text}, {high_text}]"


def leaderboard_display(board: pd.DataFrame, rank_by: str, cells: pd.DataFrame) -> pd.DataFrame:
    """The statistics module's leaderboard, same rows in the same order, as readable text: the ranked
    metric first with its confidence interval, then the speedup against the baseline, then the
    other metrics. Values not measured on these cells say so; targets never reached say so."""
    energy_unmeasured = figures.not_measured_reason(cells, "energy_j") is not None and (
        "energy_source" not in cells or set(cells["energy_source"].dropna()) <= {"unavailable"}
    )
    metrics = [rank_by] + [m for m in figures.METRICS if m != rank_by]
    out = pd.DataFrame(index=board.index)
    several_scenarios = "scenario" in board and board["scenario"].nunique() > 1
    for column in ("rank", "workload", "device", "scenario", "variant"):
        if column in board and (column != "scenario" or several_scenarios):
            out[column] = board[column]
    for metric in metrics:
        if metric not in board:
            continue
        label = figures.METRICS[metric][0].replace("(bytes)", "(GiB)") + (
            " [95% CI]" if metric == rank_by else ""
        )
        low, high = board.get(f"{metric}_ci_low"), board.get(f"{metric}_ci_high")
        out[label] = [
            _interval_text(
                board[metric].iloc[i],
                None if low is None else low.iloc[i],
                None if high is None else high.iloc[i],
                metric,
                energy_unmeasured and "energy" in metric,
            )
            for i in range(len(board))
        ]
        if metric == rank_by and "speedup" in board:
            speedups = []
            for i in range(len(board)):
                if bool(board["is_baseline"].iloc[i]) if "is_baseline" in board else False:
                    speedups.append("1× (baseline)")
                elif energy_unmeasured and "energy" in metric:
                    speedups.append("not measured")
                else:
                    value = board["speedup"].iloc[i]
                    if isinstance(value, float) and math.isnan(value):
                        speedups.append("n/a (no baseline reached)")
                        continue
                    low_s, high_s = board.get("speedup_ci_low"), board.get("speedup_ci_high")
                    text = f"{value:.3g}×"
                    if low_s is not None and not math.isnan(low_s.iloc[i]) and not math.isnan(high_s.iloc[i]):
                        text += f" [{low_s.iloc[i]:.3g}, {high_s.iloc[i]:.3g}]"
                    speedups.append(text)
            out["speedup vs baseline"] = speedups
    if "n_reached" in board and "n_cells" in board:
        out["reached"] = [f"{r}/{n}" for r, n in zip(board["n_reached"], board["n_cells"], strict=True)]
    if "best_val_loss" in board:
        out["best val loss"] = [format_value(v, "best_val_loss") for v in board["best_val_loss"]]
    if "status_counts" in board:
        out["status"] = board["status_counts"]
    return out.reset_index(drop=True)


# -- the HTML report ---------------------------------------------------------------------------------

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
        time_board = _leaderboard_sections(page, cells)
        order = list(dict.fromkeys(time_board["variant"].astype(str))) if time_board is not None else []
        variants = (
            order[:CURVE_VARIANTS_IN_REPORT]
            or sorted(cells["variant"].astype(str).unique())[:CURVE_VARIANTS_IN_REPORT]
        )

        page.heading("Curves")
        for axis in figures.CURVE_AXES:
            page.figure(figures.curves_figure(loaded.curves, cells, x=axis, variants=variants))

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
    try:
        verdicts = gate_compare(cells[run_ids == baseline_id], cells[run_ids == candidate_id])
    except ValueError as exc:  # the gate names the missing column
        page.error(f"compare: {exc}")
        return
    page.table(display_table(verdicts, cells))


def cell_labels(cells: pd.DataFrame) -> dict[str, str]:
    """cell_id -> 'workload · variant · seed N' (plus the run id when several runs are loaded)."""
    several_runs = "run_id" in cells and cells["run_id"].nunique() > 1
    labels = {}
    for row in cells.itertuples(index=False):
        label = f"{getattr(row, 'workload', '?')} · {getattr(row, 'variant', '?')} · seed {getattr(row, 'seed', '?')}"
        if several_runs:
            label += f" · {row.run_id}"
        labels[str(row.cell_id)] = label
    return labels


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
