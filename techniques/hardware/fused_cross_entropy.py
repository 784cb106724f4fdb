"""Fused linear cross-entropy (Wijmans et al. 2024, "Cut Your Losses in Large-Vocabulary Language
Models"; Liger-Kernel's FusedLinearCrossEntropy, Hsu et al. 2024).

What it changes: the loss. Instead of materialising logits [tokens, vocab] (and their float32 copy
and gradient), the loss takes the final hidden states and the output projection, and processes
tokens in chunks: per chunk it computes the logits, turns them in place into their gradient with a
softmax+NLL kernel that never stores probabilities, and accumulates d(hidden) and d(weight). Peak
memory falls by about tokens/chunk_size times the logits size; the loss value is the same mean
next-token cross-entropy (or the same per-sequence weighting when a data technique sets weights).
A model without ``hidden``/``lm_head`` (a wrapped model) gets the unfused-projection variant: the
fused cross-entropy on its logits. Without CUDA ``auto`` runs the PyTorch reference and says so.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from benchbed.techniques.base import Technique, register, require_family
from benchbed.techniques.hardware import check_backend, use_kernel
from benchbed.workloads import IGNORE_INDEX


def token_coefficients(targets: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor | None:
    """Per-token loss coefficients reproducing the language-model workload loss with per-sequence weights:
    each sequence's mean over its non-ignored tokens, weighted by w_b / sum(w). None: plain mean."""
    if weights is None:
        return None
    mask = (targets != IGNORE_INDEX).float()
    per_sequence = weights.float() / weights.float().sum()
    return mask / mask.sum(1, keepdim=True).clamp_min(1.0) * per_sequence[:, None]


@dataclass(frozen=True)
class FusedCrossEntropyConfig:
    chunk_size: int = 4096  # tokens per chunk: the largest logits block that exists at once
    backend: str = "auto"  # auto | reference | triton

    def check(self) -> None:
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size: must be a positive number of tokens, got {self.chunk_size}")
        check_backend(self.backend)


@register
class FusedCrossEntropy(Technique):
    """Output projection + cross-entropy fused in token chunks; full logits never stored."""

    name = "fused_cross_entropy"
    category = "hardware/kernels"
    paper = "Wijmans et al. 2024, Cut Your Losses in Large-Vocabulary Language Models"
    Config = FusedCrossEntropyConfig
    families = ("gpt",)

    def validate(self, cell):
        require_family(self, cell)

    def build_model(self, model, ctx):
        linear_ce = use_kernel(ctx, self.name, "linear_cross_entropy", self.config.backend)
        plain_ce = use_kernel(ctx, self.name, "cross_entropy", self.config.backend)
        chunk_size = self.config.chunk_size

        def loss_fn(model, batch):
            coefficients = token_coefficients(batch.targets, batch.weights)
            if hasattr(model, "hidden") and hasattr(model, "lm_head"):
                hidden = model.hidden(batch.inputs)
                return linear_ce(
                    hidden,
                    model.lm_head.weight,
                    batch.targets,
                    chunk_size,
                    IGNORE_INDEX,
                    token_weights=coefficients,
                )
            logits = model(batch.inputs)
            return plain_ce(logits, batch.targets, IGNORE_INDEX, token_weights=coefficients)

        ctx.loss_fn = loss_fn
        return model
