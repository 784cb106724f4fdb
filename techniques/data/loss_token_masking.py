"""Token dropping from the loss (random token masking of the training objective; cf. Hou et al.
2022, "Token Dropping for Efficient BERT Pretraining", ACL, and the random-LTD line of work).

What it changes: the training batch. A random ``drop_frac`` of target positions per step is set to
IGNORE_INDEX, so those positions carry no loss and no gradient; the input sequence is unchanged.

What it measures, honestly: the data-efficiency effect of learning from fewer loss-bearing tokens
per step. It does NOT save compute here: the forward and backward still process every position
(Hou et al. save compute by routing dropped tokens around the middle layers, which needs a
bidirectional encoder; in a causal LM with learned positions, cutting positions out of the sequence
would change every remaining token's context). Any time-to-target difference is therefore from the
learning dynamics alone; tokens are counted as the full batch (all were read and processed).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from benchbed.techniques.base import Technique, register
from benchbed.workloads import IGNORE_INDEX, Batch


@dataclass(frozen=True)
class TokenDroppingConfig:
    drop_frac: float = 0.15

    def check(self) -> None:
        if not 0.0 <= self.drop_frac < 1.0:
            raise ValueError(f"drop_frac: must be in [0, 1), got {self.drop_frac}")


@register
class TokenDropping(Technique):
    """Drop a random fraction of positions from the training loss (no compute saved; see docstring)."""

    name = "token_dropping"
    category = "data/token_masking"
    paper = "Hou et al. 2022, Token Dropping for Efficient BERT Pretraining"
    Config = TokenDroppingConfig

    def __init__(self, config=None):
        super().__init__(config)
        self.generator: torch.Generator | None = None

    def build_model(self, model, ctx):
        self.generator = torch.Generator(device=ctx.device)
        self.generator.manual_seed(ctx.run.seed + 1)
        return model

    def select_batch(self, batch, ctx):
        keep = torch.rand(batch.targets.shape, generator=self.generator, device=batch.targets.device)
        targets = batch.targets.masked_fill(keep < self.config.drop_frac, IGNORE_INDEX)
        return Batch(batch.inputs, targets, batch.weights)
