"""Fixup (Zhang, Dauphin & Ma 2019, "Fixup Initialization: Residual Learning Without
Normalization", ICLR), adapted to the pre-norm GPT.

The paper's rules, for L residual branches of m weight layers each:
1. zero-initialise the last layer of each residual branch (and the classification layer);
2. initialise the other layers by the standard method, then scale the weight layers inside
   residual branches by L^(-1/(2m-2));
3. add a scalar multiplier (init 1) in every branch and a scalar bias (init 0) before each
   convolution/linear and element-wise activation layer; remove all normalisation.

The adaptation to this transformer, stated so a reader can check it: the residual branches are
the attention and MLP sublayers, so L = 2 * n_layer, and each has m = 2 weight layers (attention:
qkv -> proj, the softmax mixing has no weights; MLP: fc -> proj), giving the factor L^(-1/2) on
``qkv`` and ``fc`` (their GPT-2 standard init, rescaled) and zeros on both ``proj``. Scalar biases
sit before qkv, before attention's proj, before fc, before the GELU and before the MLP's proj; the
multipliers are ``attn_scale``/``mlp_scale``. Every LayerNorm is removed (``norm_f`` too unless
``keep_final_norm``). Rule 1's classification layer is NOT zeroed: the output head is tied to the
token embedding, and zeroing it would zero the input; the embedding keeps its standard init.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from benchbed.techniques.base import Technique, register, require_family
from benchbed.techniques.compute._norm_free import NORM_FREE_SCHEMES, remove_norms


def fixup_scale(n_branches: int, layers_per_branch: int = 2) -> float:
    """L^(-1/(2m-2)) of the paper."""
    return n_branches ** (-1.0 / (2 * layers_per_branch - 2))


def _add_input_bias(module: nn.Module, device: torch.device) -> None:
    """A scalar bias added to the module's input (a forward pre-hook keeps the module in place)."""
    module.fixup_bias_in = nn.Parameter(torch.zeros((), device=device))
    module.register_forward_pre_hook(lambda m, args: (args[0] + m.fixup_bias_in, *args[1:]))


def _add_output_bias(module: nn.Module, device: torch.device) -> None:
    """A scalar bias added to the module's output (here: fc's output, i.e. before the GELU)."""
    module.fixup_bias_out = nn.Parameter(torch.zeros((), device=device))
    module.register_forward_hook(lambda m, args, out: out + m.fixup_bias_out)


@dataclass(frozen=True)
class FixupConfig:
    keep_final_norm: bool = False


@register
class Fixup(Technique):
    """Fixup: norm-free, zero-init branch outputs, L^-1/2-scaled branch inputs, scalar biases/multipliers."""

    name = "fixup"
    category = "compute/initialization"
    paper = "Zhang, Dauphin & Ma 2019, Fixup Initialization: Residual Learning Without Normalization"
    Config = FixupConfig
    conflicts = tuple(n for n in NORM_FREE_SCHEMES if n != "fixup")
    families = ("gpt",)

    def validate(self, cell):
        require_family(self, cell)

    def build_model(self, model, ctx):
        device = next(model.parameters()).device
        blocks = remove_norms(model, self.config.keep_final_norm)
        scale = fixup_scale(2 * len(blocks))
        with torch.no_grad():
            for block in blocks:
                for first, last in ((block.attn.qkv, block.attn.proj), (block.mlp.fc, block.mlp.proj)):
                    first.weight.mul_(scale)
                    nn.init.zeros_(last.weight)
                    for layer in (first, last):
                        if layer.bias is not None:
                            nn.init.zeros_(layer.bias)
                        _add_input_bias(layer, device)
                _add_output_bias(block.mlp.fc, device)
                block.attn_scale = nn.Parameter(torch.ones((), device=device))
                block.mlp_scale = nn.Parameter(torch.ones((), device=device))
        return model
