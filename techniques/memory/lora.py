"""LoRA, low-rank adaptation (Hu et al. 2022, "LoRA: Low-Rank Adaptation of Large Language Models",
ICLR; arXiv 2021), for fine-tuning a pretrained base.

What it changes: the model and which parameters train. Each targeted linear layer W0 of every
block (attention's ``attn.qkv`` and ``attn.proj`` by default, as in the paper's W_q/W_v/W_o
experiments; ``mlp = true`` adds ``mlp.fc`` and ``mlp.proj``) is frozen and gets a trainable low-rank
update: h = W0 x + (alpha / r) B A x with A (r x k) Kaiming-uniform and B (d x r) zero, so at step 0
the model is exactly the pretrained base (a test checks it). Everything else is frozen, embeddings
and the tied head included, as in the paper: gradients and optimizer state exist only for A and B
(on ft-small's shape about 0.5% of the parameters; a test keeps it under 1%).

For evaluation the update is merged, W = W0 + (alpha / r) B A, as the paper deploys it: evaluation
runs one matmul per layer, like the base. ``base_bits = 8 | 4`` stores the frozen W0 quantised
(QLoRA, Dettmers et al. 2023: 4-bit NormalFloat in blocks of 64 with an absmax scale each, or
int8 with one absmax scale per row) and dequantises it in every forward; the memory of the frozen
weights shrinks 4x / 8x (minus the scales), and the step pays for the dequantisation.

LoRA only means something on a pretrained base: it refuses workloads that train from scratch
(frozen random weights would be measured, not fine-tuning).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from benchbed.techniques.base import Technique, TechniqueError, register
from benchbed.techniques.compute._finetune import require_gpt

TARGETS = ("attn.qkv", "attn.proj", "mlp.fc", "mlp.proj")
#: QLoRA's 4-bit NormalFloat code book (Dettmers et al. 2023, appendix E)
NF4 = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
    0.7229568362236023, 1.0,
)  # fmt: skip
NF4_BLOCK = 64


class QuantizedWeight(nn.Module):
    """A frozen weight stored in 8 bits (absmax per row) or 4-bit NF4 (absmax per block of 64,
    two codes per byte); `dequantize()` gives it back in float32."""

    def __init__(self, weight: torch.Tensor, bits: int):
        super().__init__()
        self.bits, self.shape = bits, tuple(weight.shape)
        self.represents = weight.numel()  # the weights it stands for (the GPT's FLOPs count them)
        w = weight.detach().float()
        if bits == 8:
            scale = w.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / 127.0
            self.register_buffer("codes", torch.round(w / scale).to(torch.int8))
            self.register_buffer("scale", scale)
            return
        flat = w.flatten()
        pad = (-flat.numel()) % NF4_BLOCK
        blocks = F.pad(flat, (0, pad)).view(-1, NF4_BLOCK)
        scale = blocks.abs().amax(dim=1, keepdim=True).clamp_min(1e-12)
        table = torch.tensor(NF4, device=w.device)
        idx = (blocks / scale).unsqueeze(-1).sub(table).abs().argmin(dim=-1).to(torch.uint8).flatten()
        if idx.numel() % 2:
            idx = F.pad(idx, (0, 1))
        self.register_buffer("codes", idx[0::2] | (idx[1::2] << 4))
        self.register_buffer("scale", scale)
        self.register_buffer("table", table)

    def dequantize(self) -> torch.Tensor:
        if self.bits == 8:
            return self.codes.float() * self.scale
        idx = torch.stack([self.codes & 0xF, self.codes >> 4], dim=1).flatten().long()
        n = math.prod(self.shape)
        values = self.table[idx][: self.scale.numel() * NF4_BLOCK].view(-1, NF4_BLOCK) * self.scale
        return values.flatten()[:n].view(self.shape)


class LoRALinear(nn.Module):
    """A frozen linear layer plus the trainable update (alpha / r) B A; merged in eval mode."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, base_bits: int = 0):
        super().__init__()
        self.in_features, self.out_features = base.in_features, base.out_features
        device = base.weight.device
        if base_bits:
            self.base = None
            self.quantized = QuantizedWeight(base.weight, base_bits)
            self.bias = (
                None if base.bias is None else nn.Parameter(base.bias.detach().clone(), requires_grad=False)
            )
        else:
            self.base = base
            self.base.weight.requires_grad_(False)
            if self.base.bias is not None:
                self.base.bias.requires_grad_(False)
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features, device=device))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank, device=device))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))  # as the reference loralib
        self.scaling = alpha / rank
        self._merged: torch.Tensor | None = None

    def frozen_weight(self) -> torch.Tensor:
        return self.base.weight if self.base is not None else self.quantized.dequantize()

    @property
    def weight(self) -> torch.Tensor:
        return self.frozen_weight()

    def frozen_bias(self) -> torch.Tensor | None:
        return self.base.bias if self.base is not None else self.bias

    @torch.no_grad()
    def merged_weight(self) -> torch.Tensor:
        """W0 + (alpha / r) B A: what evaluation multiplies by."""
        w = self.frozen_weight()
        return w + (self.lora_b @ self.lora_a).to(w.dtype) * self.scaling

    def train(self, mode: bool = True):
        self._merged = None if mode else self.merged_weight()  # merge for evaluation, unmerge after
        return super().train(mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training and self._merged is not None:
            return F.linear(x, self._merged, self.frozen_bias())
        base = F.linear(x, self.frozen_weight(), self.frozen_bias())
        return base + (x @ self.lora_a.t() @ self.lora_b.t()) * self.scaling


@dataclass(frozen=True)
class LoRAConfig:
    rank: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] = ("attn.qkv", "attn.proj")  # of every block; mlp.fc, mlp.proj optional
    mlp: bool = False  # also adapt the MLP's projections (adds mlp.fc and mlp.proj to the targets)
    train_embeddings: bool = False  # the paper freezes them (and so the tied head)
    base_bits: int = 0  # 0: the frozen base in full precision; 8 or 4 (NF4): QLoRA-style

    def check(self) -> None:
        if self.rank < 1:
            raise ValueError(f"rank: must be >= 1, got {self.rank}")
        if self.alpha <= 0:
            raise ValueError(f"alpha: must be positive, got {self.alpha}")
        unknown = set(self.targets) - set(TARGETS)
        if unknown or not self.targets or len(set(self.targets)) != len(self.targets):
            raise ValueError(f"targets: a non-empty list of {', '.join(TARGETS)}, got {list(self.targets)}")
        if self.base_bits not in (0, 4, 8):
            raise ValueError(f"base_bits: 0 (full precision), 8 or 4, got {self.base_bits}")


def _core(block: nn.Module) -> nn.Module:
    return block.block if hasattr(block, "block") else block


@register
class LoRA(Technique):
    """LoRA: a frozen pretrained base plus trainable low-rank updates, merged for evaluation."""

    name = "lora"
    category = "memory/parameter_efficient"
    paper = "Hu et al. 2022, LoRA: Low-Rank Adaptation of Large Language Models"
    Config = LoRAConfig
    conflicts = ("full_finetune", "frozen_base", "from_scratch")
    families = ("gpt",)

    def validate(self, cell):
        require_gpt(self.name, cell, pretrained=True)
        if any(n in cell.get("techniques", ()) for n in ("snip", "early_bird")):
            raise TechniqueError("techniques: lora freezes the base weights that snip/early_bird would prune")

    def build_model(self, model, ctx):
        c = self.config
        for p in model.parameters():
            p.requires_grad_(False)
        if c.train_embeddings:
            model.tok_emb.weight.requires_grad_(True)  # also the tied output head
            model.pos_emb.weight.requires_grad_(True)
        targets = list(c.targets) + [t for t in ("mlp.fc", "mlp.proj") if c.mlp and t not in c.targets]
        for block in model.blocks:
            core = _core(block)
            for target in targets:
                owner_name, layer_name = target.split(".")
                owner = getattr(core, owner_name)
                setattr(
                    owner, layer_name, LoRALinear(getattr(owner, layer_name), c.rank, c.alpha, c.base_bits)
                )
        return model
