"""One budget, one unit: tokens actually trained on over all processes, every batch change declared
with its learning-rate rule; and the hand-checked fixes of the schedule and the optimizers' rates."""

from __future__ import annotations

import math
import textwrap

import pandas as pd
import pytest
import torch

from benchbed import plan
from benchbed.run.runner import run_scenario
from benchbed.techniques import REGISTRY, Technique, TechniqueError, build_config
from benchbed.worker.assemble import build, configure, run_settings
from benchbed.worker.context import TrainContext
from benchbed.worker.loop import train
from benchbed.workloads import WORKLOADS

LM = WORKLOADS["lm-tiny"]


def make(name, **options):
    return REGISTRY[name](build_config(REGISTRY[name], options, f"techniques.{name}"))


class NoTelemetry:
    def window_start(self):
        pass

    def window_end(self):
        pass

    def training_energy_j(self):
        return math.nan


def train_tokens(names: list[str], budget_tokens: int, batch_size: int = 8) -> dict:
    run = run_settings(
        LM, torch.device("cpu"), batch_size=batch_size, budget_tokens=budget_tokens, stop_at_target=False,
        eval_every_tokens=10**9, target_loss=0.0,
    )  # fmt: skip
    techniques = [make(n) for n in names]
    configure(techniques, run)
    ctx = TrainContext(run, LM, techniques)
    build(ctx)
    return train(ctx, LM.make_data(), NoTelemetry(), measure=False) | {"run": run}


def test_importance_sampling_trains_the_baselines_tokens_and_steps():
    budget = 5 * 8 * 63 + 100  # 5 steps of 8 sequences, and a remainder that buys no step
    base = train_tokens(["adamw"], budget)
    sampled = train_tokens(["adamw", "grad_norm_sampling"], budget)
    assert base["steps"] == sampled["steps"] == 5
    assert base["tokens"] == sampled["tokens"] == 5 * 8 * 63 <= budget
    # the pool is read (and scored) but only the selected batch is trained on and counted
    assert sampled["run"].loaded_batch_size == 3 * 8 and sampled["run"].batch_size == 8
    assert sampled["run"].batch_changes[0]["by"] == "grad_norm_sampling"


def test_token_budget_counts_the_global_batch():
    run = run_settings(LM, torch.device("cpu"), batch_size=8, budget_tokens=10 * 16 * 63, world_size=2)
    assert run.global_batch_size == 16 and run.tokens_per_step == 16 * 63
    assert run.total_steps == 10  # not 20: the second process's tokens count too


def test_a_batch_change_must_be_declared():
    class Sneaky(Technique):
        name = "sneaky"
        category = "compute/large_batch"
        paper = "nobody 2024, a test"

        def configure(self, run):
            run.batch_size *= 2

    run = run_settings(LM, torch.device("cpu"))
    with pytest.raises(TechniqueError, match="techniques.sneaky: configure changed the batch"):
        configure([Sneaky()], run)
    declared = run_settings(LM, torch.device("cpu"))
    configure([make("grad_norm_sampling")], declared)  # declares its pool: accepted
    assert declared.read_batch_size == 3 * LM.batch_size


@pytest.mark.parametrize("rule, factor", [("none", 1.0), ("linear", 2.0), ("sqrt", math.sqrt(2.0))])
def test_data_parallel_applies_and_records_its_lr_rule(rule, factor, monkeypatch):
    import torch.distributed as dist

    monkeypatch.setattr(dist, "is_initialized", lambda: True)  # no process group needed to configure
    monkeypatch.setattr(dist, "get_rank", lambda: 0)
    run = run_settings(LM, torch.device("cpu"))
    configure([make("data_parallel", world_size=2, lr_rule=rule)], run)
    assert run.lr == pytest.approx(LM.lr * factor)
    assert run.lr_rule == rule and run.world_size == 2 and run.global_batch_size == 2 * LM.batch_size
    assert run.batch_changes == [
        {"by": "data_parallel", "before": {"batch_size": 32, "world_size": 1, "read_batch_size": None},
         "after": {"batch_size": 32, "world_size": 2, "read_batch_size": None}, "lr_rule": rule, "lr": run.lr}
    ]  # fmt: skip


def test_data_parallel_refuses_to_scale_twice_with_lr_scaling():
    cell = {"device": "cpu", "techniques": ["data_parallel", "lr_scaling"], "launched": False}
    with pytest.raises(TechniqueError, match="data_parallel.lr_rule"):
        make("data_parallel", lr_rule="linear").validate(cell)
    make("data_parallel").validate(cell)  # lr_rule none: lr_scaling alone scales for the global batch


def test_lr_scaling_scales_for_the_global_batch():
    run = run_settings(LM, torch.device("cpu"), world_size=2)
    configure([make("lr_scaling", rule="linear")], run)
    assert run.lr == pytest.approx(2 * LM.lr) and run.lr_rule == "linear"


@pytest.mark.slow
def test_two_rank_data_parallel_cell_trains_at_most_its_budget_and_records_its_global_batch(tmp_path):
    budget = 6 * 64 * 63 + 1000  # six global steps of 2 x 32 sequences, and a remainder
    path = tmp_path / "ddp.toml"
    path.write_text(
        textwrap.dedent(
            f"""
            name = "ddp"
            workload = "lm-tiny"
            device = "cpu"
            seeds = [0]
            target_loss = 0.1
            stop_at_target = false
            eval_every_tokens = 100000000
            timeout_s = 240
            [budget]
            tokens = {budget}
            [matrix]
            techniques = ["adamw+data_parallel"]
            """
        )
    )
    out = run_scenario(plan.load(str(path)), tmp_path / "out", progress=False, log=lambda m: None)
    (row,) = pd.read_parquet(out / "cells.parquet").to_dict("records")
    assert row["status"] == "budget_exhausted", row["error"]
    assert row["tokens"] <= budget and row["tokens"] == 6 * 64 * 63
    assert row["steps"] == 6
    assert row["batch_size"] == 32 and row["world_size"] == 2 and row["global_batch_size"] == 64
    assert row["lr_rule"] == "none" and row["effective_lr"] == pytest.approx(LM.lr)
    assert row["model_flops_per_token"] > 0  # counted on the unwrapped replica, no communication


# -- hand-checked fixes ------------------------------------------------------------------------------
def test_warmup_reaches_the_peak_without_overshooting_it():
    run = run_settings(LM, torch.device("cpu"), budget_tokens=None, budget_steps=744, warmup_frac=0.05)
    ctx = TrainContext(run, LM, [])
    factors = []
    for step in range(744):
        ctx.step = step
        factors.append(ctx.lr_factor())
    warmup_steps = 0.05 * 744  # 37.2
    assert factors[0] == pytest.approx(1 / warmup_steps)
    assert factors[36] == pytest.approx(37 / warmup_steps)  # 0.9946
    assert factors[37] == 1.0  # (37 + 1) / 37.2 = 1.0215 before the fix: capped at the peak
    assert max(factors) == 1.0
