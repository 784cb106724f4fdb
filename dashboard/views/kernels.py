"""Kernels: speedup of each kernel backend over the PyTorch reference, from kernels.parquet."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from benchbed.dashboard.shared import ViewContext
from benchbed.present import display, figures

TITLE = "Kernels"
ORDER = 60
#: a kernels-only directory (from `benchbed kernels bench`) has no cells: the app opens this view
NEEDS_CELLS = False


def render(ctx: ViewContext) -> None:
    st.subheader("Kernels")
    if ctx.data.kernels.empty:
        st.info("No kernels.parquet in the loaded directories; `benchbed kernels bench` writes one.")
        return
    speedups = figures.kernel_speedups(ctx.data.kernels)
    st.caption(
        "Speedup = reference median time / backend median time, same op, shape, dtype, mode and device."
    )
    st.plotly_chart(figures.kernels_figure(speedups), key="kernels_chart")
    st.dataframe(display.display_table(speedups, pd.DataFrame()), hide_index=True, key="kernels_table")
