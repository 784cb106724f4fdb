"""The unit a training step consumes: inputs, targets and optional per-sequence loss weights."""

from __future__ import annotations

from dataclasses import dataclass

import torch

IGNORE_INDEX = -100  # a target position that carries no loss (F.cross_entropy's default)


@dataclass
class Batch:
    inputs: torch.Tensor  # [B, T] int64 for language models; [B, ...] for other workloads
    targets: torch.Tensor  # [B, T] int64; IGNORE_INDEX positions carry no loss
    weights: torch.Tensor | None = None  # optional per-sequence loss weights [B] (importance sampling)

    @property
    def n_tokens(self) -> int:
        """Tokens the budget counts: one per target position (B * T for a language model)."""
        return self.targets.numel()

    def to(self, device: torch.device) -> Batch:
        w = None if self.weights is None else self.weights.to(device, non_blocking=True)
        return Batch(self.inputs.to(device, non_blocking=True), self.targets.to(device, non_blocking=True), w)
