"""Techniques that edit a model declare the model families whose seams they know (`families`) and
refuse every other workload in one line at load time; the ones that claim a family train on it."""

from __future__ import annotations

import math

import pytest
import torch

from benchbed.techniques import REGISTRY, TechniqueError, build_config
from benchbed.worker.assemble import build_context, run_settings
from benchbed.worker.context import compose_step
from benchbed.workloads import WORKLOADS, Batch

#: one workload of each model family
BY_FAMILY = {"gpt": "lm-tiny", "bert": "mlm-tiny", "vit": "vit-tiny"}

RESTRICTED = sorted(n for n, cls in REGISTRY.items() if cls.families)


def make(name: str):
    cls = REGISTRY[name]
    return cls(build_config(cls, {}, f"techniques.{name}"))


def test_every_model_editing_technique_names_its_families():
    for name in (
        "rezero",
        "fixup",
        "skipinit",
        "lora",
        "flash_attention",
        "fused_cross_entropy",
        "layer_drop",
    ):
        assert REGISTRY[name].families, name
    assert set(BY_FAMILY) >= {f for n in RESTRICTED for f in REGISTRY[n].families}


@pytest.mark.parametrize("name", RESTRICTED)
def test_a_technique_refuses_the_families_it_does_not_edit(name):
    cls = REGISTRY[name]
    for family, workload in BY_FAMILY.items():
        if family in cls.families:
            continue
        with pytest.raises(TechniqueError) as err:
            make(name).validate({"workload": workload, "techniques": [name], "device": "cpu"})
        message = str(err.value)
        assert "\n" not in message and name in message and workload in message


@pytest.mark.parametrize(
    ("name", "workload"),
    [
        (n, BY_FAMILY[f])
        for n in ("layer_drop", "activation_checkpointing", "snip", "progressive_stacking")
        for f in ("bert", "vit")
    ],
)
def test_generic_block_techniques_train_the_encoder_and_the_vit(name, workload):
    w = WORKLOADS[workload]
    techniques = [make(name), make("adamw")]
    run = run_settings(w, torch.device("cpu"), batch_size=4, budget_tokens=None, budget_steps=2)
    view = {"device": "cpu", "techniques": [name, "adamw"], "workload": workload, "world_size": 1}
    ctx = build_context(w, techniques, run, view)
    step = compose_step(ctx)
    data = w.make_data().train_batches(4, w.seq_len, 0)
    for i in range(2):
        loss = step(Batch(*next(data)), i)
        ctx.step += 1
    assert math.isfinite(float(loss))
