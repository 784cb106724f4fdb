"""The same matrix under both tuning rulesets, side by side: what tuning changes in the ranking.

    benchbed run optimizers                       # external ruleset -> results/optimizers
    benchbed run optimizers --ruleset defaults    # paper defaults   -> results/optimizers-defaults
    python scripts/compare_rulesets.py results/optimizers results/optimizers-defaults

Prints one row per configuration: under each ruleset its rank, studies (seeds) reached, median time
and tokens to target, and for the tuned side the trials run, the tuning cost (summed training time
of every trial) and each study's winning values; then the wall time of each run from its cells
(sum of the cells' process wall times, so waiting between cells is not counted). Every number comes
from ``benchbed.analyse.tables.leaderboard`` and is written by ``benchbed.present.format``. Time is
measured and noisy on a shared machine; tokens to target are deterministic on the CPU.
"""

from __future__ import annotations

import argparse
import sys

import pandas as pd
from rich.console import Console
from rich.table import Table
from rich.text import Text

from benchbed.analyse.tables import leaderboard
from benchbed.present.format import NOT_MEASURED, format_tuned, format_value
from benchbed.results import store


def board(directory: str) -> tuple[pd.DataFrame, float, int]:
    cells = store.load(directory).cells
    wall = float(pd.to_numeric(cells.get("wall_time_s"), errors="coerce").sum())
    return leaderboard(cells), wall, len(cells)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tuned_dir", help="results of the scenario under the external ruleset")
    parser.add_argument("defaults_dir", help="results of the same scenario with --ruleset defaults")
    args = parser.parse_args(argv)
    try:
        tuned, tuned_wall, tuned_cells = board(args.tuned_dir)
        defaults, defaults_wall, defaults_cells = board(args.defaults_dir)
    except store.StoreError as error:
        print(f"compare_rulesets: {error}", file=sys.stderr)
        return 2
    keys = ["workload", "device", "variant"]
    merged = tuned.merge(defaults, on=keys, how="outer", suffixes=("_ext", "_def"))
    merged = merged.sort_values(["workload", "device", "rank_ext", "rank_def"], na_position="last")

    def cell(row, column, suffix):
        return format_value(row.get(f"{column}_{suffix}"), column, missing=NOT_MEASURED)

    table = Table(
        title=f"{args.tuned_dir} (external) vs {args.defaults_dir} (defaults)",
        caption="rank within each ruleset; reached = studies (seeds) that reached / all; "
        "external: median over studies of each study's best trial",
    )
    for heading in (
        "variant",
        "ext rank",
        "ext reached",
        "ext time (s)",
        "ext tokens",
        "trials",
        "tuning time (s)",
        "def rank",
        "def reached",
        "def time (s)",
        "def tokens",
    ):
        table.add_column(heading, justify="left" if heading == "variant" else "right", no_wrap=True)
    for _, row in merged.iterrows():
        table.add_row(
            Text(str(row["variant"])),
            format_value(row.get("rank_ext"), "rank", missing="-"),
            f"{format_value(row.get('n_reached_ext'), 'n', missing='-')}/{format_value(row.get('n_cells_ext'), 'n', missing='-')}",
            cell(row, "time_to_target_s", "ext"),
            cell(row, "tokens_to_target", "ext"),
            format_value(row.get("n_trials_ext"), "n_trials", missing="-"),
            cell(row, "tuning_cost_s", "ext"),
            format_value(row.get("rank_def"), "rank", missing="-"),
            f"{format_value(row.get('n_reached_def'), 'n', missing='-')}/{format_value(row.get('n_cells_def'), 'n', missing='-')}",
            cell(row, "time_to_target_s", "def"),
            cell(row, "tokens_to_target", "def"),
        )
    console = Console(width=max(200, Console().width))
    console.print(table)
    console.print("winning values per study (external):")
    for _, row in merged.iterrows():
        text = format_tuned(row.get("winners_json_ext"))
        if text:
            console.print(Text(f"  {row['variant']}: {text}"))
    console.print(
        f"cells' wall time: external {tuned_cells} cells {tuned_wall / 60:.1f} min, "
        f"defaults {defaults_cells} cells {defaults_wall / 60:.1f} min"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
