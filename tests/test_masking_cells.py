"""The new workloads and techniques through the real cell path: scenario -> cell -> worker -> row."""

from __future__ import annotations

import json
import math

import pytest

from benchbed import plan
from benchbed.worker.cell import train_cell
from benchbed.workloads import WORKLOADS

pytestmark = pytest.mark.slow


def cells(tmp_path, workload: str, techniques: str, extra: str = ""):
    path = tmp_path / "s.toml"
    path.write_text(
        f'workload = "{workload}"\ndevice = "cpu"\nseeds = [0]\nstop_at_target = false\n'
        f"eval_every_tokens = 1000000\n[budget]\nsteps = 4\n[matrix]\ntechniques = {techniques}\n{extra}"
    )
    return plan.load(str(path)).cells


def test_mlm_cells_record_the_floor_and_what_the_techniques_did(tmp_path):
    (cell,) = cells(
        tmp_path,
        "mlm-tiny",
        '["importance_token_dropping+mlm_masking"]',
        "[techniques.mlm_masking]\nratio = 0.3\n",
    )
    row, curves, _ = train_cell(cell.to_spec())
    assert row["status"] == "budget_exhausted", row["error"]
    assert row["steps"] == 4 and row["tokens"] == 4 * 32 * 64
    assert row["loss_floor"] == pytest.approx(WORKLOADS["mlm-tiny"].make_data().loss_floor)
    assert 0 < row["loss_floor"] < row["target_loss"]
    extra = json.loads(row["run_extra"])
    assert extra["mlm_masking_ratio"] == 0.3 and extra["tokens_kept_in_middle_blocks"] == 32
    assert curves["val_loss"].notna().all()


def test_vit_cells_train_mae_then_labels_and_record_no_floor(tmp_path):
    (cell,) = cells(
        tmp_path, "vit-tiny", '["patch_masking"]', "[techniques.patch_masking]\npretrain_frac = 0.5\n"
    )
    row, curves, _ = train_cell(cell.to_spec())
    assert row["status"] == "budget_exhausted", row["error"]
    assert row["tokens"] == 4 * 32  # the budget counts images
    assert math.isnan(row["loss_floor"])
    extra = json.loads(row["run_extra"])
    assert extra["mae_switch_step"] == 2 and extra["mae_visible_patches"] == "9 of 36"
    assert math.isfinite(row["final_val_loss"])
