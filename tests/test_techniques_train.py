"""Every technique of the compute/data/memory rows lowers validation loss on lm-tiny in a short budget."""

from __future__ import annotations

import math

import pytest
import torch

from benchbed.measure.telemetry import Telemetry
from benchbed.techniques import REGISTRY, build_config
from benchbed.worker.assemble import build
from benchbed.worker.context import RunSettings, TrainContext
from benchbed.worker.loop import train
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
    "loss_token_masking",
    "grad_norm_sampling",
    "fp16_autocast",
    "bf16_autocast",
    "activation_checkpointing",
]
# fp16 arithmetic is emulated on most CPUs (tens of times slower): fewer steps keep the test short
STEPS = {"fp16_autocast": 6}


def train_lm_tiny(names: list[str], steps: int, device: str = "cpu") -> dict:
    w = WORKLOADS["lm-tiny"]
    run = RunSettings(
        device=torch.device(device), seed=0, batch_size=w.batch_size, base_batch_size=w.batch_size,
        seq_len=w.seq_len, lr=w.lr, weight_decay=w.weight_decay, betas=w.betas, warmup_frac=w.warmup_frac,
        grad_clip=w.grad_clip, budget_tokens=None, budget_steps=steps, budget_seconds=None,
        eval_every_tokens=10**9, target_loss=0.0, stop_at_target=False,
    )  # fmt: skip
    techniques = [REGISTRY[n](build_config(REGISTRY[n], {}, f"techniques.{n}")) for n in names]
    if not any(t.provides_optimizer for t in techniques):
        techniques.append(REGISTRY["adamw"]())
    cell = {"device": device, "techniques": names, "batch_size": run.batch_size, "workload": "lm-tiny"}
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
    assert not result["measured"]["errors"] and result["measured"]["sampler"].counts  # FLOPs and memory


@pytest.mark.gpu
@pytest.mark.parametrize("names", [["cpu_offload_optimizer"], ["fp16_autocast"], ["sam", "fp16_autocast"]])
def test_gpu_only_techniques_lower_validation_loss_on_cuda(names):
    result = train_lm_tiny(names, 20, device="cuda")
    first, last = result["curves"][0]["val_loss"], result["curves"][-1]["val_loss"]
    assert math.isfinite(last) and last < first - 0.3, (first, last)


def test_cpu_offload_matches_adamw_on_the_first_steps_of_a_real_model():
    """The offloaded optimizer is AdamW: same hyper-parameters, same trajectory (CPU 'device' here)."""
    from benchbed.techniques.memory.cpu_offload_optimizer import OffloadedAdamW

    torch.manual_seed(0)
    a = torch.nn.Linear(4, 3)
    b = torch.nn.Linear(4, 3)
    b.load_state_dict(a.state_dict())
    ref = torch.optim.AdamW(a.parameters(), lr=0.05, weight_decay=0.1)
    off = OffloadedAdamW([{"params": list(b.parameters()), "weight_decay": 0.1}], lr=0.05)
    x = torch.randn(8, 4)
    for _ in range(3):
        for model, opt in ((a, ref), (b, off)):
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-6)


def test_every_technique_states_category_and_paper():
    for name, cls in REGISTRY.items():
        assert cls.category and "/" in cls.category, name
        assert cls.paper and any(ch.isdigit() for ch in cls.paper), name  # "Authors year, Title"
        assert cls.describe(), name
