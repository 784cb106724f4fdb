"""SkipInit (De & Smith 2020, "Batch Normalization Biases Residual Blocks Towards the Identity
Function in Deep Networks", NeurIPS).

What it changes: the model. Normalisation layers are removed and a learnable scalar multiplier
alpha is placed at the end of every residual branch (attention and MLP each get their own):
x + alpha * f(x). The paper initialises alpha to 0 or to a small constant no larger than
1/sqrt(d) for d residual branches; ``alpha_init`` takes a number or "inv_sqrt_depth" (1/sqrt(d),
d = 2 * n_layer). The final norm is removed too unless ``keep_final_norm``.

Difference from ReZero: one scalar per branch rather than per layer, and a possibly non-zero start.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from benchbed.techniques.base import Technique, register, require_family
from benchbed.techniques.compute._norm_free import NORM_FREE_SCHEMES, remove_norms


@dataclass(frozen=True)
class SkipInitConfig:
    alpha_init: float | Literal["inv_sqrt_depth"] = 0.0
    keep_final_norm: bool = False

    def check(self) -> None:
        if isinstance(self.alpha_init, str) and self.alpha_init != "inv_sqrt_depth":
            raise ValueError(f"alpha_init: a number or 'inv_sqrt_depth', got {self.alpha_init!r}")

    def initial_alpha(self, n_layer: int) -> float:
        if isinstance(self.alpha_init, str):
            return 1.0 / math.sqrt(2 * n_layer)
        return float(self.alpha_init)


@register
class SkipInit(Technique):
    """SkipInit: norms removed, a learnable scalar (initialised small) ends every residual branch."""

    name = "skipinit"
    category = "compute/initialization"
    paper = "De & Smith 2020, Batch Normalization Biases Residual Blocks Towards the Identity Function in Deep Networks"
    Config = SkipInitConfig
    conflicts = tuple(n for n in NORM_FREE_SCHEMES if n != "skipinit")
    families = ("gpt",)

    def validate(self, cell):
        require_family(self, cell)

    def build_model(self, model, ctx):
        device = next(model.parameters()).device
        blocks = remove_norms(model, self.config.keep_final_norm)
        alpha = self.config.initial_alpha(len(blocks))
        for block in blocks:
            block.attn_scale = nn.Parameter(torch.full((), alpha, device=device))
            block.mlp_scale = nn.Parameter(torch.full((), alpha, device=device))
        return model
