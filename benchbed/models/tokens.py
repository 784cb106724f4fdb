"""Taking a subset of tokens out of a sequence and putting it back: the two operations token
dropping is made of (Hou et al. 2022 in the encoder, random-LTD in the GPT, MAE in the ViT).

A subset is an index tensor ``keep`` [B, K] of positions into [B, T, d] activations. The layers in
between see tensors of K tokens, so their matmuls and attention really shrink; the dropped tokens
keep the value they had when they were taken out.
"""

from __future__ import annotations

import torch


def gather_tokens(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """x [B, T, d], keep [B, K] -> x at those positions, [B, K, d]."""
    return x.gather(1, keep.unsqueeze(-1).expand(-1, -1, x.size(-1)))


def scatter_tokens(x: torch.Tensor, keep: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """A copy of x [B, T, d] whose `keep` positions hold `kept` [B, K, d] (differentiable in both)."""
    return x.scatter(1, keep.unsqueeze(-1).expand(-1, -1, x.size(-1)), kept.to(x.dtype))


def run_on_subset(block, x: torch.Tensor, keep: torch.Tensor | None, **kwargs) -> torch.Tensor:
    """block(x) on the kept tokens only; the dropped ones pass through unchanged."""
    if keep is None:
        return block(x, **kwargs)
    return scatter_tokens(x, keep, block(gather_tokens(x, keep), **kwargs))
