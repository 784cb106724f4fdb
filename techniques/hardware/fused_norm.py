"""Fused LayerNorm (Ba, Kiros & Hinton 2016, "Layer Normalization"), forward and backward in one
kernel each, as in Apex / Triton's layer-norm tutorial.

What it changes: every ``nn.LayerNorm`` in the model is replaced by ``FusedLayerNorm`` holding the
*same* weight and bias parameters (optimizer groups, weight decay rules and checkpoints see the
same tensors). The forward stores only per-row mean and 1/std; the backward computes dx per row and
the weight/bias gradients from per-program partial sums (no atomics). Statistics are float32; the
output keeps the input dtype. Without CUDA ``auto`` runs the PyTorch reference and says so.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from benchbed.techniques.base import Technique, TechniqueError, register
from benchbed.techniques.hardware import check_backend, use_kernel


class FusedLayerNorm(nn.Module):
    """Drop-in for a 1-D ``nn.LayerNorm`` that runs the ``layer_norm`` kernel."""

    def __init__(self, source: nn.LayerNorm, kernel: Callable):
        super().__init__()
        (self.width,) = source.normalized_shape
        self.eps = source.eps
        self.weight = source.weight  # the same Parameter objects, not copies
        self.bias = source.bias
        self.kernel = kernel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.kernel(x, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.width}, eps={self.eps}, bias={self.bias is not None}"


@dataclass(frozen=True)
class FusedNormConfig:
    backend: str = "auto"  # auto | reference | triton

    def check(self) -> None:
        check_backend(self.backend)


@register
class FusedNorm(Technique):
    """LayerNorm through a fused Triton forward/backward kernel (same parameters)."""

    name = "fused_norm"
    category = "hardware/kernels"
    paper = "Ba, Kiros & Hinton 2016, Layer Normalization (kernel after Apex / Triton's layer-norm tutorial)"
    Config = FusedNormConfig

    def build_model(self, model, ctx):
        kernel = use_kernel(ctx, self.name, "layer_norm", self.config.backend)
        targets = [
            (name, module)
            for name, module in model.named_modules()
            if isinstance(module, nn.LayerNorm) and len(module.normalized_shape) == 1
        ]
        if not targets:
            raise TechniqueError(f"{self.name}: the model has no 1-D nn.LayerNorm to fuse")
        for name, module in targets:
            parent_name, _, attr = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, attr, FusedLayerNorm(module, kernel))
        return model
