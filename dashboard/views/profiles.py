"""Profiles: the profiler traces and CUDA memory snapshots recorded for cells, with links.

A cell has them when its scenario has a ``[profile]`` table or after ``benchbed profile``; they are
recorded in a separate short run of the cell, never inside its timed steps (docs/profiling.md).
Each file is offered as a download link (open a trace in Perfetto or chrome://tracing, a memory
snapshot at pytorch.org/memory_viz), and the trace's heaviest operators are listed.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from benchbed.analyse import traces
from benchbed.dashboard.shared import ViewContext
from benchbed.present.format import format_value

TITLE = "Profiles"
ORDER = 45
MIME = {".json": "application/json", ".txt": "text/plain", ".pickle": "application/octet-stream"}


def render(ctx: ViewContext) -> None:
    st.subheader("Profiler traces (recorded outside the timed run)")
    dirs = [str(d) for d in ctx.data.runs.get("dir", [])]
    files = traces.profile_files(dirs)
    if "cell_id" in ctx.cells and not files.empty:
        # cell ids repeated across directories are shown prefixed with their run id: keep both forms
        shown = {str(c).split("/", 1)[-1] for c in ctx.cells["cell_id"]}
        files = files[files["cell_id"].isin(shown)]
    if files.empty:
        st.info(
            "No profile recorded for these cells. Add a `[profile]` table to the scenario, or run "
            "`benchbed profile SCENARIO --only CELL --out DIR` (docs/profiling.md)."
        )
        return
    files = files.assign(
        choice=[f"{c} ({Path(d).name})" for c, d in zip(files["cell_id"], files["run_dir"], strict=True)]
    )
    choices = sorted(files["choice"].unique())
    listing = files.assign(size=[format_value(b, "size_bytes") for b in files["bytes"]])
    st.dataframe(
        listing[["cell_id", "kind", "file", "size", "status", "path"]],
        hide_index=True,
        key="profiles_files",
    )
    choice = st.selectbox("Cell (results directory)", choices, key="profiles_cell")
    chosen = files[files["choice"] == choice]
    cell_id = chosen["cell_id"].iloc[0]
    status = chosen["status"].iloc[0]
    if status != "recorded":
        st.warning(f"{cell_id}: {status}")
    for row in chosen.itertuples(index=False):
        path = Path(row.path)
        st.markdown(f"**{row.kind}**: `{path}`")
        st.download_button(
            f"Download {row.file}",
            data=path.read_bytes(),
            file_name=f"{cell_id}-{row.file}",
            mime=MIME.get(path.suffix, "application/octet-stream"),
            key=f"profiles_download_{choices.index(choice)}_{row.file}",
        )
    trace = chosen[chosen["file"] == "trace.json"]
    if not trace.empty:
        try:
            summary = traces.trace_summary(trace["path"].iloc[0])
        except ValueError as exc:
            st.error(str(exc))
            return
        st.caption("Heaviest events of the trace (sum of durations over the profiled steps)")
        summary["total_ms"] = [format_value(v, "total_ms") for v in summary["total_ms"]]
        st.dataframe(summary, hide_index=True, key="profiles_summary")
