"""Progressive layer dropping (Zhang & He 2020, "Accelerating Training of Transformer-Based Language
Models with Progressive Layer Dropping", NeurIPS).

What it changes: which blocks run in each training step (stochastic depth on a schedule). At step t
the global keep probability follows the paper's temporal schedule

    theta(t) = (1 - theta_bar) * exp(-gamma * t) + theta_bar

and block i of L (1-based) is kept with the depth-scaled probability p_i = 1 - i / L * (1 - theta(t)),
so shallow blocks are dropped less. A dropped block is the identity (no compute, no gradient); a kept
block's residual update is divided by p_i so the expected output matches evaluation, where every
block runs. Here t is measured as a fraction of the budget: gamma = ``gamma_per_budget`` (the
paper's gamma = 0.001 per step over its run is reached as a fast early decay toward theta_bar = 0.5).
The paper also switches to a pre-LN block, which this GPT already is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from benchbed.techniques.base import Technique, register, require_family


def keep_probability(progress: float, index: int, n_blocks: int, theta_bar: float, gamma: float) -> float:
    """p_i at a budget fraction, for block ``index`` in 1..n_blocks."""
    theta = (1.0 - theta_bar) * math.exp(-gamma * progress) + theta_bar
    return 1.0 - index / n_blocks * (1.0 - theta)


@dataclass(frozen=True)
class LayerDropConfig:
    theta_bar: float = 0.5
    gamma_per_budget: float = 20.0

    def check(self) -> None:
        if not 0.0 < self.theta_bar <= 1.0:
            raise ValueError(f"theta_bar: must be in (0, 1], got {self.theta_bar}")
        if self.gamma_per_budget < 0:
            raise ValueError(f"gamma_per_budget: must be >= 0, got {self.gamma_per_budget}")


@register
class LayerDrop(Technique):
    """Progressive layer dropping: stochastic depth whose drop rate grows on a schedule."""

    name = "layer_drop"
    category = "compute/incremental"
    paper = "Zhang & He 2020, Accelerating Training of Transformer-Based Language Models with Progressive Layer Dropping"
    Config = LayerDropConfig
    conflicts = ("progressive_stacking",)
    stochastic_flops = True  # which blocks run is drawn every step: the FLOP counter samples more
    families = ("gpt", "bert", "vit")

    def validate(self, cell):
        require_family(self, cell)

    def __init__(self, config=None):
        super().__init__(config)
        self.blocks = None
        self.generator = torch.Generator()

    def build_model(self, model, ctx):
        self.blocks = model.blocks
        self.generator.manual_seed(ctx.run.seed)
        return model

    def train_step(self, ctx, batch, step, inner):
        n = len(self.blocks)
        c = self.config
        try:
            for i, block in enumerate(self.blocks, start=1):
                p = keep_probability(ctx.progress(), i, n, c.theta_bar, c.gamma_per_budget)
                if float(torch.rand((), generator=self.generator)) >= p:
                    block.forward = lambda x, *a, **k: x
                elif p < 1.0:
                    block.forward = _scaled_forward(block, p)
            return inner(batch)
        finally:
            for block in self.blocks:
                block.__dict__.pop("forward", None)  # evaluation runs the full network


def _scaled_forward(block: torch.nn.Module, keep_prob: float):
    base = type(block).forward

    def forward(x, *args, **kwargs):
        return x + (base(block, x, *args, **kwargs) - x) / keep_prob

    return forward
