"""Structured pruning of a GPT into a genuinely smaller dense one: whole attention heads, MLP
hidden channels and blocks are removed, so every remaining matmul is smaller (the FLOPs formula
and measured FLOPs both drop), unlike an unstructured mask on dense kernels.

Shared by `overparameterize_compress` (wide model -> the workload's shape) and the structured
`early_bird` ticket. The model is pruned in place (its linears are replaced by sliced copies) and
`prune` returns, for every surviving parameter, the slice that maps its old tensor to the new one,
so optimizer state (Adam's moments) can be carried over by `carry_optimizer_state`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

Slicer = Callable[[torch.Tensor], torch.Tensor]


def core(block: nn.Module) -> nn.Module:
    """The block inside a wrapper (activation checkpointing keeps it as ``.block``)."""
    return block.block if hasattr(block, "block") else block


@dataclass
class Plan:
    """What survives: per kept block (in order), its kept heads and MLP channels."""

    blocks: list[int]
    heads: dict[int, list[int]] = field(default_factory=dict)
    channels: dict[int, torch.Tensor] = field(default_factory=dict)


def head_importance(attn: nn.Module) -> torch.Tensor:
    """L2 norm of each head's weights (its rows of q, k, v and its columns of the output projection)."""
    H, hd, W = attn.n_head, attn.head_dim, attn.width
    qkv = attn.qkv.weight.detach().float()  # [3W, d]
    proj = attn.proj.weight.detach().float()  # [d, W]
    sq = qkv.view(3, H, hd, -1).pow(2).sum(dim=(0, 2, 3)) + proj.view(-1, H, hd).pow(2).sum(dim=(0, 2))
    assert sq.numel() == H and H * hd == W
    return sq.sqrt()


def channel_importance(mlp: nn.Module) -> torch.Tensor:
    """L2 norm of each hidden channel's weights (its row of fc and its column of proj)."""
    fc, proj = mlp.fc.weight.detach().float(), mlp.proj.weight.detach().float()
    return (fc.pow(2).sum(1) + proj.pow(2).sum(0)).sqrt()


def block_importance(block: nn.Module) -> float:
    """L2 norm of a block's residual-branch output projections (what it adds to the stream)."""
    b = core(block)
    return float(
        torch.sqrt(
            b.attn.proj.weight.detach().float().pow(2).sum() + b.mlp.proj.weight.detach().float().pow(2).sum()
        )
    )


def top(scores: torch.Tensor, k: int) -> list[int]:
    """Indices of the k highest scores, in their original order (ties: the lower index)."""
    k = max(1, min(k, scores.numel()))
    order = sorted(range(scores.numel()), key=lambda i: (-float(scores[i]), i))
    return sorted(order[:k])


def _sliced_linear(old: nn.Linear, rows: torch.Tensor | None, cols: torch.Tensor | None) -> nn.Linear:
    w = old.weight.detach()
    if rows is not None:
        w = w[rows]
    if cols is not None:
        w = w[:, cols]
    new = nn.Linear(w.shape[1], w.shape[0], bias=old.bias is not None, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        new.weight.copy_(w)
        if old.bias is not None:
            new.bias.copy_(old.bias.detach()[rows] if rows is not None else old.bias.detach())
    new.weight.requires_grad_(old.weight.requires_grad)
    return new


def _slicer(rows: torch.Tensor | None, cols: torch.Tensor | None) -> Slicer:
    def apply(t: torch.Tensor) -> torch.Tensor:
        if rows is not None:
            t = t[rows.to(t.device)]
        if cols is not None and t.dim() > 1:
            t = t[:, cols.to(t.device)]
        return t

    return apply


@torch.no_grad()
def prune(model: nn.Module, plan: Plan) -> dict[nn.Parameter, tuple[nn.Parameter, Slicer]]:
    """Prune `model` in place to `plan`; returns new parameter -> (old parameter, slice)."""
    mapping: dict[nn.Parameter, tuple[nn.Parameter, Slicer]] = {}
    untouched = {id(p) for p in model.parameters()}
    kept = [model.blocks[i] for i in plan.blocks]
    for i, block in zip(plan.blocks, kept, strict=True):
        b = core(block)
        attn, mlp = b.attn, b.mlp
        if i in plan.heads:
            heads = plan.heads[i]
            hd, W = attn.head_dim, attn.width
            within = torch.cat([torch.arange(h * hd, (h + 1) * hd) for h in heads]).to(attn.qkv.weight.device)
            rows = torch.cat([within, within + W, within + 2 * W])
            for name, r, c in (("qkv", rows, None), ("proj", None, within)):
                old = getattr(attn, name)
                new = _sliced_linear(old, r, c)
                mapping[new.weight] = (old.weight, _slicer(r, c))
                if old.bias is not None:
                    mapping[new.bias] = (old.bias, _slicer(r, None))
                setattr(attn, name, new)
            attn.n_head = len(heads)
        if i in plan.channels:
            ch = plan.channels[i].to(mlp.fc.weight.device)
            for name, r, c in (("fc", ch, None), ("proj", None, ch)):
                old = getattr(mlp, name)
                new = _sliced_linear(old, r, c)
                mapping[new.weight] = (old.weight, _slicer(r, c))
                if old.bias is not None:
                    mapping[new.bias] = (old.bias, _slicer(r, None))
                setattr(mlp, name, new)
    model.blocks = nn.ModuleList(kept)
    for p in model.parameters():  # what was not sliced keeps its tensor and its state
        if id(p) in untouched and p not in mapping:
            mapping[p] = (p, lambda t: t)
    return mapping


@torch.no_grad()
def carry_optimizer_state(
    old: torch.optim.Optimizer,
    new: torch.optim.Optimizer,
    mapping: dict[nn.Parameter, tuple[nn.Parameter, Slicer]],
) -> int:
    """Copy each surviving parameter's optimizer state (moments sliced like the weight, scalars
    such as Adam's step as they are) from `old` into `new`; returns how many parameters had state."""
    carried = 0
    for group in new.param_groups:
        for p in group["params"]:
            if p not in mapping:
                continue
            old_p, slicer = mapping[p]
            state = old.state.get(old_p)
            if not state:
                continue
            new.state[p] = {
                k: (
                    slicer(v).clone()
                    if torch.is_tensor(v) and v.shape == old_p.shape
                    else (v.clone() if torch.is_tensor(v) else v)
                )
                for k, v in state.items()
            }
            carried += 1
    return carried


def uniform_plan(model: nn.Module, n_layer: int, n_head: int, channels: int) -> Plan:
    """Keep the `n_layer` most important blocks and, in each, its `n_head` most important heads and
    `channels` most important MLP channels (by weight magnitude)."""
    scores = [block_importance(b) for b in model.blocks]
    blocks = top(torch.tensor(scores), n_layer)
    plan = Plan(blocks=blocks)
    for i in blocks:
        b = core(model.blocks[i])
        plan.heads[i] = top(head_importance(b.attn), n_head)
        plan.channels[i] = torch.tensor(top(channel_importance(b.mlp), channels))
    return plan
