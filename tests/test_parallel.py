"""Model, tensor and sharded data parallelism in real Gloo processes (torchrun, launched by the
runner): each parallel cell trains the same steps as one process at the same global batch and seed.

Two checks. One step, tensor by tensor (parallel_step_check.py, under torchrun at 2 and 4
processes): the loss, every gradient (each rank's shard gathered and mapped back to the single
process's weight) and the clipping norm of a parallel step equal one process's on the same global
batch; measured differences are <= 2.4e-7 (loss, relative norm) and 3.7e-8 (gradients), the
tolerances 1e-5 / 1e-6 / 1e-5.

Loss parity of real cells (the runner, torchrun, the worker): the validation loss after each of
the first STEPS steps, and each step's training loss, are within TOL nats of the single-process
cell's at the same global batch and seed. The parallel cells read exactly the single process's
batches (each data-parallel rank its slice) and start from the same weights; measured deviations
are <= 2.4e-7 nats over 4 steps. TOL = 1e-4 leaves room for other CPUs' kernels, whose different
reduction orders AdamW amplifies in near-zero gradient coordinates; the step check above is the
sharp one.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from benchbed import plan
from benchbed.run.runner import run_scenario

STEPS = 4
TOL = 1e-4  # nats, per step, on the validation and training losses

pytestmark = pytest.mark.slow

HEADER = f"""
workload = "lm-tiny"
device = "cpu"
seeds = [0]
stop_at_target = false
timeout_s = 600
eval_every_tokens = 4032   # one evaluation per step at a global batch of 64 sequences of 63 tokens
[budget]
steps = {STEPS}
"""


def _run(tmp_path, name: str, body: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    path = tmp_path / f"{name}.toml"
    path.write_text(f'name = "{name}"\n' + textwrap.dedent(HEADER) + textwrap.dedent(body))
    out = run_scenario(plan.load(str(path)), tmp_path / name, progress=False, log=lambda m: None)
    return pd.read_parquet(out / "cells.parquet"), pd.read_parquet(out / "curves.parquet")


@pytest.fixture(scope="module")
def two_process(tmp_path_factory):
    """The single-process baseline at a global batch of 64, and the 2-process cells at 64."""
    return _run(
        tmp_path_factory.mktemp("parallel2"),
        "parallel2",
        """
        [matrix]
        techniques = ["adamw", "tensor_parallel", "pipeline_parallel"]
        batch_size = [64]
        "tensor_parallel.sequence_parallel" = [false, true]
        "pipeline_parallel.schedule" = ["gpipe", "1f1b"]
        [[include]]
        techniques = "fsdp"
        batch_size = 32
        [[include]]
        techniques = "data_parallel"
        batch_size = 32
        [[include]]
        techniques = "fsdp+activation_checkpointing+activation_offload"
        batch_size = 32
        [techniques.activation_checkpointing]
        every = 2
        """,
    )


@pytest.fixture(scope="module")
def four_process(tmp_path_factory):
    """4-process cells at a global batch of 64: FSDP over 4 ranks, and 2-D FSDP x TP (2 x 2)."""
    return _run(
        tmp_path_factory.mktemp("parallel4"),
        "parallel4",
        """
        [matrix]
        techniques = ["fsdp"]
        batch_size = [16]
        [[include]]
        techniques = "fsdp+tensor_parallel"
        batch_size = 32
        [techniques.fsdp]
        world_size = 4
        """,
    )


def _cell(cells: pd.DataFrame, techniques: str, **options) -> pd.Series:
    rows = cells[cells.techniques == techniques]
    for key, value in options.items():
        rows = rows[rows.options_json.map(lambda s, k=key, v=value: _option(s, k) == v)]
    assert len(rows) == 1, f"expected one {techniques} {options} cell, got {rows.variant.tolist()}"
    row = rows.iloc[0]
    assert row.status == "budget_exhausted", f"{row.variant}: {row.status}: {row.error}"
    assert pd.isna(row.teardown_error), row.teardown_error
    return row


def _option(options_json: str, dotted: str):
    tech, key = dotted.split(".")
    return json.loads(options_json).get(tech, {}).get(key)


def _curve(curves: pd.DataFrame, row: pd.Series) -> pd.DataFrame:
    return curves[curves.cell_id == row.cell_id].sort_values("step").set_index("step")


def assert_parity(cells, curves, baseline_cells, baseline_curves, techniques, **options):
    base_row = _cell(baseline_cells, "adamw")
    row = _cell(cells, techniques, **options)
    base, par = _curve(baseline_curves, base_row), _curve(curves, row)
    assert list(par.index) == list(range(STEPS + 1)) == list(base.index)
    assert (par.tokens == base.tokens).all()  # global tokens: same budget, same unit
    dval = (par.val_loss - base.val_loss).abs()
    dtrain = (par.train_loss - base.train_loss).abs().dropna()
    assert dval.max() <= TOL and dtrain.max() <= TOL, (
        f"{row.variant}: val {dval.tolist()}, train {dtrain.tolist()}"
    )
    assert par.val_loss.iloc[-1] < par.val_loss.iloc[0] - 0.2  # it trained
    return row


def per_rank(row: pd.Series) -> list[dict]:
    return json.loads(row.memory_per_rank_json)


# -- one step, tensor by tensor (tests/parallel_step_check.py under torchrun) ---------------------------
STEP_TOL = {"loss": 1e-5, "grad": 1e-6, "norm": 1e-5}  # measured: <= 2.4e-7, 3.7e-8, 2.4e-7


@pytest.fixture(scope="module", params=[2, 4], ids=["2-processes", "4-processes"])
def one_step(request, tmp_path_factory):
    out = tmp_path_factory.mktemp("step") / "step.json"
    script = Path(__file__).with_name("parallel_step_check.py")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={request.param}"]
    proc = subprocess.run([*cmd, str(script), str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


def test_one_parallel_step_has_the_single_process_loss_gradients_and_norm(one_step):
    # every rank's gradient shard, gathered, equals the single process's gradient of that weight
    # (q/k/v rows, stage blocks and the tied head mapped back); the clipping norm is the global one
    assert len(one_step) >= 4
    for config, diffs in one_step.items():
        for what, tol in STEP_TOL.items():
            assert diffs[what] <= tol, f"{config}: {what} differs by {diffs[what]:.3g} (tolerance {tol:g})"


def test_fsdp_matches_one_process_at_the_same_global_batch(two_process):
    cells, curves = two_process
    assert_parity(cells, curves, cells, curves, "adamw+fsdp")


def test_data_parallel_matches_one_process_and_counts_global_tokens(two_process):
    cells, curves = two_process
    row = assert_parity(cells, curves, cells, curves, "adamw+data_parallel")
    assert row.tokens == STEPS * 64 * 63


@pytest.mark.parametrize("sequence_parallel", [False, True])
def test_tensor_parallel_matches_one_process(two_process, sequence_parallel):
    cells, curves = two_process
    assert_parity(
        cells,
        curves,
        cells,
        curves,
        "adamw+tensor_parallel",
        **{"tensor_parallel.sequence_parallel": sequence_parallel},
    )


@pytest.mark.parametrize("schedule", ["gpipe", "1f1b"])
def test_pipeline_parallel_matches_one_process_and_reports_its_bubble(two_process, schedule):
    cells, curves = two_process
    row = assert_parity(
        cells, curves, cells, curves, "adamw+pipeline_parallel", **{"pipeline_parallel.schedule": schedule}
    )
    p, m = 2, 4
    assert row.pipeline_bubble == pytest.approx((p - 1) / (m + p - 1))
    ranks = per_rank(row)
    assert [r["stage_blocks"] for r in ranks] == ["0-0", "1-1"]
    assert all(0.0 < r["pipeline_idle_frac"] < 1.0 for r in ranks)
    assert row.pipeline_idle_frac == pytest.approx(sum(r["pipeline_idle_frac"] for r in ranks) / 2)
    assert row.params == _cell(cells, "adamw").params  # the whole model, not stage 0's


def test_pipeline_1f1b_keeps_fewer_activations_than_gpipe(two_process):
    cells, _ = two_process
    gpipe = per_rank(_cell(cells, "adamw+pipeline_parallel", **{"pipeline_parallel.schedule": "gpipe"}))
    one_f = per_rank(_cell(cells, "adamw+pipeline_parallel", **{"pipeline_parallel.schedule": "1f1b"}))
    # stage 0 of 2: GPipe holds all 4 microbatches' activations, 1F1B at most 2
    assert one_f[0]["saved_activation_bytes"] < 0.75 * gpipe[0]["saved_activation_bytes"]


def test_checkpointing_and_offloading_compose_with_fsdp(two_process):
    cells, curves = two_process
    row = assert_parity(
        cells, curves, cells, curves, "activation_checkpointing+activation_offload+adamw+fsdp"
    )
    note = json.loads(row.run_extra)["activation_offload"]
    assert note["skipped_checkpointed"] == [0] and note["blocks"] == [1]  # checkpointing took block 0


def test_fsdp_shards_params_and_optimizer_state_to_a_world_th_of_ddp(two_process, four_process):
    cells, _ = two_process
    ddp = per_rank(_cell(cells, "adamw+data_parallel"))
    fsdp2 = per_rank(_cell(cells, "adamw+fsdp"))
    fsdp4 = per_rank(_cell(four_process[0], "adamw+fsdp", **{"fsdp.world_size": 4}))
    replica = ddp[0]["param_bytes"] + ddp[0]["optimizer_state_bytes"]
    assert all(r["param_bytes"] + r["optimizer_state_bytes"] == replica for r in ddp)
    for ranks, world in ((fsdp2, 2), (fsdp4, 4)):
        assert len(ranks) == world
        for r in ranks:
            assert r["param_bytes"] + r["optimizer_state_bytes"] == pytest.approx(replica / world, rel=0.02)
            assert r["grad_bytes"] == pytest.approx(ddp[0]["grad_bytes"] / world, rel=0.02)
        # the shards add up to one replica (dim-0 chunks, uneven where a dimension does not divide)
        assert sum(r["param_bytes"] for r in ranks) == ddp[0]["param_bytes"]


def test_fsdp_on_four_processes_matches_one_process(two_process, four_process):
    base_cells, base_curves = two_process
    cells, curves = four_process
    assert_parity(cells, curves, base_cells, base_curves, "adamw+fsdp", **{"fsdp.world_size": 4})


def test_fsdp_times_tensor_parallel_on_four_processes_matches_one_process(two_process, four_process):
    base_cells, base_curves = two_process
    cells, curves = four_process
    row = assert_parity(cells, curves, base_cells, base_curves, "adamw+fsdp+tensor_parallel")
    assert json.loads(row.run_extra)["parallel"] == {"world": 4, "dp": 2, "tp": 2, "pp": 1}
    tp_only = per_rank(
        _cell(base_cells, "adamw+tensor_parallel", **{"tensor_parallel.sequence_parallel": False})
    )
    for r in per_rank(row):  # FSDP halves what tensor parallelism left on each rank
        assert r["param_bytes"] == pytest.approx(tp_only[0]["param_bytes"] / 2, rel=0.02)


def test_a_rank_dying_at_teardown_keeps_the_trained_row_labelled(tmp_path):
    # rank 1 dies (SIGKILL) when it reaches teardown, once rank 0 has written the row: the
    # training finished, so the row stands, labelled with how the processes ended
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        textwrap.dedent(
            """
            import json, os, signal, sys, time
            if os.environ.get("RANK") == "1" and len(sys.argv) > 2 and sys.argv[-2].endswith(".json"):
                import benchbed.worker.distributed as d
                cell_id = json.load(open(sys.argv[-2]))["cell_id"]
                part = os.path.join(sys.argv[-1], "parts", cell_id, "row.json")

                def dying_teardown():
                    while not os.path.exists(part):
                        time.sleep(0.01)
                    os.kill(os.getpid(), signal.SIGKILL)

                d.teardown = dying_teardown
            """
        )
    )
    path = tmp_path / "t.toml"
    path.write_text(
        'name = "t"\n' + textwrap.dedent(HEADER) + '[matrix]\ntechniques = ["fsdp"]\nbatch_size = [32]\n'
    )
    out = run_scenario(
        plan.load(str(path)),
        tmp_path / "r",
        cell_env={"PYTHONPATH": str(hook)},
        progress=False,
        log=lambda m: None,
    )
    (row,) = pd.read_parquet(out / "cells.parquet").to_dict("records")
    assert row["status"] == "budget_exhausted" and row["steps"] == STEPS
    assert row["teardown_error"].startswith("exit code") and "stderr tail" in row["teardown_error"]
    assert len(pd.read_parquet(out / "curves.parquet")) == STEPS + 1  # the curve is kept too
