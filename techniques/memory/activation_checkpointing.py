"""Activation checkpointing, i.e. rematerialisation (Chen et al. 2016, "Training Deep Nets with
Sublinear Memory Cost").

What it changes: each transformer block's forward runs under `torch.utils.checkpoint`, so only
the block inputs are kept for backward and the block's activations are recomputed during the
backward pass. It trades roughly one extra forward pass of compute for activation memory; the
extra forward is inside the training clock, so the technique pays for it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.checkpoint import checkpoint

from benchbed.techniques.base import Technique, register, require_family


class _Checkpointed(torch.nn.Module):
    def __init__(self, block: torch.nn.Module):
        super().__init__()
        self.block = block

    def forward(self, x, *args, **kwargs):  # the encoder's blocks take a `context` too
        if not self.training:
            return self.block(x, *args, **kwargs)
        return checkpoint(self.block, x, *args, use_reentrant=False, **kwargs)


@dataclass(frozen=True)
class CheckpointConfig:
    every: int = 1  # checkpoint every n-th block (1 = all)

    def check(self) -> None:
        if self.every < 1:
            raise ValueError(f"every: must be >= 1, got {self.every}")


@register
class ActivationCheckpointing(Technique):
    """Recompute each block's activations in backward instead of storing them."""

    name = "activation_checkpointing"
    category = "memory/rematerialization"
    paper = "Chen et al. 2016, Training Deep Nets with Sublinear Memory Cost"
    Config = CheckpointConfig
    families = ("gpt", "bert", "vit")

    def validate(self, cell):
        require_family(self, cell)

    def build_model(self, model, ctx):
        blocks = model.blocks
        for i in range(len(blocks)):
            if i % self.config.every == 0:
                blocks[i] = _Checkpointed(blocks[i])
        return model
