"""What the dashboard app and its views share: the loaded results, cached rankings, filters.

Everything cached is keyed by the results directories and ``files_stamp`` (size and modification
time of every file read), so a new run shows up on reload; per-filter results are cached per filter.
Rankings come from ``benchbed.analyse`` through ``benchbed.present.display``; nothing here ranks.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pandas as pd
import streamlit as st

from benchbed.present import display


@dataclasses.dataclass(frozen=True)
class ViewContext:
    """What every view's ``render`` gets.

    ``data``: every loaded table (``display.DisplayResults``, unfiltered); ``cells``: the cells the
    sidebar filters keep; ``dirs``, ``stamp``, ``filters``: the cache keys for the cached helpers
    below (``cached_leaderboard(ctx.dirs, ctx.stamp, ctx.filters, rank_by)``).
    """

    data: display.DisplayResults
    cells: pd.DataFrame
    dirs: tuple[str, ...]
    stamp: tuple
    filters: tuple


def result_dirs() -> tuple[str, ...]:
    return tuple(path for path in os.environ.get("BENCHBED_RESULTS", "").split(os.pathsep) if path)


def files_stamp(dirs: tuple[str, ...]) -> tuple:
    """Size and modification time of every file the app reads: a new run invalidates the cache."""
    stamp = []
    for directory in dirs:
        path = Path(directory)
        if not path.is_dir():
            stamp.append((directory, None))
            continue
        for child in sorted(path.iterdir()):
            if child.suffix in (".parquet", ".json") and child.is_file():
                info = child.stat()
                stamp.append((str(child), info.st_mtime_ns, info.st_size))
    return tuple(stamp)


# cache_resource, not cache_data: the frames are only read, and copying a million telemetry rows
# out of the cache on every interaction would cost more than the page itself.
@st.cache_resource(show_spinner="Reading results…", max_entries=4)
def load(dirs: tuple[str, ...], stamp: tuple) -> display.DisplayResults:
    return display.load_for_display(list(dirs))


@st.cache_data(show_spinner=False, max_entries=8)
def category_choices(dirs: tuple[str, ...], stamp: tuple) -> list[str]:
    return display.category_choices(load(dirs, stamp).cells)


@st.cache_data(show_spinner="Ranking…", max_entries=32)
def cached_leaderboard(dirs: tuple[str, ...], stamp: tuple, filters: tuple, rank_by: str) -> pd.DataFrame:
    cells = filtered_cells(load(dirs, stamp).cells, filters)
    return display.leaderboard(cells, rank_by)


def filtered_cells(cells: pd.DataFrame, filters: tuple) -> pd.DataFrame:
    """The cells the sidebar keeps: filters are (runs, workloads, devices, scenarios, categories[,
    rulesets]), each empty for all."""
    run_ids, workloads, devices, scenarios, categories, *rest = (list(f) for f in filters)
    if run_ids:
        cells = cells[cells["run_id"].astype(str).isin(run_ids)]
    return display.filter_cells(cells, workloads, devices, scenarios, categories, rest[0] if rest else None)


def ruleset_choices(cells: pd.DataFrame) -> list[str]:
    """The tuning rulesets of the loaded cells (cells without the column ran at defaults)."""
    if "ruleset" not in cells or cells.empty:
        return ["defaults"] if not cells.empty else []
    return sorted(cells["ruleset"].fillna("defaults").astype(str).unique())


def baseline_mask(cells: pd.DataFrame) -> pd.Series:
    if "is_baseline" in cells:
        return cells["is_baseline"].fillna(False).astype(bool)
    return pd.Series(False, index=cells.index)


def options(cells: pd.DataFrame, column: str) -> list[str]:
    return sorted(cells[column].dropna().astype(str).unique()) if column in cells else []
