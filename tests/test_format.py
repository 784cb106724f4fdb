"""The one value formatter, and the ranked table, the gate and the report writing values through it."""

from __future__ import annotations

import math

import pandas as pd
from fixtures.results_fixture import build_results_dir

from benchbed.analyse import gate
from benchbed.present import display, gate_cli
from benchbed.present.format import format_value
from benchbed.present.ranked import print_ranked_table


def test_the_rule_by_hand():
    assert format_value(100 * 2**20, "peak_mem_bytes") == "0.0977 GiB"  # 100 MiB: one unit, GiB
    assert format_value(71.25 * 2**30, "peak_mem_bytes") == "71.2 GiB"
    assert format_value(192_000.0, "tokens_to_target") == "192,000"
    assert format_value(12.3456, "time_to_target_s") == "12.35"
    assert format_value(0.8, "reached") == "80%"
    assert format_value(True, "is_baseline") == "yes"
    assert format_value("adamw", "variant") == "adamw"
    # a gap is never 0 or "NaN": in a cells table a to-target gap is a target never reached ...
    assert format_value(math.nan, "time_to_target_s") == "not reached"
    assert format_value(None, "peak_mem_bytes") == "not measured"
    # ... unless the caller knows better (statistics tables write "not reached" as +inf)
    assert format_value(math.nan, "time_to_target_s", missing="not measured") == "not measured"
    assert format_value(math.inf, "time_to_target_s") == "not reached"


def test_memory_reads_the_same_in_the_ranked_table_the_gate_and_the_report(tmp_path, capsys):
    cells = pd.read_parquet(build_results_dir(tmp_path / "res", seeds=3) / "cells.parquet")
    first = cells.iloc[0]
    one = cells[(cells["variant"] == first["variant"]) & (cells["workload"] == first["workload"])]
    median = float(one["peak_mem_bytes"].median())
    expected = format_value(median, "peak_mem_bytes")
    assert expected.endswith(" GiB")

    print_ranked_table(one, "title")
    assert expected in capsys.readouterr().out

    markdown = gate_cli.to_markdown(gate.compare(one, one.copy()))
    memory_row = next(line for line in markdown.splitlines() if "| peak_mem_bytes |" in line)
    assert f"| {expected} | {expected} |" in memory_row

    shown = display.display_table(one[["peak_mem_bytes"]].head(1), one)
    assert shown["peak_mem_bytes"].iloc[0] == format_value(one["peak_mem_bytes"].iloc[0], "peak_mem_bytes")


def test_a_combination_that_did_not_reach_shows_no_speedup(tmp_path):
    # lion never reaches in the fixture: its speedup is "not reached", never a measured-looking 0x
    cells = pd.read_parquet(build_results_dir(tmp_path / "res", seeds=3) / "cells.parquet")
    cells = cells[cells["workload"] == cells["workload"].iloc[0]]
    board = display.leaderboard(cells, "time_to_target_s")
    shown = display.leaderboard_display(board, "time_to_target_s", cells)
    speedup = dict(zip(board["variant"], shown["speedup vs baseline"], strict=True))
    assert speedup["lion"] == "not reached"
    assert speedup["adamw"] == "1× (baseline)"
    assert speedup["adamw+bf16_autocast"].endswith("]") and speedup["adamw+bf16_autocast"][0].isdigit()
