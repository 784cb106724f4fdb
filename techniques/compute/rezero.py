"""ReZero (Bachlechner et al. 2021, "ReZero is All You Need: Fast Convergence at Large Depth", UAI;
arXiv 2020).

What it changes: the model. Every LayerNorm is removed and each layer's residual branches are
multiplied by a learnable scalar alpha initialised to 0: x_{i+1} = x_i + alpha_i * F(x_i). As in the
authors' reference transformer (``resweight``), one alpha per layer is shared by that layer's
attention and MLP sublayers. At initialisation every block is the identity, so the network computes
exactly the embedding path: lm_head(tok_emb + pos_emb).

The final LayerNorm (``norm_f``) is removed too by default: the paper's ReZero transformer has no
normalisation at all. ``keep_final_norm = true`` keeps it (a common variant for tied-embedding LMs).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from benchbed.techniques.base import Technique, register, require_family
from benchbed.techniques.compute._norm_free import NORM_FREE_SCHEMES, remove_norms


@dataclass(frozen=True)
class ReZeroConfig:
    alpha_init: float = 0.0  # the paper's 0: every layer starts as the identity
    keep_final_norm: bool = False


@register
class ReZero(Technique):
    """ReZero: norms removed, residual branches scaled by a learnable alpha initialised to 0."""

    name = "rezero"
    category = "compute/initialization"
    paper = "Bachlechner et al. 2021, ReZero is All You Need: Fast Convergence at Large Depth"
    Config = ReZeroConfig
    conflicts = tuple(n for n in NORM_FREE_SCHEMES if n != "rezero")
    families = ("gpt",)

    def validate(self, cell):
        require_family(self, cell)

    def build_model(self, model, ctx):
        device = next(model.parameters()).device
        for block in remove_norms(model, self.config.keep_final_norm):
            alpha = nn.Parameter(torch.full((), self.config.alpha_init, device=device))
            block.attn_scale = alpha  # the same Parameter: one alpha per layer
            block.mlp_scale = alpha
        return model
