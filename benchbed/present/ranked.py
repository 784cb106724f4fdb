"""The ranked table ``benchbed run`` prints when a scenario is done.

One row per combination in ``benchbed.analyse.tables.leaderboard`` order, ranked by ``rank_by``
(time to target by default; any of ``benchbed.analyse.tables.METRICS``, e.g. the memory columns
``saved_activation_bytes`` or ``optimizer_state_bytes``, which then get a column of their own), each
labelled with the tuning ruleset that produced it (``external``: median over studies of each study's
best trial; ``defaults``: median over seeds at paper defaults) and its tuning cost (trials run, and
the sums of their training time and energy); below the table, the values each study's winning trial
was tuned to. Every value is written by ``benchbed.present.format`` (times in seconds, energy in
joules, memory in GiB). A combination that ran a precision its CPU only emulates says so after
its name.
"""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

from benchbed.analyse.tables import leaderboard
from benchbed.analyse.tuning import edge_winners
from benchbed.present.figures.common import METRICS as LABELS
from benchbed.present.format import NOT_MEASURED, format_tuned, format_value, memory_label

#: heading -> leaderboard column shown under it (None: built from several columns)
COLUMNS = {
    "rank": None,
    "variant": None,
    "ruleset": None,
    "reached": None,
    "time to target (s)": "time_to_target_s",
    "tokens to target": "tokens_to_target",
    "energy to target (J)": "energy_to_target_j",
    "peak mem": "peak_mem_bytes",
    "trials": None,
    "tuning time (s)": "tuning_cost_s",
    "tuning energy (J)": "tuning_cost_j",
    "statuses": None,
}

CAPTION = (
    "ruleset external: median over studies of each study's best trial (by time to target); "
    "defaults: median over seeds at paper defaults. A combination reaches only when more than half "
    "of its studies (seeds) reached; otherwise it ranks last. Tuning time and energy: sums over every "
    "trial run for the row."
)


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
    """The table's headings: the default ones, plus the ranked metric (after "reached") when it is
    not among them."""
    if rank_by in COLUMNS.values():
        return dict(COLUMNS)
    label = memory_label(LABELS[rank_by][0]) if rank_by in LABELS else rank_by
    items = list(COLUMNS.items())
    after = list(COLUMNS).index("reached") + 1
    return dict(items[:after] + [(label, rank_by)] + items[after:])


def print_ranked_table(cells, title: str, rank_by: str = "time_to_target_s") -> None:
    board = leaderboard(cells, rank_by)
    headings = columns_for(rank_by)
    emulated = emulated_labels(cells)
    table = Table(title=title, caption=f"ranked by {rank_by}; {CAPTION}")
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
        built = {
            "rank": str(r["rank"]),
            "variant": Text(str(r["variant"]) + emulated.get(r["variant"], "")),  # Text: not rich markup
            "ruleset": str(r.get("ruleset") or "defaults"),
            "reached": f"{r['n_reached']}/{r['n_cells']}",
            "trials": format_value(r.get("n_trials"), "n_trials", missing=NOT_MEASURED),
            "statuses": str(r.get("status_counts", "")),
        }
        table.add_row(
            *(
                built[heading]
                if column is None
                else format_value(r.get(column), column, missing=NOT_MEASURED)
                for heading, column in headings.items()
            )
        )
    console = Console(width=max(220, Console().width))
    console.print(table)
    tuned = [(r["variant"], format_tuned(r.get("winners_json"))) for _, r in board.iterrows()]
    tuned = [(variant, text) for variant, text in tuned if text]
    if tuned:
        console.print("tuned values of each study's winning trial (ruleset external):")
        for variant, text in tuned:
            console.print(Text(f"  {variant}: {text}"))
    for note in edge_winners(cells)["note"]:
        console.print(Text(f"note: {note}"))
