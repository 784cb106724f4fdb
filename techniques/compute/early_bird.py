"""Early-bird tickets, structured (You et al. 2020, "Drawing Early-Bird Tickets: Towards More
Efficient Training of Deep Networks", ICLR; for transformers Chen et al. 2021, "EarlyBERT: Efficient
BERT Training via Early-bird Lottery Tickets", ACL).

What it changes: the model. The paper draws channel-pruning masks from the batch-norm scaling
factors gamma, trained with an L1 penalty (network slimming, Liu et al. 2017), and notices that the
mask stops changing early in training; once it is stable it prunes the channels and trains the
smaller network to the end. A transformer has no batch norm, and LayerNorm's gamma scales the
residual stream's channels, which every layer shares (pruning them is not removing a structure).
The transformer analogue, as in EarlyBERT, is a learnable **gate** per structure, initialised to 1:
one per attention head (multiplying that head's output before the output projection) and one per
MLP hidden channel (multiplying its pre-activation, so a zero gate makes the channel output
exactly GELU(0) = 0). The gates play gamma's part: they carry an L1 penalty, applied decoupled as a
proximal step after each optimizer step (every gate shrinks towards 0 by lr x ``l1``, the L1
counterpart of AdamW's decoupled decay), and structures are ranked by |gate|.

Every ``check_every_frac`` of the budget it draws the masks (globally, as network slimming does:
the ``keep_frac`` highest |gate| heads over all blocks, and the same fraction of MLP channels, at
least one of each per block) and the normalised Hamming distance to the previous masks; when the
last ``window`` distances are all below ``epsilon`` (paper: 5 and 0.1) it draws the ticket: the
gates are folded into the weights, the masked heads and channels are removed, and a genuinely
smaller dense GPT (fewer heads per block, narrower MLPs) trains on with the surviving weights and
their optimizer state. The saving is real: every later step runs smaller matmuls, which the row's
`flops_per_token` (the pruned model's) and the measured FLOPs show; ``run_extra`` records the
FLOPs per token and parameters before and after, and the step of the ticket. The gates, mask
checks and rebuild run inside the clock.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import torch
from torch import nn

from benchbed.techniques.base import Technique, register
from benchbed.techniques.compute._finetune import refuse_model_rebuilders, require_gpt
from benchbed.techniques.compute._structured import Plan, carry_optimizer_state, core, prune


class HeadGate(nn.Module):
    """The output projection of an attention layer, with one gate per head on its input."""

    def __init__(self, proj: nn.Linear, n_head: int, head_dim: int):
        super().__init__()
        self.linear, self.n_head, self.head_dim = proj, n_head, head_dim
        self.gate = nn.Parameter(torch.ones(n_head, device=proj.weight.device))

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        shape = y.shape
        y = (y.view(*shape[:-1], self.n_head, self.head_dim) * self.gate[:, None].to(y.dtype)).view(shape)
        return self.linear(y)

    @torch.no_grad()
    def fold(self) -> nn.Linear:
        """The projection with the gates multiplied into its columns (same function)."""
        w = self.linear.weight
        w.mul_(self.gate.repeat_interleave(self.head_dim)[None, :].to(w.dtype))
        return self.linear


class ChannelGate(nn.Module):
    """An MLP's first linear layer, with one gate per hidden channel on its output."""

    def __init__(self, fc: nn.Linear):
        super().__init__()
        self.linear = fc
        self.gate = nn.Parameter(torch.ones(fc.out_features, device=fc.weight.device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) * self.gate.to(x.dtype)

    @torch.no_grad()
    def fold(self) -> nn.Linear:
        self.linear.weight.mul_(self.gate[:, None].to(self.linear.weight.dtype))
        if self.linear.bias is not None:
            self.linear.bias.mul_(self.gate.to(self.linear.bias.dtype))
        return self.linear


def mask_distance(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    """Normalised Hamming distance between two sets of boolean masks."""
    differ = sum(int((x != y).sum()) for x, y in zip(a, b, strict=True))
    return differ / sum(x.numel() for x in a)


def global_masks(gates: list[torch.Tensor], keep_frac: float) -> list[torch.Tensor]:
    """Keep the `keep_frac` highest |gate| over all layers (network slimming's global threshold),
    with each layer's strongest structure always kept so no layer is emptied."""
    scores = [g.detach().abs().float().flatten() for g in gates]
    flat = torch.cat(scores)
    k = max(len(gates), int(round(keep_frac * flat.numel())))
    keep = torch.zeros(flat.numel(), dtype=torch.bool)
    offset = 0
    for s in scores:  # one per layer first
        keep[offset + int(s.argmax())] = True
        offset += s.numel()
    order = sorted(range(flat.numel()), key=lambda i: (-float(flat[i]), i))
    rest = [i for i in order if not keep[i]][: k - len(gates)]
    keep[rest] = True
    return list(keep.split([s.numel() for s in scores]))


@dataclass(frozen=True)
class EarlyBirdConfig:
    keep_frac: float = 0.5  # of heads and of MLP channels (each ranked globally)
    epsilon: float = 0.1
    window: int = 5
    check_every_frac: float = 0.02  # of the budget, between mask comparisons (the paper: one epoch)
    l1: float = 0.1  # decoupled L1 on the gates: each step shrinks them by lr x l1

    def check(self) -> None:
        if not 0.0 < self.keep_frac <= 1.0:
            raise ValueError(f"keep_frac: must be in (0, 1], got {self.keep_frac}")
        if not 0.0 < self.epsilon < 1.0:
            raise ValueError(f"epsilon: must be in (0, 1), got {self.epsilon}")
        if self.window < 1:
            raise ValueError(f"window: must be >= 1, got {self.window}")
        if not 0.0 < self.check_every_frac < 1.0:
            raise ValueError(f"check_every_frac: must be in (0, 1), got {self.check_every_frac}")
        if self.l1 < 0:
            raise ValueError(f"l1: must be >= 0, got {self.l1}")


@register
class EarlyBird(Technique):
    """Structured early-bird tickets: gate heads and channels, prune once the gate mask is stable."""

    name = "early_bird"
    category = "compute/sparse"
    paper = "You et al. 2020, Drawing Early-Bird Tickets: Towards More Efficient Training of Deep Networks"
    Config = EarlyBirdConfig
    conflicts = ("snip",)
    families = ("gpt",)  # the gates sit on the GPT's attention projection and MLP

    def __init__(self, config=None):
        super().__init__(config)
        self.head_gates: list[HeadGate] = []
        self.channel_gates: list[ChannelGate] = []
        self.previous: list[torch.Tensor] | None = None
        self.distances: deque[float] = deque(maxlen=self.config.window)
        self.ticket: list[torch.Tensor] | None = None
        self.drawn_at_step: int | None = None
        self.next_check = self.config.check_every_frac

    def validate(self, cell):
        require_gpt(self.name, cell)
        refuse_model_rebuilders(self.name, cell)

    def build_model(self, model, ctx):
        for block in model.blocks:
            b = core(block)
            b.attn.proj = HeadGate(b.attn.proj, b.attn.n_head, b.attn.head_dim)
            b.mlp.fc = ChannelGate(b.mlp.fc)
            self.head_gates.append(b.attn.proj)
            self.channel_gates.append(b.mlp.fc)
        return model

    def masks(self) -> list[torch.Tensor]:
        heads = global_masks([g.gate for g in self.head_gates], self.config.keep_frac)
        channels = global_masks([g.gate for g in self.channel_gates], self.config.keep_frac)
        return heads + channels

    @torch.no_grad()
    def after_step(self, ctx):
        if self.ticket is not None:
            return
        lr = ctx.optimizer.param_groups[0]["lr"]
        shrink = lr * self.config.l1
        for g in [*self.head_gates, *self.channel_gates]:  # proximal L1 step (soft threshold)
            g.gate.copy_(g.gate.sign() * (g.gate.abs() - shrink).clamp_min(0.0))
        if ctx.progress() < self.next_check:
            return
        self.next_check = ctx.progress() + self.config.check_every_frac
        masks = self.masks()
        if self.previous is not None:
            self.distances.append(mask_distance(masks, self.previous))
        self.previous = masks
        if len(self.distances) == self.config.window and max(self.distances) < self.config.epsilon:
            self.draw(ctx, masks)

    @torch.no_grad()
    def draw(self, ctx, masks: list[torch.Tensor]) -> None:
        """Fold the gates, remove the masked heads and channels, train the smaller model on."""
        model = ctx.model
        before_flops, before_params = (
            ctx.workload.flops_per_token(model),
            sum(p.numel() for p in model.parameters()),
        )
        n = len(self.head_gates)
        plan = Plan(blocks=list(range(len(model.blocks))))
        for i, block in enumerate(model.blocks):
            b = core(block)
            b.attn.proj = self.head_gates[i].fold()
            b.mlp.fc = self.channel_gates[i].fold()
            plan.heads[i] = masks[i].nonzero().flatten().tolist()
            plan.channels[i] = masks[n + i].nonzero().flatten()
        mapping = prune(model, plan)
        old = ctx.replace_model(model)
        carry_optimizer_state(old, ctx.optimizer, mapping)
        self.ticket = masks
        self.drawn_at_step = ctx.step + 1  # after_step runs before the loop counts this step
        self.head_gates, self.channel_gates = [], []
        ctx.run.extra.update(
            early_bird_step=self.drawn_at_step,
            early_bird_flops_per_token_before=before_flops,
            early_bird_flops_per_token_after=ctx.workload.flops_per_token(model),
            early_bird_params_before=before_params,
            early_bird_params_after=sum(p.numel() for p in model.parameters()),
            early_bird_heads_kept=[int(m.sum()) for m in masks[:n]],
            early_bird_channels_kept=[int(m.sum()) for m in masks[n:]],
        )
