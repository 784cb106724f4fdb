"""A Vision Transformer classifier (Dosovitskiy et al. 2021), readable top to bottom: non-overlapping
patches, a linear patch embedding, learned absolute position embeddings, the pre-norm bidirectional
blocks of encoder.py, a final LayerNorm, global average pooling and a linear head (no class token:
MAE's fine-tuning and ConViT's local layers both work on the patch grid alone).

Techniques change it from the outside through plain attributes: ``blocks`` (ConViT swaps the first
blocks' ``attn`` for gated positional self-attention), and the split of ``forward`` into
``patchify`` -> ``embed_patches`` -> ``encode`` -> ``classify`` (MAE runs ``encode`` on the visible
patches only).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from benchbed.models.encoder import EncoderBlock, init_weights


@dataclass(frozen=True)
class ViTConfig:
    image_size: int  # square images, image_size x image_size pixels
    patch_size: int
    channels: int
    n_classes: int
    n_layer: int
    n_head: int
    d_model: int
    mlp_ratio: int = 4
    bias: bool = True

    @property
    def grid(self) -> int:
        """Patches per side."""
        return self.image_size // self.patch_size

    @property
    def n_patches(self) -> int:
        return self.grid * self.grid

    @property
    def patch_dim(self) -> int:
        return self.patch_size * self.patch_size * self.channels


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """[B, C, H, W] -> [B, N, p*p*C], patches in row-major order (patch n sits at row n // grid,
    column n % grid), each patch's pixels row-major with channels last."""
    B, C, H, W = images.shape
    g, p = H // patch_size, patch_size
    x = images.reshape(B, C, g, p, g, p).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(B, g * g, p * p * C)


class ViT(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        if cfg.image_size % cfg.patch_size:
            raise ValueError(f"image_size {cfg.image_size} is not a multiple of patch_size {cfg.patch_size}")
        self.cfg = cfg
        self.patch_embed = nn.Linear(cfg.patch_dim, cfg.d_model)
        self.pos_emb = nn.Parameter(torch.zeros(1, cfg.n_patches, cfg.d_model))
        self.blocks = nn.ModuleList(
            EncoderBlock(cfg.d_model, cfg.n_head, cfg.mlp_ratio, cfg.bias) for _ in range(cfg.n_layer)
        )
        self.norm = nn.LayerNorm(cfg.d_model, bias=cfg.bias)
        self.head = nn.Linear(cfg.d_model, cfg.n_classes)
        self.apply(init_weights)
        nn.init.normal_(self.pos_emb, std=0.02)

    def patchify(self, images: torch.Tensor) -> torch.Tensor:
        return patchify(images, self.cfg.patch_size)

    def embed_patches(self, patches: torch.Tensor) -> torch.Tensor:
        """[B, N, p*p*C] -> tokens with their positions, [B, N, d]."""
        return self.patch_embed(patches) + self.pos_emb

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        """The blocks and the final norm on whatever tokens are given, [B, n, d]."""
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens)

    def classify(self, encoded: torch.Tensor) -> torch.Tensor:
        return self.head(encoded.mean(dim=1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits [B, n_classes]."""
        return self.classify(self.encode(self.embed_patches(self.patchify(images))))

    def num_params(self) -> int:
        """Parameters of the classifier's path (patch embedding, blocks, norm, head; not the position
        table, nor modules a technique attached, like MAE's decoder)."""
        path = (self.patch_embed, self.blocks, self.norm, self.head)
        return sum(p.numel() for m in path for p in m.parameters())

    def flops_per_image(self) -> float:
        """Training FLOPs per image: 6N per patch for the weights (the head runs once per image but
        is counted per patch, < 1% here) plus 12 * L * d * N per patch for attention scores and
        values."""
        cfg = self.cfg
        n = cfg.n_patches
        return n * (6.0 * self.num_params() + 12.0 * cfg.n_layer * cfg.d_model * n)
