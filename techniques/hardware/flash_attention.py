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

FLOPs: a Triton launch is invisible to the FLOP counter, so the Triton path reports its forward and
(when a gradient will follow) backward FLOPs by torch's formulas for scaled-dot-product attention,
the same the counter applies to the GPU attention kernels it sees (full T x T; the backward's
recomputation of the scores is hardware, not model, FLOPs).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import sdpa_backward_flop_count, sdpa_flop_count

from benchbed.techniques.base import Technique, TechniqueError, register, require_family
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
    families = ("gpt",)

    def validate(self, cell):
        require_family(self, cell)

    def build_model(self, model, ctx):
        attention = use_kernel(ctx, self.name, "flash_attention", self.config.backend)
        if self.config.allow_tf32 is not None:
            attention = functools.partial(attention, allow_tf32=self.config.allow_tf32)
        if ctx.run.extra.get("kernel_backend.flash_attention") == "triton":
            attention = _counted(attention, ctx.count_opaque_flops)
        swapped = 0
        for module in model.modules():
            if hasattr(module, "attn_fn"):
                module.attn_fn = attention
                swapped += 1
        if not swapped:
            raise TechniqueError(f"{self.name}: the model has no attention module with an 'attn_fn' seam")
        return model


def _counted(kernel, report):
    """`kernel` reporting its FLOPs (forward, and backward when a gradient will flow) to `report`."""

    def attention(q, k, v, causal=True):
        shape = tuple(q.shape)
        forward = sdpa_flop_count(shape, shape, shape)
        n, recompute = forward, 0.0
        if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
            n += sdpa_backward_flop_count(shape, shape, shape, shape)
            recompute = forward / 2  # the backward's recomputation of the scores (hardware only)
        report(n, recompute)
        return kernel(q, k, v, causal=causal)

    return attention
