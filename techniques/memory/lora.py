"""LoRA, low-rank adaptation (Hu et al. 2022, "LoRA: Low-Rank Adaptation of Large Language Models",
ICLR; arXiv 2021).

What it changes: the model and which parameters train. Each targeted linear layer W0 (attention's
``qkv`` and ``proj`` by default, as in the paper's W_q/W_v/W_o experiments) is frozen and gets a
trainable low-rank update: h = W0 x + (alpha / r) * B A x with A (r x k) Kaiming-uniform and B
(d x r) zero, so the network at initialisation is unchanged. Gradients and optimizer state exist
only for A and B (the memory saving the paper reports), plus whatever stays trainable.

Every other weight is frozen too, as in the paper, except the token/position embeddings when
``train_embeddings`` (the default): this benchmark trains from a random initialisation, not from a
pretrained checkpoint, and with frozen random embeddings the model cannot learn the vocabulary.
Say ``train_embeddings = false`` for the paper's fully frozen base.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from benchbed.techniques.base import Technique, TechniqueError, register, require_family


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.base = base
        self.base.weight.requires_grad_(False)
        if self.base.bias is not None:
            self.base.bias.requires_grad_(False)
        device = base.weight.device
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features, device=device))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank, device=device))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))  # as the reference loralib
        self.scaling = alpha / rank

    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.lora_a.t() @ self.lora_b.t()) * self.scaling


@dataclass(frozen=True)
class LoRAConfig:
    rank: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] = ("qkv", "proj")  # attention's linears (attn.qkv, attn.proj)
    train_embeddings: bool = True

    def check(self) -> None:
        if self.rank < 1:
            raise ValueError(f"rank: must be >= 1, got {self.rank}")
        if self.alpha <= 0:
            raise ValueError(f"alpha: must be positive, got {self.alpha}")
        unknown = set(self.targets) - {"qkv", "proj"}
        if unknown or not self.targets:
            raise ValueError(f"targets: a non-empty list of 'qkv', 'proj', got {list(self.targets)}")


@register
class LoRA(Technique):
    """LoRA: frozen base weights plus trainable low-rank updates in attention."""

    name = "lora"
    category = "memory/parameter_efficient"
    paper = "Hu et al. 2022, LoRA: Low-Rank Adaptation of Large Language Models"
    Config = LoRAConfig
    families = ("gpt",)

    def validate(self, cell):
        require_family(self, cell)
        if any(n in cell.get("techniques", ()) for n in ("snip", "early_bird")):
            raise TechniqueError("techniques: lora freezes the base weights that snip/early_bird would prune")

    def build_model(self, model, ctx):
        c = self.config
        for p in model.parameters():
            p.requires_grad_(False)
        if c.train_embeddings:
            model.tok_emb.weight.requires_grad_(True)  # also the tied output head
            model.pos_emb.weight.requires_grad_(True)
        for block in model.blocks:
            attn = block.block.attn if hasattr(block, "block") else block.attn
            for target in c.targets:
                setattr(attn, target, LoRALinear(getattr(attn, target), c.rank, c.alpha))
        return model
