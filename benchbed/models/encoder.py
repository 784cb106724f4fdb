"""A bidirectional transformer encoder for masked-language modelling (BERT's objective, the pre-norm
block of the GPT in gpt.py without the causal mask), readable top to bottom.

The blocks here are also the ViT's (vit.py) and the MAE decoder's: ``EncoderBlock`` takes its sizes
as arguments. An attention can take a ``context``: queries from ``x``, keys and values from
``context``. That is what Hou et al. 2022's token dropping needs at the first dropping layer,
where the kept tokens still attend to every token.

Token dropping (Hou et al. 2022, as their reference encoder lays it out for 12 layers): in training,
when ``select_tokens`` is set, it returns the positions to keep, [B, K]. All tokens run through the
first ``L/2 - 1`` blocks; block ``L/2 - 1`` runs on the kept tokens attending to all tokens; the
blocks up to the last run on the kept tokens only; the dropped tokens rejoin, with the value they
had when they left, for the last block. Evaluation always runs the full sequence.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from benchbed.models.tokens import gather_tokens, scatter_tokens


@dataclass(frozen=True)
class EncoderConfig:
    vocab_size: int  # including the [MASK] token
    seq_len: int
    n_layer: int
    n_head: int
    d_model: int
    mlp_ratio: int = 4
    bias: bool = False


def sdpa_bidirectional(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """q [B, H, Tq, dh], k and v [B, H, Tk, dh]: every query attends to every key."""
    return F.scaled_dot_product_attention(q, k, v)


class Attention(nn.Module):
    def __init__(self, d_model: int, n_head: int, bias: bool = False):
        super().__init__()
        self.n_head = n_head
        self.q = nn.Linear(d_model, d_model, bias=bias)
        self.kv = nn.Linear(d_model, 2 * d_model, bias=bias)
        self.proj = nn.Linear(d_model, d_model, bias=bias)
        self.attn_fn = sdpa_bidirectional

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        B, Tq, C = x.shape
        Tk, h = context.shape[1], self.n_head
        q = self.q(x).view(B, Tq, h, C // h).transpose(1, 2)
        k, v = (t.view(B, Tk, h, C // h).transpose(1, 2) for t in self.kv(context).split(C, dim=2))
        y = self.attn_fn(q, k, v)
        return self.proj(y.transpose(1, 2).contiguous().view(B, Tq, C))


class MLP(nn.Module):
    def __init__(self, d_model: int, mlp_ratio: int, bias: bool = False):
        super().__init__()
        self.fc = nn.Linear(d_model, mlp_ratio * d_model, bias=bias)
        self.proj = nn.Linear(mlp_ratio * d_model, d_model, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x)))


class EncoderBlock(nn.Module):
    """x + attn(norm1(x), norm1(context)); x + mlp(norm2(x))."""

    def __init__(self, d_model: int, n_head: int, mlp_ratio: int = 4, bias: bool = False):
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model, bias=bias)
        self.attn = Attention(d_model, n_head, bias)
        self.norm2 = nn.LayerNorm(d_model, bias=bias)
        self.mlp = MLP(d_model, mlp_ratio, bias)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, None if context is None else self.norm1(context))
        return x + self.mlp(self.norm2(x))


def init_weights(module: nn.Module) -> None:
    """N(0, 0.02) for linear and embedding weights, zero biases (BERT's and GPT-2's scheme)."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)


class Encoder(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.seq_len, cfg.d_model)
        self.blocks = nn.ModuleList(
            EncoderBlock(cfg.d_model, cfg.n_head, cfg.mlp_ratio, cfg.bias) for _ in range(cfg.n_layer)
        )
        self.norm_f = nn.LayerNorm(cfg.d_model, bias=cfg.bias)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.tok_emb.weight  # weight tying, as BERT's output embedding
        self.apply(init_weights)
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))
        # select_tokens(input ids [B, T]) -> positions [B, K] the middle blocks keep, in training;
        # set by the importance_token_dropping technique
        self.select_tokens: Callable[[torch.Tensor], torch.Tensor] | None = None

    def drop_layers(self) -> tuple[int, int]:
        """(first, last): block `first` is the first on the kept tokens (attending to all), block
        `last` the first with every token again (Hou et al.: L/2 - 1 and L - 1)."""
        n = len(self.blocks)
        if n < 2:
            raise ValueError(
                f"token dropping needs at least 2 blocks (one dropping, the last whole), got {n}"
            )
        return max(0, n // 2 - 1), n - 1

    def hidden(self, idx: torch.Tensor) -> torch.Tensor:
        T = idx.shape[1]
        if self.cfg.seq_len < T:
            raise ValueError(f"sequence length {T} exceeds the model's {self.cfg.seq_len}")
        x = self.tok_emb(idx) + self.pos_emb(torch.arange(T, device=idx.device))
        keep = self.select_tokens(idx) if self.select_tokens is not None and self.training else None
        if keep is None:
            for block in self.blocks:
                x = block(x)
            return self.norm_f(x)
        first, last = self.drop_layers()
        for block in self.blocks[:first]:
            x = block(x)
        kept = self.blocks[first](gather_tokens(x, keep), context=x)
        for block in self.blocks[first + 1 : last]:
            kept = block(kept)
        x = scatter_tokens(x, keep, kept)
        for block in self.blocks[last:]:
            x = block(x)
        return self.norm_f(x)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Logits [B, T, vocab]."""
        return self.lm_head(self.hidden(idx))

    def num_params(self, non_embedding: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n - self.pos_emb.weight.numel() if non_embedding else n

    def flops_per_token(self) -> float:
        """Training FLOPs per token without dropping: 6N for the weights plus 12 * L * d * T for
        attention scores and values (every query attends to all T keys)."""
        cfg = self.cfg
        return 6.0 * self.num_params() + 12.0 * cfg.n_layer * cfg.d_model * cfg.seq_len
