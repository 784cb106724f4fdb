"""A decoder-only GPT, readable top to bottom (nanoGPT's shape): pre-norm blocks, PyTorch SDPA
attention, learned absolute positions, tied input/output embeddings.

Techniques change this model from the outside (checkpointing wraps blocks, LoRA swaps linears,
ReZero/Fixup re-initialise residual branches, kernels swap attention and norms, random-LTD runs
blocks on a subset of tokens); the model keeps the seams they need as plain attributes: ``blocks``,
``attn_fn``, ``norm`` modules, the per-branch ``residual_scale`` hooks and ``token_subset``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from benchbed.models.tokens import run_on_subset


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int
    seq_len: int
    n_layer: int
    n_head: int
    d_model: int
    mlp_ratio: int = 4
    dropout: float = 0.0
    bias: bool = False
    attn_width: int | None = None  # n_head x head_dim; None: d_model (wider models keep head_dim)

    @property
    def head_dim(self) -> int:
        return (self.attn_width or self.d_model) // self.n_head


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = True) -> torch.Tensor:
    """q, k, v: [batch, heads, seq, head_dim]. The default attention backend."""
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal)


class CausalSelfAttention(nn.Module):
    """Multi-head attention of ``n_head`` heads of ``head_dim`` each (structured pruning keeps
    head_dim and lowers n_head, so the two are attributes, not derived from the input width)."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.head_dim = cfg.head_dim
        width = self.n_head * self.head_dim
        self.qkv = nn.Linear(cfg.d_model, 3 * width, bias=cfg.bias)
        self.proj = nn.Linear(width, cfg.d_model, bias=cfg.bias)
        # swapped by the flash_attention technique; same signature as sdpa_attention
        self.attn_fn = sdpa_attention

    @property
    def width(self) -> int:
        return self.n_head * self.head_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        W = self.width
        q, k, v = self.qkv(x).split(W, dim=2)
        q, k, v = (t.view(B, T, self.n_head, self.head_dim).transpose(1, 2) for t in (q, k, v))
        y = self.attn_fn(q, k, v, causal=True)
        return self.proj(y.transpose(1, 2).contiguous().view(B, T, W))


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.d_model, cfg.mlp_ratio * cfg.d_model, bias=cfg.bias)
        self.proj = nn.Linear(cfg.mlp_ratio * cfg.d_model, cfg.d_model, bias=cfg.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x)))


class Block(nn.Module):
    """x + attn(norm1(x)); x + mlp(norm2(x)). Norm-free init schemes replace norm1/norm2 by Identity
    and scale each branch through ``attn_scale`` / ``mlp_scale`` (None = no scaling)."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.d_model, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.norm2 = nn.LayerNorm(cfg.d_model, bias=cfg.bias)
        self.mlp = MLP(cfg)
        self.attn_scale: nn.Parameter | None = None
        self.mlp_scale: nn.Parameter | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.attn(self.norm1(x))
        x = x + (a if self.attn_scale is None else self.attn_scale * a)
        m = self.mlp(self.norm2(x))
        return x + (m if self.mlp_scale is None else self.mlp_scale * m)


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.seq_len, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm_f = nn.LayerNorm(cfg.d_model, bias=cfg.bias)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.tok_emb.weight  # weight tying
        # token_subset(layer, x) -> positions [B, K] (sorted, so causality holds among them) that
        # block `layer` runs on in training, or None for all; set by random-LTD
        self.token_subset: Callable[[int, torch.Tensor], torch.Tensor | None] | None = None
        self.apply(self._init_weights)
        # GPT-2: residual projections scaled by 1/sqrt(2 * n_layer)
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def hidden(self, idx: torch.Tensor) -> torch.Tensor:
        """Final hidden states [B, T, d_model] (before the output projection)."""
        T = idx.shape[1]
        if self.cfg.seq_len < T:
            raise ValueError(f"sequence length {T} exceeds the model's {self.cfg.seq_len}")
        pos = torch.arange(T, device=idx.device)
        x = self.tok_emb(idx) + self.pos_emb(pos)
        for i, block in enumerate(self.blocks):
            keep = self.token_subset(i, x) if self.token_subset is not None and self.training else None
            x = run_on_subset(block, x, keep)
        return self.norm_f(x)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Logits [B, T, vocab]."""
        return self.lm_head(self.hidden(idx))

    def num_params(self, non_embedding: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n - self.pos_emb.weight.numel() if non_embedding else n

    def flops_per_token(self) -> float:
        """Training FLOPs per token (forward + backward = 3x forward), PaLM appendix B / nanoGPT:
        6N for the weights plus 12 * L * d * T for attention scores and values, with d the
        attention width of each layer as built (pruned or widened layers count as they are).

        With frozen parameters (fine-tuning) backward does less: a frozen weight needs no weight
        gradient (2 of its 6 FLOPs), and a layer below every trainable parameter needs no input
        gradient either (only its forward, 2), at the granularity of blocks. With everything
        trainable this is exactly the 6N + 12 L d T above."""
        T = self.cfg.seq_len
        attn = [m for m in self.modules() if isinstance(m, CausalSelfAttention)]
        if all(p.requires_grad for p in self.parameters()):
            return 6.0 * self.num_params() + 12.0 * sum(a.width for a in attn) * T
        # forward order: input embeddings, each block, the final norm and the (tied) head
        blocks = list(self.blocks)
        # an input gradient is needed from the first trainable parameter (bottom-up) onwards
        upstream_trainable = self.tok_emb.weight.requires_grad or self.pos_emb.weight.requires_grad
        total = 0.0
        for block in blocks:
            params = list(block.parameters())
            trainable_here = any(p.requires_grad for p in params)
            backward_input = upstream_trainable or trainable_here
            # frozen weights stored quantised (codes, not parameters) count as what they represent
            n = sum(p.numel() for p in params) + sum(getattr(m, "represents", 0) for m in block.modules())
            n_train = sum(p.numel() for p in params if p.requires_grad)
            widths = sum(m.width for m in block.modules() if isinstance(m, CausalSelfAttention))
            total += 2.0 * n + 4.0 * widths * T  # forward
            if backward_input:
                total += 2.0 * n + 8.0 * widths * T  # input gradients through the block
            total += 2.0 * n_train  # weight gradients
            upstream_trainable = backward_input
        for module in (self.norm_f, self.lm_head):
            params = list(module.parameters())
            n = sum(p.numel() for p in params)
            total += 2.0 * n + (2.0 * n if upstream_trainable else 0.0)
            total += 2.0 * sum(p.numel() for p in params if p.requires_grad)
        return total
