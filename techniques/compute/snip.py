"""SNIP, single-shot network pruning by connection sensitivity (Lee, Ajanthan & Torr 2019, "SNIP:
Single-shot Network Pruning based on Connection Sensitivity", ICLR).

What it changes: the weights, once, at initialisation, then after every step. On the first training
batch it computes, for every prunable weight w (the linear matrices of the blocks), the connection
sensitivity s = |dL/dc| at c = 1 for w_eff = c * w, which is |g * w| (eq. 6), and keeps the globally
top ``keep_frac`` (kappa / m of the paper); the rest are set to zero. The masks are re-applied after
every optimizer step so pruned connections stay at zero (momentum would otherwise revive them), and
the pruned weights' gradients are zeroed before clipping (`on_gradients`), so the clipped norm is
the trained network's.

Cost accounting: the scoring forward-backward runs inside the first training step, on the clock
(the excluded warm-up step is the same for every cell and runs no technique hook), and as extra
work for the FLOP counter (hardware, not model FLOPs). The masks are unstructured: dense matmuls do
the same work, so this measures the convergence cost of training a sparse network; a speed-up needs
a sparse kernel (hardware/sparse_matmul).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from benchbed.techniques.base import Technique, register, require_family
from benchbed.techniques.compute._masks import apply_masks, global_top_masks, mask_gradients, prunable_weights


def connection_sensitivity(weights: list[torch.Tensor]) -> list[torch.Tensor]:
    """|g * w| per weight, normalised to sum to 1 over all prunable weights (eq. 6)."""
    scores = [(w.grad * w).abs() for w in weights]
    total = sum(s.sum() for s in scores)
    return [s / total for s in scores]


@dataclass(frozen=True)
class SNIPConfig:
    keep_frac: float = 0.5

    def check(self) -> None:
        if not 0.0 < self.keep_frac <= 1.0:
            raise ValueError(f"keep_frac: must be in (0, 1], got {self.keep_frac}")


@register
class SNIP(Technique):
    """SNIP: prune at init by connection sensitivity |g * w|, keep the masks."""

    name = "snip"
    category = "compute/sparse"
    paper = "Lee, Ajanthan & Torr 2019, SNIP: Single-shot Network Pruning based on Connection Sensitivity"
    Config = SNIPConfig
    conflicts = ("early_bird",)
    families = ("gpt", "bert", "vit")

    def validate(self, cell):
        require_family(self, cell)

    def __init__(self, config=None):
        super().__init__(config)
        self.weights: list[torch.Tensor] = []
        self.masks: list[torch.Tensor] | None = None

    def build_model(self, model, ctx):
        self.weights = prunable_weights(model)
        return model

    def train_step(self, ctx, batch, step, inner):
        if self.masks is None:
            with ctx.extra_work():
                ctx.zero_grad()
                ctx.forward_backward(batch)
            with torch.no_grad():
                self.masks = global_top_masks(connection_sensitivity(self.weights), self.config.keep_frac)
                apply_masks(self.weights, self.masks)
        return inner(batch)

    def on_gradients(self, ctx):
        if self.masks is not None:
            mask_gradients(self.weights, self.masks)

    def after_step(self, ctx):
        if self.masks is not None:
            apply_masks(self.weights, self.masks)
