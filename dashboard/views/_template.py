"""Copy me to add a dashboard view (docs/adding-a-view.md).

1. Copy this file to ``dashboard/views/<name>.py`` (no leading underscore: files starting with ``_``
   are skipped, which is why this one never shows up in the sidebar).
2. Set ``TITLE`` (the sidebar label) and ``ORDER`` (its place: the shipped views use 10, 20, ... 60).
3. Write ``render``. ``ctx.cells`` are the cells the sidebar filters keep, ``ctx.data`` every table
   loaded (curves, telemetry, runs, kernels). Numbers come from ``benchbed.analyse`` (through
   ``benchbed.present.display``), figures from ``benchbed.present.figures``, and every value shown as
   text from ``benchbed.present.format.format_value``: a view computes no statistic of its own.
4. Cache anything slow with ``st.cache_data`` keyed by ``ctx.dirs, ctx.stamp, ctx.filters`` (see
   ``cached_leaderboard`` in ``benchbed.dashboard.shared``), and give every widget a ``key``.
5. Add a line for the view to tests/test_dashboard.py's ``VIEWS``.
"""

from __future__ import annotations

import streamlit as st

from benchbed.dashboard.shared import ViewContext, cached_leaderboard
from benchbed.present import display

TITLE = "My view"
ORDER = 100
#: uncomment for a view that works without any cell (the app opens it on a kernels-only directory)
# NEEDS_CELLS = False


def render(ctx: ViewContext) -> None:
    st.subheader(TITLE)
    if ctx.cells.empty:
        st.info("No cells match the filters.")
        return
    board = cached_leaderboard(ctx.dirs, ctx.stamp, ctx.filters, "time_to_target_s")
    table = display.leaderboard_display(board, "time_to_target_s", ctx.cells)
    st.dataframe(table, hide_index=True, key="my_view_table")
