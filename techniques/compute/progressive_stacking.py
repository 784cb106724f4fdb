"""Progressive stacking (Gong et al. 2019, "Efficient Training of BERT by Progressively Stacking",
ICML).

What it changes: the model's active depth over time. Training starts with the bottom ``L / 2``
blocks active (the top half is skipped: identity, no compute, no gradients, no optimizer state);
once ``grow_at`` of the budget is used, the shallow model is stacked: block j's weights are copied
into block j + L/2 for every j < L/2 (the paper's stacking operator, Figure 2), and the full-depth
model trains on. The paper grows 3 -> 6 -> 12 layers for BERT-base; here one doubling at a schedule
point, L/2 -> L. The copied blocks start with fresh optimizer state (they never had gradients), as
when the paper initialises the deeper model from the shallow one.

The shallow phase really is cheaper (half the blocks run), and the clock sees it.
"""

from __future__ import annotations

from dataclasses import dataclass

from benchbed.techniques.base import Technique, register, require_family


def _skip(x, *args, **kwargs):
    return x


@dataclass(frozen=True)
class StackingConfig:
    grow_at: float = 0.3  # fraction of the budget trained at half depth

    def check(self) -> None:
        if not 0.0 < self.grow_at < 1.0:
            raise ValueError(f"grow_at: must be in (0, 1), got {self.grow_at}")


@register
class ProgressiveStacking(Technique):
    """Progressive stacking: train L/2 blocks, then copy them on top to grow to L."""

    name = "progressive_stacking"
    category = "compute/incremental"
    paper = "Gong et al. 2019, Efficient Training of BERT by Progressively Stacking"
    Config = StackingConfig
    conflicts = ("layer_drop",)
    families = ("gpt", "bert", "vit")

    def validate(self, cell):
        require_family(self, cell)

    def __init__(self, config=None):
        super().__init__(config)
        self.blocks = None
        self.grown = False

    def build_model(self, model, ctx):
        self.blocks = model.blocks
        n = len(self.blocks)
        if n < 2 or n % 2:
            self.grown = True  # nothing to stack; recorded rather than silently different
            ctx.run.extra["progressive_stacking"] = f"skipped: {n} blocks (needs an even number >= 2)"
            return model
        for block in list(self.blocks)[n // 2 :]:
            block.forward = _skip  # instance attribute shadows Block.forward until growth
        return model

    def after_step(self, ctx):
        if self.grown or ctx.progress() < self.config.grow_at:
            return
        half = len(self.blocks) // 2
        for j in range(half):
            top = self.blocks[j + half]
            del top.forward
            top.load_state_dict(self.blocks[j].state_dict())
        self.grown = True
        ctx.run.extra["progressive_stacking_step"] = ctx.step
        ctx.note_model_changed()  # the FLOP counter counts the full-depth model again
