"""Early-bird tickets (You et al. 2020, "Drawing Early-Bird Tickets: Towards More Efficient Training
of Deep Networks", ICLR).

What it changes: the weights, once a ticket is drawn. The paper observes that the pruning mask of a
network stabilises early in training. Every ``check_every_frac`` of the budget (the paper checks
every epoch) it computes the magnitude-pruning mask at ``keep_frac`` and the normalised Hamming
distance to the previous mask; it keeps the last ``window`` distances (paper: 5) and, when all of them
are below ``epsilon`` (paper: 0.1), draws the ticket: the mask is applied and re-applied after every
step for the rest of the budget (the pruned network keeps training from its early-bird weights).

Adaptation: the paper prunes channels by batch-norm scaling factors; this GPT has no batch norm, so
the mask is unstructured magnitude pruning of the blocks' linear weights (the lottery-ticket
criterion). Like SNIP, unstructured masks save no compute with dense kernels; what this measures is
the convergence cost of the ticket. The mask computations run after steps, inside the clock.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import torch

from benchbed.techniques.base import Technique, register, require_family
from benchbed.techniques.compute._masks import apply_masks, global_top_masks, prunable_weights


def mask_distance(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    """Normalised Hamming distance between two sets of boolean masks."""
    differ = sum(int((x != y).sum()) for x, y in zip(a, b, strict=True))
    return differ / sum(x.numel() for x in a)


@dataclass(frozen=True)
class EarlyBirdConfig:
    keep_frac: float = 0.5
    epsilon: float = 0.1
    window: int = 5
    check_every_frac: float = 0.02  # of the budget, between mask comparisons (the paper: one epoch)

    def check(self) -> None:
        if not 0.0 < self.keep_frac <= 1.0:
            raise ValueError(f"keep_frac: must be in (0, 1], got {self.keep_frac}")
        if not 0.0 < self.epsilon < 1.0:
            raise ValueError(f"epsilon: must be in (0, 1), got {self.epsilon}")
        if self.window < 1:
            raise ValueError(f"window: must be >= 1, got {self.window}")
        if not 0.0 < self.check_every_frac < 1.0:
            raise ValueError(f"check_every_frac: must be in (0, 1), got {self.check_every_frac}")


@register
class EarlyBird(Technique):
    """Early-bird tickets: prune once the magnitude mask stops changing."""

    name = "early_bird"
    category = "compute/sparse"
    paper = "You et al. 2020, Drawing Early-Bird Tickets: Towards More Efficient Training of Deep Networks"
    Config = EarlyBirdConfig
    conflicts = ("snip",)
    families = ("gpt", "bert", "vit")

    def validate(self, cell):
        require_family(self, cell)

    def __init__(self, config=None):
        super().__init__(config)
        self.weights: list[torch.Tensor] = []
        self.previous: list[torch.Tensor] | None = None
        self.distances: deque[float] = deque(maxlen=self.config.window)
        self.ticket: list[torch.Tensor] | None = None
        self.drawn_at_step: int | None = None
        self.next_check = self.config.check_every_frac

    def build_model(self, model, ctx):
        self.weights = prunable_weights(model)
        return model

    @torch.no_grad()
    def after_step(self, ctx):
        if self.ticket is not None:
            apply_masks(self.weights, self.ticket)
            return
        if ctx.progress() < self.next_check:
            return
        self.next_check = ctx.progress() + self.config.check_every_frac
        masks = global_top_masks([w.abs() for w in self.weights], self.config.keep_frac)
        if self.previous is not None:
            self.distances.append(mask_distance(masks, self.previous))
        self.previous = masks
        if len(self.distances) == self.config.window and max(self.distances) < self.config.epsilon:
            self.ticket = masks
            self.drawn_at_step = ctx.step
            ctx.run.extra["early_bird_step"] = ctx.step
            apply_masks(self.weights, self.ticket)
