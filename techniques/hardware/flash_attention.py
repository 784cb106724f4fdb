"""FlashAttention-2 (Dao 2023, "FlashAttention-2: Faster Attention with Better Parallelism and Work
Partitioning"; Dao et al. 2022, "FlashAttention: Fast and Memory-Efficient Exact Attention with
IO-Awareness").

What it changes: every attention module's ``attn_fn`` (the seam in benchbed.models.gpt) becomes the
``flash_attention`` kernel: exact attention computed tile by tile with an online softmax, the
[T, T] score matrix never stored, the backward recomputing it from the saved log-sum-exp. The
model's outputs are the same function; time and memory change. q, k, v are read through their
strides (no copies). fp32 attention uses IEEE fp32 dots unless ``allow_tf32`` (default: torch's own
``torch.backends.cuda.matmul.allow_tf32``, False unless the run turned it on). On a machine without
CUDA ``auto`` runs the PyTorch reference (materialised attention) and the cell records that it did.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from benchbed.techniques.base import Technique, TechniqueError, register
from benchbed.techniques.hardware import check_backend, use_kernel


@dataclass(frozen=True)
class FlashAttentionConfig:
    backend: str = "auto"  # auto | reference | triton
    allow_tf32: bool | None = None  # fp32 inputs: TF32 dots; None (unset) = torch's matmul setting

    def check(self) -> None:
        check_backend(self.backend)


@register
class FlashAttention(Technique):
    """Attention through the FlashAttention-2 Triton kernel (tiled online softmax, recomputing backward)."""

    name = "flash_attention"
    category = "hardware/efficient_attention"
    paper = "Dao 2023, FlashAttention-2: Faster Attention with Better Parallelism and Work Partitioning"
    Config = FlashAttentionConfig

    def build_model(self, model, ctx):
        attention = use_kernel(ctx, self.name, "flash_attention", self.config.backend)
        if self.config.allow_tf32 is not None:
            attention = functools.partial(attention, allow_tf32=self.config.allow_tf32)
        swapped = 0
        for module in model.modules():
            if hasattr(module, "attn_fn"):
                module.attn_fn = attention
                swapped += 1
        if not swapped:
            raise TechniqueError(f"{self.name}: the model has no attention module with an 'attn_fn' seam")
        return model
