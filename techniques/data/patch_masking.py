"""Patch masking: masked-autoencoder pre-training, then classification (He et al. 2022, "Masked
Autoencoders Are Scalable Vision Learners", CVPR).

What it changes: the whole training pipeline of a ViT workload, on one clock and one budget. For
the first ``pretrain_frac`` of the budget each step is MAE pre-training on the step's images (their
labels unused): every image's patches are shuffled at random, only the first
``(1 - mask_ratio) * N`` (the visible ones) are embedded, given their position embeddings and run
through the encoder, so the encoder's tensors hold the visible patches only; a light decoder
(``decoder_depth`` blocks of ``decoder_width``) gets the encoded visible patches back in place,
a shared learned mask token at every masked position and its own position embeddings, and predicts
every patch's pixels; the loss is the mean squared error on the masked patches, against
per-patch-normalised pixels (``norm_pix_loss``, the paper's better setting). Then, for the rest of
the budget, the model is trained on the labels: fine-tuned whole (``finetune = "full"``) or as a
linear probe of the frozen encoder (``"linear"``). Each phase has its own warm-up and cosine decay
over its share of the budget (the paper's two schedules, compressed), and the labelled phase starts from a fresh optimizer
state, as the paper's separate fine-tuning run does.

What the measurement shows: time-to-target of the whole pipeline, pre-training included, against
supervised training from scratch on the same number of images. The pre-training steps are cheap
(the encoder sees a quarter of the patches at the default ratio) but do not train the classifier;
evaluations during pre-training score the still-untrained head. The decoder is part of the model
(its parameters count in ``params`` and the optimizer state) and gets no gradient after the switch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from benchbed.models.encoder import EncoderBlock, init_weights
from benchbed.models.tokens import gather_tokens, scatter_tokens
from benchbed.models.vit import ViTConfig
from benchbed.techniques.base import Technique, register, require_family


class MAEDecoder(nn.Module):
    """The light decoder: encoded visible patches back in place, mask tokens elsewhere, pixels out."""

    def __init__(self, cfg: ViTConfig, width: int, depth: int, n_head: int):
        super().__init__()
        self.embed = nn.Linear(cfg.d_model, width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_emb = nn.Parameter(torch.zeros(1, cfg.n_patches, width))
        self.blocks = nn.ModuleList(EncoderBlock(width, n_head, cfg.mlp_ratio, True) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.pred = nn.Linear(width, cfg.patch_dim)
        self.apply(init_weights)
        nn.init.normal_(self.mask_token, std=0.02)
        nn.init.normal_(self.pos_emb, std=0.02)

    def forward(self, encoded: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """encoded [B, n_visible, d] at positions keep [B, n_visible] -> pixels [B, N, p*p*C]."""
        B, N = encoded.shape[0], self.pos_emb.shape[1]
        tokens = self.mask_token.expand(B, N, -1)
        x = scatter_tokens(tokens, keep, self.embed(encoded)) + self.pos_emb
        for block in self.blocks:
            x = block(x)
        return self.pred(self.norm(x))


def warmup_cosine(progress: float, warmup: float) -> float:
    """The loop's schedule shape (linear warm-up, cosine to zero) over one phase, progress in [0, 1]."""
    if warmup > 0 and progress < warmup:
        return (progress + 1e-3) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (progress - warmup) / max(1e-9, 1.0 - warmup))))


@dataclass(frozen=True)
class PatchMaskingConfig:
    mask_ratio: float = 0.75  # the paper's default
    pretrain_frac: float = 0.5  # share of the budget spent pre-training
    decoder_depth: int = 1  # the paper shows one block is enough for fine-tuning
    decoder_width: int = 0  # 0: half the encoder's width
    norm_pix_loss: bool = True
    finetune: Literal["full", "linear"] = "full"

    def check(self) -> None:
        if not 0.0 < self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio: must be in (0, 1), got {self.mask_ratio}")
        if not 0.0 < self.pretrain_frac < 1.0:
            raise ValueError(f"pretrain_frac: must be in (0, 1), got {self.pretrain_frac}")
        if self.decoder_depth < 1 or self.decoder_width < 0:
            raise ValueError("decoder_depth: must be >= 1 and decoder_width >= 0 (0 = half the encoder's)")
        if self.finetune not in ("full", "linear"):
            raise ValueError(f"finetune: 'full' or 'linear', got {self.finetune!r}")


@register
class PatchMasking(Technique):
    """MAE: pre-train the ViT encoder on the visible patches only (75% masked), then fine-tune to the labels."""

    name = "patch_masking"
    category = "data/token_masking"
    paper = "He et al. 2022, Masked Autoencoders Are Scalable Vision Learners"
    Config = PatchMaskingConfig
    families = ("vit",)
    conflicts = ("grad_norm_sampling",)  # both replace the training loss

    def __init__(self, config=None):
        super().__init__(config)
        self.decoder: MAEDecoder | None = None
        self.generator: torch.Generator | None = None
        self.classification_loss = None
        self.pretraining = True
        self.n_visible = 0

    def validate(self, cell):
        require_family(self, cell)

    def build_model(self, model, ctx):
        cfg: ViTConfig = model.cfg
        c = self.config
        width = c.decoder_width or max(cfg.n_head, cfg.d_model // 2)
        heads = math.gcd(width, cfg.n_head)
        self.decoder = MAEDecoder(cfg, width, c.decoder_depth, heads).to(ctx.device)
        model.mae_decoder = self.decoder  # a submodule: in the optimizer, the row's params, the state
        self.n_visible = max(1, round(cfg.n_patches * (1.0 - c.mask_ratio)))
        self.generator = torch.Generator(device=ctx.device)
        self.generator.manual_seed(ctx.run.seed + 6)
        self.classification_loss = ctx.loss_fn
        ctx.run.extra["mae_visible_patches"] = f"{self.n_visible} of {cfg.n_patches}"
        return model

    def visible(self, batch_size: int, n_patches: int, device: torch.device) -> torch.Tensor:
        """A random subset of n_visible patch positions per image, [B, n_visible], in order."""
        noise = torch.rand(batch_size, n_patches, generator=self.generator, device=device)
        return noise.argsort(dim=1)[:, : self.n_visible].sort(dim=1).values

    def mae_loss(self, model, batch) -> torch.Tensor:
        patches = model.patchify(batch.inputs)  # [B, N, P]
        B, N, _ = patches.shape
        keep = self.visible(B, N, patches.device)
        pos = gather_tokens(model.pos_emb.expand(B, -1, -1), keep)
        encoded = model.encode(model.patch_embed(gather_tokens(patches, keep)) + pos)
        pred = self.decoder(encoded, keep).float()
        target = patches.float()
        if self.config.norm_pix_loss:
            mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
            target = (target - mean) / (var + 1e-6).sqrt()
        per_patch = ((pred - target) ** 2).mean(-1)
        masked = torch.ones(B, N, device=patches.device).scatter(1, keep, 0.0)
        return (per_patch * masked).sum() / masked.sum()

    def switch_to_labels(self, ctx) -> None:
        """Start the labelled phase as the paper's fine-tuning starts: a fresh optimizer state (the
        pre-training's second moments would otherwise shrink the first fine-tuning steps for about
        1 / (1 - beta2) steps), and for a linear probe a frozen encoder."""
        self.pretraining = False
        ctx.run.extra["mae_switch_step"] = ctx.step
        state = getattr(ctx.optimizer, "state", None)
        if isinstance(state, dict):
            state.clear()  # torch optimizers build it again, zeroed, at their next step
        if self.config.finetune == "linear":
            model = ctx.model
            for p in model.parameters():
                p.requires_grad_(False)
            for p in model.head.parameters():
                p.requires_grad_(True)

    def train_step(self, ctx, batch, step, inner):
        split = self.config.pretrain_frac
        progress = ctx.progress()
        if self.pretraining and progress >= split:
            self.switch_to_labels(ctx)
        start, end = (0.0, split) if self.pretraining else (split, 1.0)
        factor = warmup_cosine((progress - start) / (end - start), ctx.run.warmup_frac)
        for group in ctx.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor
        ctx.loss_fn = self.mae_loss if self.pretraining else self.classification_loss
        return inner(batch)
