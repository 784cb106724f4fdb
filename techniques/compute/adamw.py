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

from benchbed.techniques.base import Technique, register
from benchbed.techniques.compute._optim import check_optimizer_options, decay_groups, resolve_hyperparameters
from benchbed.techniques.search_space import LogUniform, Uniform


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
    search_space = {
        "lr": LogUniform(3e-4, 3e-2),
        "beta2": Uniform(0.9, 0.999),
        "weight_decay": LogUniform(1e-3, 0.5),
    }

    def build_optimizer(self, params, ctx):
        c = self.config
        h = resolve_hyperparameters(c, ctx.run)
        fast = {"fused": True} if ctx.device.type == "cuda" else {"foreach": True}
        return torch.optim.AdamW(
            decay_groups(params, h.weight_decay), lr=h.lr, betas=h.betas, eps=c.eps, **fast
        )
