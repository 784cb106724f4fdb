"""Learning-rate scaling rules for large batches (Goyal et al. 2017 linear; Krizhevsky 2014 sqrt)."""

from __future__ import annotations

import math

import pytest
import torch

from benchbed.techniques import REGISTRY, TechniqueError, build_config
from benchbed.worker.context import RunSettings


def run_settings(batch_size: int, base_batch_size: int = 32) -> RunSettings:
    return RunSettings(
        device=torch.device("cpu"), seed=0, batch_size=batch_size, base_batch_size=base_batch_size, seq_len=8,
        lr=0.01, weight_decay=0.1, betas=(0.9, 0.95), warmup_frac=0.05, grad_clip=1.0, budget_tokens=10_000,
        budget_steps=None, budget_seconds=None, eval_every_tokens=1000, target_loss=1.0,
    )  # fmt: skip


@pytest.mark.parametrize(
    "rule, batch_size, expected_lr",
    [
        ("linear", 128, 0.04),
        ("linear", 16, 0.005),
        ("sqrt", 128, 0.02),
        ("sqrt", 8, 0.005),
        ("linear", 32, 0.01),
    ],
)
def test_rules_scale_the_run_learning_rate(rule, batch_size, expected_lr):
    run = run_settings(batch_size)
    technique = REGISTRY["lr_scaling"](build_config(REGISTRY["lr_scaling"], {"rule": rule}, "test"))
    technique.configure(run)
    assert run.lr == pytest.approx(expected_lr)
    assert run.warmup_frac == 0.05  # unchanged unless given
    assert run.extra["lr_scaling"] == {"rule": rule, "base_lr": 0.01, "lr": pytest.approx(expected_lr)}


def test_warmup_frac_is_set_and_steps_shrink_with_the_batch():
    run = run_settings(128)
    technique = REGISTRY["lr_scaling"](build_config(REGISTRY["lr_scaling"], {"warmup_frac": 0.2}, "test"))
    technique.configure(run)
    assert run.warmup_frac == 0.2
    assert run.total_steps == 10_000 // (128 * 8)  # a token budget: 4x the batch, 4x fewer steps


@pytest.mark.parametrize(
    "options, field", [({"rule": "cubic"}, "rule"), ({"warmup_frac": 1.5}, "warmup_frac")]
)
def test_bad_options_are_refused_naming_the_field(options, field):
    with pytest.raises(TechniqueError, match=field):
        build_config(REGISTRY["lr_scaling"], options, "techniques.lr_scaling")


def test_optimizers_with_relative_learning_rates_follow_the_scaled_run_lr():
    """nesterov/lion/lars take a multiple of run.lr, so the rule composes with them."""

    class Ctx:
        device = torch.device("cpu")

    run = run_settings(128)
    REGISTRY["lr_scaling"]().configure(run)
    Ctx.run = run
    w = torch.nn.Parameter(torch.ones(2, 2))
    for name in ("nesterov", "lion", "lars"):
        technique = REGISTRY[name]()
        opt = technique.build_optimizer([w], Ctx)
        assert opt.param_groups[0]["lr"] == pytest.approx(technique.config.lr_ratio * 0.04)
    assert math.isclose(REGISTRY["lamb"]().build_optimizer([w], Ctx).param_groups[0]["lr"], 0.04)
