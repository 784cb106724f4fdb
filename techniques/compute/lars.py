"""LARS, Layer-wise Adaptive Rate Scaling (You, Gitman & Ginsburg 2017, "Large Batch Training of
Convolutional Networks").

What it changes: the optimizer only. Momentum SGD where each layer (parameter tensor) w gets its
own local learning rate (Algorithm 1 of the paper):

    local_lr = eta * ||w|| / (||g|| + beta * ||w||)      # trust ratio; 1 when either norm is 0
    v = m * v + lr * local_lr * (g + beta * w)
    w = w - v

with trust coefficient eta (paper: 0.001), weight decay beta and momentum m. As in the paper's
follow-ups and reference implementations, biases, norm gains and scalar gates (every tensor with
dim < 2) are excluded from both the adaptation (local_lr = 1) and the weight decay.

Learning rates. In Algorithm 1 the global rate gamma only ever multiplies the local rate
lambda = eta ||w|| / (||g|| + beta ||w||): with eta = 0.001, gamma is large precisely to cancel eta,
and the product gamma * eta sets the relative update ||dw|| / ||w|| of every adapted layer. So the
large global rate -- ``lr_ratio`` times the run's (AdamW) learning rate by default, or an explicit
``lr`` -- applies only where the trust ratio does. An excluded tensor has no eta to cancel: given
gamma it would take a plain SGD step about 1/eta times the scale the paper intends (lr 3.0 on
lm-tiny, 300x the run's rate, which the paper never prescribes). Excluded tensors therefore take
plain momentum SGD at ``vector_lr``, by default the run's base learning rate.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from benchbed.techniques.base import Technique, register
from benchbed.techniques.compute._optim import check_optimizer_options, decay_groups, resolve_hyperparameters
from benchbed.techniques.search_space import LogUniform, Uniform


class LARSOptimizer(torch.optim.Optimizer):
    """Groups carry ``adapt`` (apply the trust ratio) and ``weight_decay``."""

    def __init__(
        self, params, lr: float, momentum: float = 0.9, trust_coefficient: float = 0.001, weight_decay=0.0
    ):
        defaults = {"lr": lr, "momentum": momentum, "trust_coefficient": trust_coefficient}
        super().__init__(params, {**defaults, "weight_decay": weight_decay, "adapt": True})

    @staticmethod
    def trust_ratio(w: torch.Tensor, g: torch.Tensor, eta: float, weight_decay: float) -> torch.Tensor:
        w_norm, g_norm = torch.linalg.vector_norm(w), torch.linalg.vector_norm(g)
        ratio = eta * w_norm / (g_norm + weight_decay * w_norm)
        return torch.where((w_norm > 0) & (g_norm > 0), ratio, torch.ones_like(ratio))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, mom, wd, eta = (
                group["lr"],
                group["momentum"],
                group["weight_decay"],
                group["trust_coefficient"],
            )
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                local_lr = self.trust_ratio(p, g, eta, wd) if group["adapt"] else 1.0
                if wd:
                    g = g.add(p, alpha=wd)
                state = self.state[p]
                if not state:
                    state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                v = state["momentum_buffer"]
                v.mul_(mom).add_(g * (lr * local_lr))
                p.sub_(v)
        return loss


@dataclass(frozen=True)
class LARSConfig:
    lr: float | None = None  # explicit global learning rate (adapted tensors); None: lr_ratio * the run's
    lr_ratio: float = 300.0  # applies only with the trust ratio (see the module docstring)
    vector_lr: float | None = None  # lr of the excluded (dim < 2) tensors; None: the run's base lr
    momentum: float = 0.9
    trust_coefficient: float = 0.001  # eta of the paper
    weight_decay: float = 0.0005  # beta of the paper (its AlexNet setting), coupled as in Algorithm 1

    def check(self) -> None:
        check_optimizer_options(self)
        if self.trust_coefficient <= 0:
            raise ValueError(f"trust_coefficient: must be positive, got {self.trust_coefficient}")


@register
class LARS(Technique):
    """LARS: momentum SGD with a layer-wise trust ratio."""

    name = "lars"
    category = "compute/optimizer"
    paper = "You, Gitman & Ginsburg 2017, Large Batch Training of Convolutional Networks"
    Config = LARSConfig
    provides_optimizer = True
    # lr and eta multiply on adapted tensors; lr alone sets the step of biases and gains
    search_space = {
        "lr": LogUniform(0.1, 30.0),
        "trust_coefficient": LogUniform(1e-4, 1e-2),
        "momentum": Uniform(0.8, 0.95),
    }

    def build_optimizer(self, params, ctx):
        c = self.config
        h = resolve_hyperparameters(c, ctx.run, lr_ratio=c.lr_ratio)
        groups = decay_groups(params, h.weight_decay)
        for group in groups:
            group["adapt"] = all(p.dim() >= 2 for p in group["params"])
            if not group["adapt"]:  # no trust ratio: no eta to cancel, so not the large global rate
                group["lr"] = c.vector_lr if c.vector_lr is not None else ctx.run.lr
        return LARSOptimizer(groups, lr=h.lr, momentum=c.momentum, trust_coefficient=c.trust_coefficient)
