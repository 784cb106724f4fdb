"""SGD with Nesterov momentum (Nesterov 1983; in deep learning: Sutskever et al. 2013, "On the
importance of initialization and momentum in deep learning").

What it changes: the optimizer only, PyTorch's ``torch.optim.SGD(nesterov=True)``:
v <- mu * v + g, theta <- theta - lr * (g + mu * v). Weight decay here is PyTorch SGD's L2 term
(added to the gradient, i.e. coupled, as in the classic formulation), applied to matrices only.

SGD needs a much larger learning rate than Adam (its step is the raw gradient, not a normalised
one), so the learning rate is a multiple of the run's (AdamW) learning rate: ``lr_ratio`` (the
default trains lm-tiny), or an explicit ``lr``. Because it is a multiple of ``run.lr``, batch-size
scaling rules (``lr_scaling``) compose with it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from benchbed.techniques.base import Technique, register
from benchbed.techniques.compute._optim import check_optimizer_options, decay_groups, resolve_hyperparameters
from benchbed.techniques.search_space import LogUniform, Uniform


@dataclass(frozen=True)
class NesterovConfig:
    lr: float | None = None  # explicit learning rate; None: lr_ratio * the run's learning rate
    lr_ratio: float = 30.0
    momentum: float = 0.9
    weight_decay: float = 0.0  # L2 (coupled); the run's decoupled AdamW coefficient does not transfer

    def check(self) -> None:
        check_optimizer_options(self)
        if not 0.0 < self.momentum < 1.0:
            raise ValueError(f"momentum: Nesterov needs a momentum in (0, 1), got {self.momentum}")


@register
class Nesterov(Technique):
    """SGD with Nesterov momentum (PyTorch's SGD, nesterov=True)."""

    name = "nesterov"
    category = "compute/optimizer"
    paper = "Sutskever et al. 2013, On the importance of initialization and momentum in deep learning"
    Config = NesterovConfig
    provides_optimizer = True
    search_space = {"lr": LogUniform(1e-2, 3.0), "momentum": Uniform(0.8, 0.98)}

    def build_optimizer(self, params, ctx):
        c = self.config
        h = resolve_hyperparameters(c, ctx.run, lr_ratio=c.lr_ratio)
        fast = {} if ctx.device.type == "cuda" else {"foreach": True}
        return torch.optim.SGD(
            decay_groups(params, h.weight_decay), lr=h.lr, momentum=c.momentum, nesterov=True, **fast
        )
