"""Shared by the norm-free initialisation schemes (ReZero, Fixup, SkipInit)."""

from __future__ import annotations

from torch import nn

NORM_FREE_SCHEMES = ("rezero", "fixup", "skipinit")


def base_block(block: nn.Module) -> nn.Module:
    """The GPT Block under any wrapper that keeps it as ``.block`` (activation checkpointing)."""
    while not hasattr(block, "norm1") and hasattr(block, "block"):
        block = block.block
    return block


def remove_norms(model: nn.Module, keep_final_norm: bool) -> list[nn.Module]:
    """Replace every block's norm1/norm2 (and norm_f unless kept) by Identity; return the blocks."""
    blocks = [base_block(b) for b in model.blocks]
    for block in blocks:
        block.norm1 = nn.Identity()
        block.norm2 = nn.Identity()
    if not keep_final_norm:
        model.norm_f = nn.Identity()
    return blocks
