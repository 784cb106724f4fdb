"""The ranked table ``benchbed run`` prints when a scenario is done.

One row per combination in ``benchbed.analyse.tables.leaderboard`` order.
"""

from __future__ import annotations

import math

from rich.console import Console
from rich.table import Table
from rich.text import Text

from benchbed.analyse.tables import leaderboard


def _fmt(value, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float) and math.isinf(value):
        return "not reached"
    if unit == "bytes":
        return f"{value / 2**20:.0f} MiB"
    if unit == "s":
        return f"{value:.2f} s"
    if unit == "J":
        return f"{value:.1f} J"
    if isinstance(value, float) and value.is_integer():
        return f"{int(value):,}"
    return f"{value:,.4g}" if isinstance(value, float) else str(value)


def print_ranked_table(cells, title: str) -> None:
    board = leaderboard(cells)
    table = Table(
        title=title,
        caption="median over seeds and repeats; a combination where fewer than half its cells reached ranks last; '-' = not measured",
    )
    for col in (
        "rank",
        "variant",
        "reached",
        "time to target",
        "tokens to target",
        "energy to target",
        "peak mem",
        "statuses",
    ):
        left = col in ("variant", "statuses")
        widest = (
            int(board["variant"].astype(str).str.len().max()) if col == "variant" and len(board) else None
        )
        table.add_column(col, justify="left" if left else "right", no_wrap=True, min_width=widest)
    for _, r in board.iterrows():
        energy = r.get("energy_to_target_j", math.nan)
        table.add_row(
            str(r["rank"]),
            Text(str(r["variant"])),  # Text: "[rule=sqrt]" in a variant is not rich markup
            f"{r['n_reached']}/{r['n_cells']}",
            _fmt(r.get("time_to_target_s"), "s"),
            _fmt(r.get("tokens_to_target")),
            "not measured" if energy is None or math.isnan(energy) else _fmt(energy, "J"),
            _fmt(r.get("peak_mem_bytes"), "bytes"),
            str(r.get("status_counts", "")),
        )
    Console(width=max(160, Console().width)).print(table)
