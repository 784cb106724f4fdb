"""SAM, Sharpness-Aware Minimization (Foret et al. 2021, "Sharpness-Aware Minimization for
Efficiently Improving Generalization"), with the adaptive variant ASAM (Kwon et al. 2021, "ASAM:
Adaptive Sharpness-Aware Minimization for Scale-Invariant Learning of Deep Neural Networks").

What it changes: the training step, around whatever optimizer the cell has (AdamW by default; SAM
is not an optimizer itself). Each step:

1. forward-backward at theta, gradient g;
2. ascend: eps = rho * g / ||g||_2 (SAM, the p = 2 solution of the paper's eq. 2), or
   eps = rho * T^2 g / ||T g||_2 with T = |theta| + eta elementwise (ASAM, ``adaptive = true``);
3. theta <- theta + eps, then the inner step runs: zero grad, forward-backward at the perturbed
   point, clip, and just before the base optimizer's update theta is restored (a step pre-hook), so
   the base optimizer updates theta with the perturbed-point gradient, clipped.

Both passes are inside the step, so the timer charges SAM for its second forward-backward; the
FLOP counter counts the first (ascent) pass as extra work, so hardware FLOPs are about twice the
model FLOPs. The returned training loss is the one at theta (the first pass). Paper defaults: rho = 0.05 (SAM);
ASAM's papers use a larger rho (0.5) with eta = 0.01.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from benchbed.techniques.base import Technique, register
from benchbed.techniques.search_space import LogUniform


@torch.no_grad()
def sam_perturbation(
    params: list[torch.Tensor], rho: float, adaptive: bool = False, eta: float = 0.01
) -> list[torch.Tensor | None]:
    """eps per parameter (None where there is no gradient), from the current gradients."""
    scaled = []
    for p in params:
        if p.grad is None:
            scaled.append(None)
        else:
            scaled.append(p.grad * (p.abs() + eta) if adaptive else p.grad)  # T g
    norms = [torch.linalg.vector_norm(s) for s in scaled if s is not None]
    if not norms:
        return [None] * len(params)
    total = torch.linalg.vector_norm(torch.stack(norms))
    scale = rho / total.clamp_min(1e-12)
    eps = []
    for p, s in zip(params, scaled, strict=True):
        if s is None:
            eps.append(None)
        else:
            eps.append((s * (p.abs() + eta) if adaptive else s) * scale)  # T^2 g * rho / ||T g||
    return eps


@dataclass(frozen=True)
class SAMConfig:
    rho: float = 0.05
    adaptive: bool = False  # ASAM
    eta: float = 0.01  # ASAM's offset in T = |theta| + eta

    def check(self) -> None:
        if self.rho <= 0:
            raise ValueError(f"rho: must be positive, got {self.rho}")
        if self.eta < 0:
            raise ValueError(f"eta: must be >= 0, got {self.eta}")


@register
class SAM(Technique):
    """SAM / ASAM: second forward-backward at an adversarially perturbed point."""

    name = "sam"
    category = "compute/optimizer"
    paper = "Foret et al. 2021, Sharpness-Aware Minimization for Efficiently Improving Generalization"
    Config = SAMConfig
    search_space = {"rho": LogUniform(0.01, 0.3)}  # the paper's grid: 0.01 ... 0.5

    def train_step(self, ctx, batch, step, inner):
        c = self.config
        params = [p for p in ctx.model.parameters() if p.requires_grad]
        with ctx.extra_work():  # the ascent pass: hardware work beyond the model's step
            ctx.zero_grad()
            loss = ctx.forward_backward(batch)
        eps = sam_perturbation(params, c.rho, c.adaptive, c.eta)
        if ctx.scaler is not None and not all(e is None or bool(torch.isfinite(e).all()) for e in eps):
            eps = [None] * len(params)  # fp16 overflow: the scaler skips this step anyway
        # restore by copy, not by subtracting eps, so theta comes back bit-exact
        saved = [None if e is None else p.detach().clone() for p, e in zip(params, eps, strict=True)]
        restored = False

        @torch.no_grad()
        def restore(*_args):
            nonlocal restored
            if not restored:
                for p, old in zip(params, saved, strict=True):
                    if old is not None:
                        p.copy_(old)
                restored = True

        with torch.no_grad():
            for p, e in zip(params, eps, strict=True):
                if e is not None:
                    p.add_(e)
        handle = ctx.optimizer.register_step_pre_hook(restore)
        try:
            inner(batch)
        finally:
            handle.remove()
            restore()  # the scaler may skip the optimizer step (fp16 overflow)
        return loss
