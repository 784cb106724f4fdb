"""FlashAttention-2 (Dao 2023, "FlashAttention-2: Faster Attention with Better Parallelism and Work
Partitioning"; Dao et al. 2022, "FlashAttention: Fast and Memory-Efficient Exact Attention with
IO-Awareness").

What it changes: every attention module's ``attn_fn`` (the seam in benchbed.models.gpt) becomes the
``flash_attention`` kernel: exact attention computed tile by tile with an online softmax, the
[T, T] score matrix never stored, the backward recomputing it from the saved log-sum-exp. The
model's outputs are the same function; time and memory change. On a machine without CUDA ``auto``
runs the PyTorch reference (materialised attention) and the cell records that it did.
"""

from __future__ import annotations

from dataclasses import dataclass

from benchbed.techniques.base import Technique, TechniqueError, register, require_family
from benchbed.techniques.hardware import check_backend, use_kernel


@dataclass(frozen=True)
class FlashAttentionConfig:
    backend: str = "auto"  # auto | reference | triton

    def check(self) -> None:
        check_backend(self.backend)


@register
class FlashAttention(Technique):
    """Attention through the FlashAttention-2 Triton kernel (tiled online softmax, recomputing backward)."""

    name = "flash_attention"
    category = "hardware/efficient_attention"
    paper = "Dao 2023, FlashAttention-2: Faster Attention with Better Parallelism and Work Partitioning"
    Config = FlashAttentionConfig
    families = ("gpt",)

    def validate(self, cell):
        require_family(self, cell)

    def build_model(self, model, ctx):
        attention = use_kernel(ctx, self.name, "flash_attention", self.config.backend)
        swapped = 0
        for module in model.modules():
            if hasattr(module, "attn_fn"):
                module.attn_fn = attention
                swapped += 1
        if not swapped:
            raise TechniqueError(f"{self.name}: the model has no attention module with an 'attn_fn' seam")
        return model
