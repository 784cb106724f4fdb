"""Random and layerwise token dropping, random-LTD (Yao et al. 2022, "Random-LTD: Random and
Layerwise Token Dropping Brings Efficient Training for Large-scale Transformers").

What it changes: which tokens each middle block of a GPT processes in training. For every block
except the first ``keep_first`` and the last ``keep_last`` (the paper keeps the first and the last
layer whole), each step draws, independently per block and per sequence, a random subset of the
positions; the block runs on those tokens only (kept in sequence order, so causal attention among
them is still causal) and the other tokens skip it unchanged. Every token reaches the output
head, so every position still carries loss. Evaluation runs every block on every token.

The number kept grows during training (the paper's monotonic sequence-length growth): linearly from
``keep_start`` of the sequence at the start to all of it at ``ramp_frac`` of the budget, then all
tokens to the end. ``keep_start`` and ``ramp_frac`` are benchbed's defaults for short runs, not
the paper's: its GPT-3 runs start from 128 of 2048 tokens and grow over most of training. The paper
also rescales the learning-rate schedule by the layer-tokens consumed; this cell keeps the run's
schedule over steps.

Where the saving is: the dropped tokens are absent from the middle blocks' tensors (their
matmuls and attention run on K < T tokens), so the measured FLOPs per token fall; the formula
column does not know. On lm-tiny (2 blocks) there is no middle block with the paper's layout:
``keep_last = 0`` there lets the second block drop (the scenario says so).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from benchbed.techniques.base import Technique, TechniqueError, register, require_family
from benchbed.workloads import WORKLOADS


@dataclass(frozen=True)
class RandomLTDConfig:
    keep_start: float = 0.25  # fraction of the tokens the middle blocks keep at the start
    ramp_frac: float = 0.7  # fraction of the budget by which every token is kept again
    keep_first: int = 1  # blocks at the bottom that see every token (the paper: 1)
    keep_last: int = 1  # blocks at the top that see every token (the paper: 1)

    def check(self) -> None:
        if not 0.0 < self.keep_start <= 1.0:
            raise ValueError(f"keep_start: must be in (0, 1], got {self.keep_start}")
        if not 0.0 < self.ramp_frac <= 1.0:
            raise ValueError(f"ramp_frac: must be in (0, 1], got {self.ramp_frac}")
        if self.keep_first < 0 or self.keep_last < 0:
            raise ValueError(f"keep_first, keep_last: must be >= 0, got {self.keep_first}, {self.keep_last}")


def kept_tokens(progress: float, seq_len: int, keep_start: float, ramp_frac: float) -> int:
    """Tokens a middle block keeps at a budget fraction: linear from keep_start * T to T."""
    frac = keep_start + (1.0 - keep_start) * min(1.0, progress / ramp_frac)
    return max(1, min(seq_len, round(frac * seq_len)))


@register
class RandomLTD(Technique):
    """random-LTD: each middle block of a GPT runs on a random, growing subset of the tokens."""

    name = "random_ltd"
    category = "data/token_masking"
    paper = "Yao et al. 2022, Random-LTD: Random and Layerwise Token Dropping Brings Efficient Training for Large-scale Transformers"
    Config = RandomLTDConfig
    families = ("gpt",)
    conflicts = ("progressive_stacking",)  # it changes the block count the layout is read from

    def __init__(self, config=None):
        super().__init__(config)
        self.keep = 2**62  # tokens the middle blocks keep in the current step (all until the first)
        self.middle = range(0)
        self.generator: torch.Generator | None = None

    def validate(self, cell):
        require_family(self, cell)
        workload = WORKLOADS.get(cell.get("workload", ""))
        c = self.config
        if workload is not None and workload.model.n_layer - c.keep_first - c.keep_last < 1:
            raise TechniqueError(
                f"techniques.{self.name}: '{workload.name}' has {workload.model.n_layer} blocks, none left between "
                f"keep_first = {c.keep_first} and keep_last = {c.keep_last}"
            )

    def build_model(self, model, ctx):
        c = self.config
        self.middle = range(c.keep_first, len(model.blocks) - c.keep_last)
        self.generator = torch.Generator(device=ctx.device)
        self.generator.manual_seed(ctx.run.seed + 5)
        model.token_subset = self.subset
        ctx.run.extra["random_ltd_blocks"] = [self.middle.start, self.middle.stop]
        return model

    def train_step(self, ctx, batch, step, inner):
        c = self.config
        self.keep = kept_tokens(ctx.progress(), ctx.run.seq_len, c.keep_start, c.ramp_frac)
        return inner(batch)

    def subset(self, layer: int, x: torch.Tensor) -> torch.Tensor | None:
        """Sorted random positions [B, K] for a middle block, None (all tokens) for the others."""
        B, T = x.shape[:2]
        if layer not in self.middle or self.keep >= T:
            return None
        scores = torch.rand(B, T, generator=self.generator, device=x.device)
        return scores.topk(self.keep, dim=1).indices.sort(dim=1).values
