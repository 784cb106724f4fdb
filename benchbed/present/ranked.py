"""The ranked table ``benchbed run`` prints when a scenario is done.

One row per combination in ``benchbed.analyse.tables.leaderboard`` order, ranked by ``rank_by``
(time to target by default; any of ``benchbed.analyse.tables.METRICS``, e.g. the memory columns
``saved_activation_bytes`` or ``optimizer_state_bytes``, which then get a column of their own); every
value is written by ``benchbed.present.format.format_value`` (times in seconds, energy in joules,
memory in GiB). A combination that ran a precision its CPU only emulates says so after its name.
"""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

from benchbed.analyse.tables import leaderboard
from benchbed.present.figures.common import METRICS as LABELS
from benchbed.present.format import NOT_MEASURED, format_value, memory_label

#: heading -> leaderboard column shown under it (None: built from several columns)
COLUMNS = {
    "rank": None,
    "variant": None,
    "reached": None,
    "time to target (s)": "time_to_target_s",
    "tokens to target": "tokens_to_target",
    "energy to target (J)": "energy_to_target_j",
    "peak mem": "peak_mem_bytes",
    "statuses": None,
}


def emulated_labels(cells) -> dict[str, str]:
    """Variant -> ' (emulated bf16)' for variants run in a precision their CPU only emulates."""
    if "emulated_precision" not in cells:
        return {}
    emulated = cells.dropna(subset=["emulated_precision"])
    return {
        variant: f" (emulated {'+'.join(sorted(set(group['emulated_precision'])))})"
        for variant, group in emulated.groupby("variant")
    }


def columns_for(rank_by: str) -> dict[str, str | None]:
    """The table's headings: the default ones, plus the ranked metric when it is not among them."""
    if rank_by in COLUMNS.values():
        return dict(COLUMNS)
    label = memory_label(LABELS[rank_by][0]) if rank_by in LABELS else rank_by
    items = list(COLUMNS.items())
    return dict(items[:3] + [(label, rank_by)] + items[3:])


def print_ranked_table(cells, title: str, rank_by: str = "time_to_target_s") -> None:
    board = leaderboard(cells, rank_by)
    headings = columns_for(rank_by)
    emulated = emulated_labels(cells)
    table = Table(
        title=title,
        caption=f"ranked by {rank_by}; median over seeds and repeats; "
        "a combination where fewer than half its cells reached ranks last",
    )
    for heading in headings:
        left = heading in ("variant", "statuses")
        widest = (
            max(len(str(v) + emulated.get(v, "")) for v in board["variant"])
            if heading == "variant" and len(board)
            else None
        )
        table.add_column(heading, justify="left" if left else "right", no_wrap=True, min_width=widest)
    for _, r in board.iterrows():
        # a target never reached is +inf in the leaderboard: a gap there is "not measured"
        values = [format_value(r.get(c), c, missing=NOT_MEASURED) for c in headings.values() if c is not None]
        table.add_row(
            str(r["rank"]),
            Text(str(r["variant"]) + emulated.get(r["variant"], "")),  # Text: "[rule=sqrt]" is not markup
            f"{r['n_reached']}/{r['n_cells']}",
            *values,
            str(r.get("status_counts", "")),
        )
    Console(width=max(160, Console().width)).print(table)
