"""Weight masks shared by the pruning techniques (SNIP, early-bird tickets)."""

from __future__ import annotations

import torch
from torch import nn


def prunable_weights(model: nn.Module) -> list[torch.nn.Parameter]:
    """The linear weight matrices inside the blocks (embeddings and the tied head are never pruned)."""
    return [p for name, p in model.blocks.named_parameters() if p.dim() >= 2 and name.endswith("weight")]


def global_top_masks(scores: list[torch.Tensor], keep_frac: float) -> list[torch.Tensor]:
    """Boolean masks keeping the globally highest-scoring keep_frac of all entries."""
    flat = torch.cat([s.flatten() for s in scores])
    k = max(1, int(round(keep_frac * flat.numel())))
    threshold = torch.topk(flat, k, sorted=True).values[-1]
    masks = [s >= threshold for s in scores]
    # ties at the threshold could keep more than k; drop the excess deterministically
    excess = int(sum(int(m.sum()) for m in masks)) - k
    if excess > 0:
        for m, s in zip(masks, scores, strict=True):
            tied = ((s == threshold) & m).flatten().nonzero().flatten()
            drop = tied[: min(excess, tied.numel())]
            m.view(-1)[drop] = False
            excess -= drop.numel()
            if excess == 0:
                break
    return masks


@torch.no_grad()
def apply_masks(params: list[torch.Tensor], masks: list[torch.Tensor]) -> None:
    for p, m in zip(params, masks, strict=True):
        p.mul_(m)


@torch.no_grad()
def mask_gradients(params: list[torch.Tensor], masks: list[torch.Tensor]) -> None:
    """Zero the gradients of masked-out entries, so clipping and the optimizer ignore pruned weights."""
    for p, m in zip(params, masks, strict=True):
        if p.grad is not None:
            p.grad.mul_(m)
