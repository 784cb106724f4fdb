"""The train loop: timing rules, schedule, determinism, divergence, technique hooks."""

from __future__ import annotations

import math

import pytest
import torch

from benchbed import plan
from benchbed.techniques import REGISTRY
from benchbed.worker.assemble import build
from benchbed.worker.cell import train_cell
from benchbed.worker.context import RunSettings, TrainContext
from benchbed.worker.loop import train
from benchbed.workloads import WORKLOADS, Batch


def spec_for(tiny_scenario, **overrides):
    sc = plan.load(tiny_scenario(**overrides))
    return sc.cells[0].to_spec()


def settings(**kw) -> RunSettings:
    w = WORKLOADS["lm-tiny"]
    base = dict(
        device=torch.device("cpu"), seed=0, batch_size=8, base_batch_size=w.batch_size, seq_len=w.seq_len, lr=w.lr,
        weight_decay=w.weight_decay, betas=w.betas, warmup_frac=0.1, grad_clip=1.0, budget_tokens=None,
        budget_steps=10, budget_seconds=None, eval_every_tokens=4 * 8 * 63, target_loss=0.0, stop_at_target=False,
    )  # fmt: skip
    base.update(kw)
    return RunSettings(**base)


class CountingTelemetry:
    def __init__(self):
        self.windows = 0

    def window_start(self):
        self.windows += 1

    def window_end(self):
        pass

    def training_energy_j(self):
        return math.nan


def test_clock_counts_every_step_excluding_eval_and_the_warmup_step():
    w = WORKLOADS["lm-tiny"]
    ctx = TrainContext(settings(), w, [REGISTRY["adamw"]()])
    build(ctx)
    ticks = iter(range(10_000))
    clock = lambda: float(next(ticks))  # every call advances one "second"
    tel = CountingTelemetry()
    res = train(ctx, w.make_data(), tel, clock=clock)
    # each step window reads the clock twice (1 s); each eval reads it twice too, but is excluded
    assert res["steps"] == 10 and tel.windows == 10  # the untimed warm-up is outside the energy windows
    assert res["warmup_time_s"] == 1.0
    assert res["train_time_s"] == 10.0  # every training step, the first included
    assert res["tokens_per_s"] == res["tokens"] / 10.0
    n_evals = len(res["curves"])
    assert n_evals == 1 + math.ceil(10 / 4)  # step 0, every 4 steps, and the end of the budget
    assert res["eval_time_s"] == float(n_evals)
    assert [c["step"] for c in res["curves"]] == [0, 4, 8, 10]


def test_lr_schedule_warms_up_then_decays_to_zero_at_the_end_of_the_budget():
    ctx = TrainContext(settings(budget_steps=100, warmup_frac=0.1), WORKLOADS["lm-tiny"], [])
    factors = []
    for step in range(101):
        ctx.step = step
        factors.append(ctx.lr_factor())
    # hand values: warm-up is (step + 1) / 10 over the first 10 steps of 100
    assert factors[0] == pytest.approx(0.1)
    assert factors[5] == pytest.approx(0.6)
    assert factors[9] == pytest.approx(1.0)
    assert max(factors) == 1.0
    assert factors[10] == pytest.approx(1.0)
    assert factors[55] == pytest.approx(0.5, abs=1e-9)
    assert factors[100] == 0.0
    assert all(a >= b for a, b in zip(factors[10:], factors[11:], strict=False))


def test_seconds_budget_drives_progress_too():
    ctx = TrainContext(settings(budget_steps=None, budget_seconds=10.0), WORKLOADS["lm-tiny"], [])
    ctx.train_time_s = 5.0
    assert ctx.progress() == 0.5


def test_same_seed_gives_identical_curves_and_tokens_to_target(tiny_scenario):
    spec = spec_for(tiny_scenario)
    a_row, a_curves, _ = train_cell(spec)
    b_row, b_curves, _ = train_cell(spec)
    assert a_row["status"] == "reached"
    assert a_curves["val_loss"].tolist() == b_curves["val_loss"].tolist()
    assert a_row["tokens_to_target"] == b_row["tokens_to_target"]
    other = dict(spec, seed=1)
    c_row, c_curves, _ = train_cell(other)
    assert c_curves["val_loss"].tolist() != a_curves["val_loss"].tolist()


def test_validation_loss_falls_and_row_has_contract_columns(tiny_scenario):
    row, curves, _ = train_cell(spec_for(tiny_scenario))
    assert curves["val_loss"].iloc[-1] < curves["val_loss"].iloc[0] - 0.3
    assert curves["step"].iloc[0] == 0 and math.isnan(curves["train_loss"].iloc[0])
    for col in [
        "run_id",
        "cell_id",
        "scenario",
        "workload",
        "techniques",
        "seed",
        "device",
        "status",
        "error",
        "target_loss",
        "final_val_loss",
        "best_val_loss",
        "time_to_target_s",
        "tokens_to_target",
        "steps_to_target",
        "energy_to_target_j",
        "energy_source",
        "train_time_s",
        "eval_time_s",
        "warmup_time_s",
        "tokens_per_s",
        "peak_mem_bytes",
        "mem_source",
        "mfu",
        "params",
        "git_sha",
        "torch_version",
        "config_json",
    ]:
        assert col in row, col
    assert row["energy_source"] in ("unavailable", "rapl") and (
        row["energy_source"] != "unavailable" or math.isnan(row["energy_j"])
    )
    assert math.isnan(row["mfu"])  # no known peak FLOPs for a CPU: not measured, not 0
    assert row["loss_floor"] == pytest.approx(WORKLOADS["lm-tiny"].make_data().loss_floor)
    assert row["tokens_to_target"] == row["steps_to_target"] * 32 * 63


def test_huge_learning_rate_is_detected_as_divergence(tiny_scenario):
    spec = spec_for(tiny_scenario)
    spec["lr"] = 300.0
    row, curves, _ = train_cell(spec)
    assert row["status"] == "diverged", row
    assert "loss" in row["error"]
    assert math.isnan(row["time_to_target_s"])


def test_bf16_autocast_runs_forward_in_bfloat16():
    w = WORKLOADS["lm-tiny"]
    run = settings()
    tech = REGISTRY["bf16_autocast"]()
    tech.configure(run)
    ctx = TrainContext(run, w, [REGISTRY["adamw"](), tech])
    build(ctx)
    x = torch.randint(0, 32, (2, 63))
    with ctx.autocast():
        logits = ctx.model(x)
    assert logits.dtype == torch.bfloat16
    assert ctx.model.lm_head.weight.dtype == torch.float32  # master weights stay float32


def test_activation_checkpointing_gives_the_same_gradients():
    w = WORKLOADS["lm-tiny"]
    grads = []
    for names in (["adamw"], ["adamw", "activation_checkpointing"]):
        ctx = TrainContext(settings(), w, [REGISTRY[n]() for n in names])
        build(ctx)
        g = torch.Generator().manual_seed(3)
        x = torch.randint(0, 32, (4, 63), generator=g)
        ctx.forward_backward(Batch(x, torch.roll(x, -1, 1)))
        grads.append({n: p.grad.clone() for n, p in ctx.model.named_parameters()})
    a, b = grads
    assert {k.replace(".block", "") for k in b} == set(a)
    for name, grad in b.items():
        torch.testing.assert_close(grad, a[name.replace(".block", "")], rtol=1e-5, atol=1e-7)
