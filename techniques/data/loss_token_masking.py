"""Loss token masking: a random fraction of target positions carries no loss (formerly named
``token_dropping``; the name now says what it does). Related work: Hou et al. 2022, "Token
Dropping for Efficient BERT Pretraining", ACL, and random-LTD, which do remove tokens from the
compute: see ``importance_token_dropping`` and ``random_ltd``.

What it changes: the training batch. A random ``drop_frac`` of target positions per step is set to
IGNORE_INDEX, so those positions carry no loss and no gradient; the input sequence is unchanged.

What it measures, honestly: the data-efficiency effect of learning from fewer loss-bearing tokens
per step. It saves NO compute: the forward and backward still process every position (a training
step costs the same FLOPs with and without it). Any time-to-target difference is from the learning
dynamics alone; tokens are counted as the full batch (all were read and processed).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from benchbed.techniques.base import Technique, register, require_family
from benchbed.workloads import IGNORE_INDEX, Batch


@dataclass(frozen=True)
class LossTokenMaskingConfig:
    drop_frac: float = 0.15

    def check(self) -> None:
        if not 0.0 <= self.drop_frac < 1.0:
            raise ValueError(f"drop_frac: must be in [0, 1), got {self.drop_frac}")


@register
class LossTokenMasking(Technique):
    """Drop a random fraction of positions from the training loss (no compute saved; see docstring)."""

    name = "loss_token_masking"
    category = "data/token_masking"
    paper = "Hou et al. 2022, Token Dropping for Efficient BERT Pretraining (loss-only variant)"
    Config = LossTokenMaskingConfig
    # importance sampling scores whole sequences by their loss
    conflicts = ("grad_norm_sampling",)
    families = ("gpt", "bert")  # per-position token targets

    def __init__(self, config=None):
        super().__init__(config)
        self.generator: torch.Generator | None = None

    def validate(self, cell):
        require_family(self, cell)

    def build_model(self, model, ctx):
        self.generator = torch.Generator(device=ctx.device)
        self.generator.manual_seed(ctx.run.seed + 1)
        return model

    def select_batch(self, batch, ctx):
        keep = torch.rand(batch.targets.shape, generator=self.generator, device=batch.targets.device)
        targets = batch.targets.masked_fill(keep < self.config.drop_frac, IGNORE_INDEX)
        return Batch(batch.inputs, targets, batch.weights)
