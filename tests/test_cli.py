"""The CLI's own output: the ranked table prints labels verbatim."""

from __future__ import annotations

import pandas as pd
from fixtures.results_fixture import build_results_dir

from benchbed.present.ranked import print_ranked_table


def test_ranked_table_prints_option_brackets_verbatim(tmp_path, capsys):
    out = build_results_dir(tmp_path / "res")
    cells = pd.read_parquet(out / "cells.parquet")
    first = cells["variant"].iloc[0]
    label = "lion[lr=0.0003,beta2=0.98] bs=64"
    cells.loc[cells["variant"] == first, "variant"] = label  # rich would read "[...]" as markup
    print_ranked_table(cells, "title")
    assert label in capsys.readouterr().out
