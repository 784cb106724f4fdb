"""Activation checkpointing, i.e. rematerialisation (Chen et al. 2016, "Training Deep Nets with
Sublinear Memory Cost").

What it changes: each transformer block's forward runs under `torch.utils.checkpoint`, so only
the block inputs are kept for backward and the block's activations are recomputed during the
backward pass. It trades roughly one extra forward pass of compute for activation memory; the
extra forward is inside the training clock, so the technique pays for it.

Measurement seams: the recomputation runs under ``ctx.recompute()`` (its FLOPs are hardware, not
model FLOPs; its tensors count as saved while they live) and each checkpointed block's input is
reported with ``ctx.hold_for_backward`` (the checkpoint keeps it outside autograd's saved tensors).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch.utils.checkpoint import checkpoint

from benchbed.techniques.base import Technique, register, require_family


class _Checkpointed(torch.nn.Module):
    def __init__(self, block: torch.nn.Module, recompute=nullcontext, hold=lambda tensor: None):
        super().__init__()
        self.block = block
        self.recompute = recompute  # context of the recomputation (ctx.recompute)
        self.hold = hold  # reports the input the checkpoint keeps (ctx.hold_for_backward)

    def forward(self, x, *args, **kwargs):  # the encoder's blocks take a `context` too
        if not self.training:
            return self.block(x, *args, **kwargs)
        if torch.is_grad_enabled():
            self.hold(x)
        return checkpoint(self.block, x, *args, use_reentrant=False, context_fn=self._contexts, **kwargs)

    def _contexts(self):
        return nullcontext(), self.recompute()


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
                blocks[i] = _Checkpointed(blocks[i], ctx.recompute, ctx.hold_for_backward)
        return model
