"""ConViT: gated positional self-attention with a convolutional initialisation (d'Ascoli et al. 2021,
"ConViT: Improving Vision Transformers with Soft Convolutional Inductive Biases", ICML).

What it changes: the attention of the first ``local_layers`` blocks of a ViT (the paper: 10 of 12;
the default here keeps the same last two plain, so 2 of vit-tiny's 4) becomes GPSA. Each head h
mixes content attention and positional attention with a learned gate (eq. 4-5):

    A_h = (1 - sigmoid(lambda_h)) softmax(Q K^T / sqrt(d_h)) + sigmoid(lambda_h) softmax(v_pos_h . r_ij)

with r_ij = (||delta||^2, delta_x, delta_y) the relative position of key j from query i on the
patch grid, each row renormalised to sum to one. The locality initialisation sets
v_pos_h = -alpha (1, -2 Delta_h,x, -2 Delta_h,y), so v_pos_h . r_ij = -alpha ||delta - Delta_h||^2
+ const: head h attends to a Gaussian around the patch at offset Delta_h from the query, the
offsets of the heads tiling a sqrt(H) x sqrt(H) square around it (a convolution's receptive field;
heads beyond the square's count start uniform). ``locality_strength`` is alpha (the paper's 1),
lambda_h starts at 1 (sigmoid(1) = 0.73 of each row positional), and the value projection starts
at the identity (the reference code's local initialisation).

What the measurement shows: sample efficiency from the soft convolutional bias, on the same budget
of images as the plain ViT. GPSA adds a few parameters per head and one extra softmax per layer.
The class token of the paper joins after the GPSA layers; the ViT here pools patches instead and
has none.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from benchbed.techniques.base import Technique, TechniqueError, register, require_family
from benchbed.workloads import WORKLOADS


def relative_positions(grid: int) -> torch.Tensor:
    """r_ij = (||delta||^2, delta_x, delta_y) with delta = position of key j - position of query i
    on a grid x grid patch grid (patch n at row n // grid, column n % grid): [N, N, 3]."""
    rows = torch.arange(grid).repeat_interleave(grid)
    cols = torch.arange(grid).repeat(grid)
    dx = (cols.view(1, -1) - cols.view(-1, 1)).float()
    dy = (rows.view(1, -1) - rows.view(-1, 1)).float()
    return torch.stack([dx * dx + dy * dy, dx, dy], dim=-1)


def head_offsets(n_head: int) -> torch.Tensor:
    """Delta_h = (x, y) for each head: the first k*k heads (k = floor(sqrt(H))) tile a k x k square
    centred on the query; the others have none (NaN) and start with uniform positional attention."""
    k = int(math.isqrt(n_head))
    centre = (k - 1) / 2
    offsets = torch.full((n_head, 2), float("nan"))
    for h in range(k * k):
        offsets[h] = torch.tensor([h % k - centre, h // k - centre])
    return offsets


class GPSA(nn.Module):
    """Gated positional self-attention over a square patch grid (a drop-in for a block's ``attn``)."""

    def __init__(self, d_model: int, n_head: int, grid: int, locality_strength: float = 1.0):
        super().__init__()
        self.n_head = n_head
        self.qk = nn.Linear(d_model, 2 * d_model, bias=False)
        self.v = nn.Linear(d_model, d_model, bias=False)
        self.proj = nn.Linear(d_model, d_model)
        self.pos_proj = nn.Linear(3, n_head)  # row h is v_pos_h; its bias is constant along a row
        self.gating = nn.Parameter(torch.ones(n_head))  # lambda_h
        self.register_buffer("rel", relative_positions(grid), persistent=False)
        for linear in (self.qk, self.v, self.proj, self.pos_proj):
            nn.init.normal_(linear.weight, std=0.02)
        nn.init.zeros_(self.proj.bias)
        self.offsets = head_offsets(n_head)
        self.local_init(locality_strength)

    @torch.no_grad()
    def local_init(self, alpha: float) -> None:
        self.v.weight.copy_(torch.eye(self.v.weight.shape[0]))
        self.pos_proj.bias.zero_()
        weight = torch.zeros(self.n_head, 3)
        for h, (ox, oy) in enumerate(self.offsets.tolist()):
            if not math.isnan(ox):
                weight[h] = -alpha * torch.tensor([1.0, -2.0 * ox, -2.0 * oy])
        self.pos_proj.weight.copy_(weight)

    def positional_attention(self) -> torch.Tensor:
        """softmax_j(v_pos_h . r_ij), [H, N, N]."""
        return self.pos_proj(self.rel).permute(2, 0, 1).softmax(dim=-1)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        h = self.n_head
        q, k = (t.view(B, N, h, C // h).transpose(1, 2) for t in self.qk(x).split(C, dim=2))
        content = (q @ k.transpose(-2, -1) * (C // h) ** -0.5).softmax(dim=-1)
        gate = torch.sigmoid(self.gating).view(1, -1, 1, 1)
        attn = (1.0 - gate) * content + gate * self.positional_attention().to(content.dtype)
        return attn / attn.sum(dim=-1, keepdim=True)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        if context is not None:
            raise ValueError("GPSA attends within the patch grid; it takes no context")
        B, N, C = x.shape
        v = self.v(x).view(B, N, self.n_head, C // self.n_head).transpose(1, 2)
        y = (self.attention(x) @ v).transpose(1, 2).reshape(B, N, C)
        return self.proj(y)


@dataclass(frozen=True)
class ConViTConfig:
    local_layers: int = -2  # blocks that get GPSA: a count, or negative = all but that many last ones
    locality_strength: float = 1.0  # alpha

    def check(self) -> None:
        if self.local_layers == 0:
            raise ValueError("local_layers: 0 would leave the ViT unchanged")
        if self.locality_strength < 0:
            raise ValueError(f"locality_strength: must be >= 0, got {self.locality_strength}")

    def count(self, n_layer: int) -> int:
        return self.local_layers if self.local_layers > 0 else n_layer + self.local_layers


@register
class ConViT(Technique):
    """ConViT: the first ViT blocks use gated positional self-attention initialised as a convolution."""

    name = "convit"
    category = "compute/initialization"
    paper = (
        "d'Ascoli et al. 2021, ConViT: Improving Vision Transformers with Soft Convolutional Inductive Biases"
    )
    Config = ConViTConfig
    families = ("vit",)
    conflicts = ("patch_masking",)  # GPSA needs the whole patch grid; MAE's encoder sees a subset

    def validate(self, cell):
        require_family(self, cell)
        workload = WORKLOADS.get(cell.get("workload", ""))
        if workload is not None:
            n = self.config.count(workload.model.n_layer)
            if not 1 <= n <= workload.model.n_layer:
                raise TechniqueError(
                    f"techniques.convit.local_layers: {self.config.local_layers} leaves {n} GPSA blocks of "
                    f"'{workload.name}''s {workload.model.n_layer}"
                )

    def build_model(self, model, ctx):
        cfg, c = model.cfg, self.config
        n = c.count(len(model.blocks))
        for block in list(model.blocks)[:n]:
            block.attn = GPSA(cfg.d_model, cfg.n_head, cfg.grid, c.locality_strength).to(ctx.device)
        ctx.run.extra["convit_gpsa_blocks"] = n
        return model
