"""benchbed dashboard: rank configurations by time- and energy-to-target, and see why.

Started by `benchbed dashboard DIR...`, which runs `streamlit run` on this file with the environment
variable BENCHBED_RESULTS holding the results directories (separated by `os.pathsep`). The app only
reads those directories. This file holds the sidebar, the filters and the dispatch; each view is a
module of `benchbed.dashboard.views` (found by `views.discover`, docs/adding-a-view.md), the data,
caches and filters they share are in `benchbed.dashboard.shared`. Rankings, confidence intervals and
gate verdicts come from `benchbed.analyse`; figures and text from `benchbed.present`, shared with
`benchbed report`.
"""

from __future__ import annotations

import streamlit as st

from benchbed.dashboard import shared, views
from benchbed.dashboard.shared import ViewContext, options


def main() -> None:
    st.set_page_config(page_title="benchbed dashboard", layout="wide")
    dirs = shared.result_dirs()
    st.sidebar.title("benchbed")
    if not dirs:
        st.error("No results directory given: start the app with `benchbed dashboard DIR...`.")
        st.stop()
    stamp = shared.files_stamp(dirs)
    data = shared.load(dirs, stamp)
    for error in data.errors:
        st.error(error)
    cells = data.cells
    found = views.discover()
    by_title = {view.TITLE: view for view in found}
    without_cells = [view.TITLE for view in found if not getattr(view, "NEEDS_CELLS", True)]
    start = 0
    if cells.empty and not data.kernels.empty and without_cells:
        start = list(by_title).index(without_cells[0])  # a kernels-only directory: open the kernels
    title = st.sidebar.radio("View", list(by_title), index=start, key="view")
    st.sidebar.caption(f"{len(data.runs)} run(s) · {len(cells)} cell(s)")

    st.sidebar.markdown("**Filters** (empty = all)")
    run_ids = st.sidebar.multiselect("Run", options(cells, "run_id"), key="filter_run")
    workloads = st.sidebar.multiselect("Workload", options(cells, "workload"), key="filter_workload")
    devices = st.sidebar.multiselect("Device", options(cells, "device"), key="filter_device")
    scenarios = st.sidebar.multiselect("Scenario", options(cells, "scenario"), key="filter_scenario")
    categories = st.sidebar.multiselect(
        "Technique category",
        shared.category_choices(dirs, stamp),
        key="filter_category",
        help="Keeps configurations using a technique of a chosen category; baselines always stay.",
    )
    rulesets = st.sidebar.multiselect(
        "Tuning ruleset",
        shared.ruleset_choices(cells),
        key="filter_ruleset",
        help="external: tuned in studies of trials (each study's best trial); defaults: paper defaults.",
    )
    filters = (
        tuple(run_ids),
        tuple(workloads),
        tuple(devices),
        tuple(scenarios),
        tuple(categories),
        tuple(rulesets),
    )
    shown = shared.filtered_cells(cells, filters)

    view = by_title[title]
    if cells.empty and getattr(view, "NEEDS_CELLS", True):
        st.info("No cells to show: every directory given is empty or unreadable.")
        return
    view.render(ViewContext(data=data, cells=shown, dirs=dirs, stamp=stamp, filters=filters))


main()
