"""AdamW: Adam with decoupled weight decay (Loshchilov & Hutter 2019, "Decoupled Weight Decay
Regularization"). The baseline optimizer of every scenario: a cell whose techniques supply no
optimizer gets this one.

What it changes: the optimizer only. Weight decay applies to matrices (dim >= 2) and not to
biases, norm weights or scalar gains, as in GPT-2/nanoGPT. Uses PyTorch's fused implementation on
CUDA and foreach elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from benchbed.techniques.base import Technique, check_optimizer_options, register


def decay_groups(params: list[torch.nn.Parameter], weight_decay: float) -> list[dict]:
    """Split parameters into a decayed group (matrices) and a non-decayed one (vectors, scalars)."""
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def resolve_hyperparameters(config, run, default_betas=None) -> tuple[float, tuple[float, float], float]:
    """(lr, betas, weight_decay): each option the config leaves as None comes from the run (or
    `default_betas`), so a scenario overrides only what it names."""
    betas = default_betas if default_betas is not None else run.betas
    return (
        config.lr if config.lr is not None else run.lr,
        (
            config.beta1 if config.beta1 is not None else betas[0],
            config.beta2 if config.beta2 is not None else betas[1],
        ),
        config.weight_decay if config.weight_decay is not None else run.weight_decay,
    )


@dataclass(frozen=True)
class AdamWConfig:
    lr: float | None = None  # None: the workload's (scaled) learning rate
    beta1: float | None = None  # None: the workload's betas
    beta2: float | None = None
    eps: float = 1e-8
    weight_decay: float | None = None  # None: the workload's

    def check(self) -> None:
        check_optimizer_options(self)


@register
class AdamW(Technique):
    """AdamW with decoupled weight decay (the baseline optimizer)."""

    name = "adamw"
    category = "compute/optimizer"
    paper = "Loshchilov & Hutter 2019, Decoupled Weight Decay Regularization"
    Config = AdamWConfig
    provides_optimizer = True

    def build_optimizer(self, params, ctx):
        c = self.config
        lr, betas, wd = resolve_hyperparameters(c, ctx.run)
        fast = {"fused": True} if ctx.device.type == "cuda" else {"foreach": True}
        return torch.optim.AdamW(decay_groups(params, wd), lr=lr, betas=betas, eps=c.eps, **fast)
