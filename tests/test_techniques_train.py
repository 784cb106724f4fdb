"""Every technique of the compute/data/memory rows lowers validation loss on lm-tiny in a short budget."""

from __future__ import annotations

import math

import pytest
import torch

from benchbed.techniques import REGISTRY, build_config
from benchbed.telemetry import Telemetry
from benchbed.train import RunSettings, TrainContext, build, train
from benchbed.workloads import WORKLOADS

CPU_TECHNIQUES = [
    "adamw",
    "nesterov",
    "lion",
    "lars",
    "lamb",
    "sam",
    "lr_scaling",
    "rezero",
    "fixup",
    "skipinit",
    "snip",
    "early_bird",
    "progressive_stacking",
    "layer_drop",
    "token_dropping",
    "grad_norm_sampling",
    "lora",
    "fp16_autocast",
    "bf16_autocast",
    "activation_checkpointing",
]
# fp16 arithmetic is emulated on most CPUs (tens of times slower): fewer steps keep the test short
STEPS = {"fp16_autocast": 6}


def train_lm_tiny(names: list[str], steps: int) -> dict:
    w = WORKLOADS["lm-tiny"]
    run = RunSettings(
        device=torch.device("cpu"), seed=0, batch_size=w.batch_size, base_batch_size=w.batch_size,
        seq_len=w.seq_len, lr=w.lr, weight_decay=w.weight_decay, betas=w.betas, warmup_frac=w.warmup_frac,
        grad_clip=w.grad_clip, budget_tokens=None, budget_steps=steps, budget_seconds=None,
        eval_every_tokens=10**9, target_loss=0.0, stop_at_target=False,
    )  # fmt: skip
    techniques = [REGISTRY[n](build_config(REGISTRY[n], {}, f"techniques.{n}")) for n in names]
    if not any(t.provides_optimizer for t in techniques):
        techniques.append(REGISTRY["adamw"]())
    cell = {"device": "cpu", "techniques": names, "batch_size": run.batch_size, "workload": "lm-tiny"}
    for t in techniques:
        t.validate(cell)
    for t in techniques:
        t.configure(run)
    ctx = TrainContext(run, w, techniques)
    build(ctx)
    return train(ctx, w.make_data(), Telemetry(run.device, "test"))


@pytest.mark.slow
@pytest.mark.parametrize("name", CPU_TECHNIQUES)
def test_technique_lowers_validation_loss_on_lm_tiny(name):
    result = train_lm_tiny([name], STEPS.get(name, 20))
    first, last = result["curves"][0]["val_loss"], result["curves"][-1]["val_loss"]
    assert result["status"] != "diverged", result.get("error")
    assert math.isfinite(last) and last < first - 0.3, (first, last)


def test_every_technique_states_category_and_paper():
    for name, cls in REGISTRY.items():
        assert cls.category and "/" in cls.category, name
        assert cls.paper and any(ch.isdigit() for ch in cls.paper), name  # "Authors year, Title"
        assert cls.describe(), name
