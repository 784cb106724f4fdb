"""Lion, EvoLved Sign Momentum (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms").

What it changes: the optimizer only. Per parameter, with gradient g and momentum m (Algorithm 2):

    c     = beta1 * m + (1 - beta1) * g          # interpolation used for the update
    theta = theta - lr * (sign(c) + lambda * theta)  # decoupled weight decay on the old theta
    m     = beta2 * m + (1 - beta2) * g          # momentum tracked with a different beta

Only one state tensor per parameter (Adam keeps two). The paper's defaults are beta1 = 0.9,
beta2 = 0.99, and it recommends a learning rate 3-10x smaller than AdamW's with a weight decay
3-10x larger, so the product lr * lambda stays the same: here ``lr = lr_ratio * run.lr`` and, unless
given, ``weight_decay = run.weight_decay / lr_ratio``. Decay applies to matrices only, as for AdamW.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from benchbed.techniques.base import Technique, register
from benchbed.techniques.compute._optim import check_optimizer_options, decay_groups, resolve_hyperparameters
from benchbed.techniques.search_space import LogUniform, Uniform


class LionOptimizer(torch.optim.Optimizer):
    def __init__(
        self, params, lr: float, betas: tuple[float, float] = (0.9, 0.99), weight_decay: float = 0.0
    ):
        super().__init__(params, {"lr": lr, "betas": betas, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, (beta1, beta2), wd = group["lr"], group["betas"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                m = state["exp_avg"]
                update = torch.lerp(p.grad, m, beta1).sign_()  # beta1 * m + (1 - beta1) * g
                if wd:
                    p.mul_(1.0 - lr * wd)
                p.add_(update, alpha=-lr)
                m.lerp_(p.grad, 1.0 - beta2)  # beta2 * m + (1 - beta2) * g
        return loss


#: Lion's learning rate as a fraction of AdamW's (the paper: 3-10x smaller); the one default shared by
#: ``lion`` and ``fused_optimizer``'s Lion
LION_LR_RATIO = 0.3


@dataclass(frozen=True)
class LionConfig:
    lr: float | None = None  # explicit learning rate; None: lr_ratio * the run's learning rate
    lr_ratio: float = LION_LR_RATIO
    beta1: float = 0.9
    beta2: float = 0.99
    weight_decay: float | None = None  # None: the run's weight decay / lr_ratio (same lr * lambda)

    def check(self) -> None:
        check_optimizer_options(self)


@register
class Lion(Technique):
    """Lion: sign of interpolated momentum, decoupled weight decay."""

    name = "lion"
    category = "compute/optimizer"
    paper = "Chen et al. 2023, Symbolic Discovery of Optimization Algorithms"
    Config = LionConfig
    provides_optimizer = True
    # the paper: lr 3-10x below AdamW's, weight decay 3-10x above, beta2 0.99 (0.98 for stability)
    search_space = {
        "lr": LogUniform(3e-5, 1e-2),
        "beta2": Uniform(0.95, 0.999),
        "weight_decay": LogUniform(1e-2, 3.0),
    }

    def build_optimizer(self, params, ctx):
        c = self.config
        h = resolve_hyperparameters(c, ctx.run, lr_ratio=c.lr_ratio, decay_over_ratio=True)
        return LionOptimizer(
            decay_groups(params, h.weight_decay), lr=h.lr, betas=h.betas, weight_decay=h.weight_decay
        )
