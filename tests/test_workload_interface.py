"""A workload that is not a GPT (one file, tests/workloads/mlp_regression.py) trains through the
real path: scenario -> cell -> worker -> train loop -> row, and the loop never names GPT."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
from workloads.mlp_regression import MLP_REGRESSION, NOISE_STD  # registers the workload

from benchbed import plan
from benchbed.results.schema import CELL_COLUMN_NAMES
from benchbed.worker.cell import train_cell
from benchbed.workloads import WORKLOADS

ROOT = Path(__file__).resolve().parents[1]


def test_the_mlp_workload_is_registered_like_any_other():
    assert WORKLOADS["mlp-regression-test"] is MLP_REGRESSION
    assert MLP_REGRESSION.family == "mlp"


def test_mlp_regression_trains_to_its_target_through_the_real_loop(tmp_path):
    path = tmp_path / "mlp.toml"
    path.write_text(
        'workload = "mlp-regression-test"\ndevice = "cpu"\nseeds = [0]\n[matrix]\ntechniques = ["adamw"]\n'
    )
    (cell,) = plan.load(str(path)).cells
    row, curves, _ = train_cell(cell.to_spec())
    assert set(row) == set(CELL_COLUMN_NAMES)
    assert row["status"] == "reached", row["error"]
    assert row["loss_floor"] == pytest.approx(NOISE_STD**2)
    # the target sits above the floor, and training got below it from a much higher start
    assert curves["val_loss"].iloc[0] > 10 * row["target_loss"]
    assert NOISE_STD**2 * 0.8 < row["best_val_loss"] <= row["target_loss"]
    assert row["tokens_to_target"] % MLP_REGRESSION.batch_size == 0  # the budget counts examples
    assert row["params"] == 8 * 32 + 32 + 32 + 1
    assert math.isclose(row["flops_per_token"], 6.0 * row["params"])
    assert row["effective_lr"] == pytest.approx(MLP_REGRESSION.lr)


def test_the_train_loop_never_names_a_model_family():
    worker = "\n".join(p.read_text() for p in (ROOT / "benchbed" / "worker").glob("*.py"))
    assert not re.search(r"\bGPT\b|models\.gpt|lm_head|vocab", worker)
