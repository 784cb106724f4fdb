"""The ranked table and the leaderboard rank by the measured memory columns too."""

from __future__ import annotations

import math

import pandas as pd

from benchbed import cli
from benchbed.analyse import tables
from benchbed.present.ranked import columns_for, print_ranked_table


def cells() -> pd.DataFrame:
    rows = []
    for variant, saved, time_s in (("adamw", 18e6, 10.0), ("ckpt", 13e6, 12.0), ("lora", 13.5e6, 9.0)):
        for seed in (0, 1):
            rows.append(
                {
                    "cell_id": f"{variant}{seed}",
                    "config_key": variant,
                    "variant": variant,
                    "techniques": variant,
                    "scenario": "s",
                    "workload": "w",
                    "device": "cpu",
                    "seed": seed,
                    "repeat": 0,
                    "baseline": "adamw",
                    "is_baseline": variant == "adamw",
                    "status": "reached",
                    "time_to_target_s": time_s,
                    "tokens_to_target": 1.0,
                    "energy_to_target_j": math.nan,
                    "energy_source": "unavailable",
                    "peak_mem_bytes": 5e8,
                    "tokens_per_s": 1.0,
                    "saved_activation_bytes": saved,
                    "optimizer_state_bytes": 1e6,
                    "grad_bytes": 5e5,
                    "param_bytes": 5e5,
                    "best_val_loss": 0.5,
                    "final_val_loss": 0.5,
                }  # fmt: skip
            )
    return pd.DataFrame(rows)


def test_leaderboard_ranks_by_saved_activations():
    board = tables.leaderboard(cells(), "saved_activation_bytes")
    assert list(board["variant"]) == ["ckpt", "lora", "adamw"]
    assert list(tables.leaderboard(cells())["variant"]) == ["lora", "adamw", "ckpt"]
    assert board.loc[0, "saved_activation_bytes"] == 13e6


def test_ranked_table_shows_the_ranked_memory_column(capsys):
    assert "saved activations (GiB)" in columns_for("saved_activation_bytes")
    print_ranked_table(cells(), "t", rank_by="saved_activation_bytes")
    out = capsys.readouterr().out
    assert "ranked by saved_activation_bytes" in out and "saved activations" in out
    assert out.index("ckpt") < out.index("lora") < out.index("adamw")


def test_cli_rank_by_choices_are_the_leaderboard_metrics():
    assert set(cli.RANK_BY) == set(tables.METRICS)
