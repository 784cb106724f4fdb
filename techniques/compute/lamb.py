"""LAMB, Layer-wise Adaptive Moments for Batch training (You et al. 2020, "Large Batch Optimization
for Deep Learning: Training BERT in 76 minutes", ICLR; arXiv 2019).

What it changes: the optimizer only. Adam's bias-corrected direction plus decoupled weight decay,
rescaled per layer (parameter tensor) by a trust ratio (Algorithm 2 of the paper, phi = identity):

    m = beta1 * m + (1 - beta1) * g;   v = beta2 * v + (1 - beta2) * g^2
    r = m_hat / (sqrt(v_hat) + eps) + lambda * w        # m_hat, v_hat bias-corrected
    w = w - lr * phi(||w||) / ||r|| * r                 # ratio 1 when either norm is 0

Biases and norm weights (dim < 2) are excluded from the trust ratio (ratio 1, a plain AdamW step)
and from weight decay, as in the paper's BERT setup. Learning rate, betas and weight decay default
to the run's; eps defaults to the paper's 1e-6.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from benchbed.techniques.base import Technique, register
from benchbed.techniques.compute._optim import check_optimizer_options, decay_groups, resolve_hyperparameters
from benchbed.techniques.search_space import LogUniform, Uniform


class LAMBOptimizer(torch.optim.Optimizer):
    """Groups carry ``adapt`` (apply the trust ratio) and ``weight_decay``."""

    def __init__(self, params, lr: float, betas=(0.9, 0.999), eps: float = 1e-6, weight_decay: float = 0.0):
        super().__init__(
            params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay, "adapt": True}
        )

    @staticmethod
    def trust_ratio(w: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        w_norm, r_norm = torch.linalg.vector_norm(w), torch.linalg.vector_norm(r)
        return torch.where((w_norm > 0) & (r_norm > 0), w_norm / r_norm, torch.ones_like(w_norm))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, (beta1, beta2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                t, m, v = state["step"], state["exp_avg"], state["exp_avg_sq"]
                m.lerp_(p.grad, 1.0 - beta1)
                v.mul_(beta2).addcmul_(p.grad, p.grad, value=1.0 - beta2)
                r = (m / (1.0 - beta1**t)) / ((v / (1.0 - beta2**t)).sqrt_().add_(eps))
                if wd:
                    r.add_(p, alpha=wd)
                ratio = self.trust_ratio(p, r) if group["adapt"] else 1.0
                p.sub_(r * (lr * ratio))
        return loss


@dataclass(frozen=True)
class LAMBConfig:
    lr: float | None = None  # None: the run's (scaled) learning rate
    beta1: float | None = None  # None: the run's betas
    beta2: float | None = None
    eps: float = 1e-6
    weight_decay: float | None = None  # None: the run's

    def check(self) -> None:
        check_optimizer_options(self)


@register
class LAMB(Technique):
    """LAMB: Adam direction with a layer-wise trust ratio."""

    name = "lamb"
    category = "compute/optimizer"
    paper = "You et al. 2020, Large Batch Optimization for Deep Learning: Training BERT in 76 minutes"
    Config = LAMBConfig
    provides_optimizer = True
    search_space = {
        "lr": LogUniform(1e-3, 1e-1),
        "beta2": Uniform(0.9, 0.999),
        "weight_decay": LogUniform(1e-3, 0.5),
    }

    def build_optimizer(self, params, ctx):
        c = self.config
        h = resolve_hyperparameters(c, ctx.run)
        groups = decay_groups(params, h.weight_decay)
        for group in groups:
            group["adapt"] = all(p.dim() >= 2 for p in group["params"])
        return LAMBOptimizer(groups, lr=h.lr, betas=h.betas, eps=c.eps, weight_decay=h.weight_decay)
