"""The masking ratio of masked-language-model pre-training (Devlin et al. 2019, "BERT: Pre-training of
Deep Bidirectional Transformers for Language Understanding"; the ratio studied by Wettig et al.
2023, "Should You Mask 15% in Masked Language Modeling?", EACL).

What it changes: the training batch of an mlm workload. Each step's batch is re-masked at
``ratio`` with BERT's 80/10/10 rule (``mask_frac`` of the selected positions become [MASK],
``random_frac`` a uniformly drawn token, the rest stay), from the original tokens the batch carries
(the targets where the workload masked, the inputs elsewhere). ``"mlm_masking.ratio" = [0.15, 0.3,
0.4]`` in a scenario's [matrix] is the masking-ratio axis.

What the measurement shows: the training signal per token. The budget counts input tokens, so a
higher ratio trains on more loss-bearing positions from the same tokens but with less visible
context; the validation set is always masked at the workload's 15%, so every ratio is scored on the
same questions. The re-masking runs in ``select_batch``, inside the clock (elementwise ops on the
[B, T] ids; the workload's own 15% masking of the data happens outside it, like all data
generation), so compare ratios with each other through this technique, ``ratio = 0.15`` included.
It saves no compute: every position is still processed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from benchbed.techniques.base import Technique, register, require_family
from benchbed.workloads import Batch
from benchbed.workloads.data.masked import MaskingRule, mask_tokens, original_tokens


@dataclass(frozen=True)
class MLMMaskingConfig:
    ratio: float = 0.15  # BERT's
    mask_frac: float = 0.8
    random_frac: float = 0.1

    def rule(self) -> MaskingRule:
        return MaskingRule(self.ratio, self.mask_frac, self.random_frac)

    def check(self) -> None:
        self.rule().check()


@register
class MLMMasking(Technique):
    """Masked-language-model training at a chosen masking ratio (BERT's 80/10/10 replacement)."""

    name = "mlm_masking"
    category = "data/token_masking"
    paper = "Devlin et al. 2019, BERT; Wettig et al. 2023, Should You Mask 15% in Masked Language Modeling?"
    Config = MLMMaskingConfig
    families = ("bert",)

    def __init__(self, config=None):
        super().__init__(config)
        self.generator: torch.Generator | None = None
        self.rule = self.config.rule()

    def validate(self, cell):
        require_family(self, cell)

    def configure(self, run):
        run.extra["mlm_masking_ratio"] = self.config.ratio

    def build_model(self, model, ctx):
        self.generator = torch.Generator(device=ctx.device)
        self.generator.manual_seed(ctx.run.seed + 3)
        return model

    def select_batch(self, batch, ctx):
        mask_id = ctx.workload.mask_id  # the corpus's ids are 0 .. mask_id - 1
        tokens = original_tokens(batch.inputs, batch.targets)
        inputs, targets = mask_tokens(tokens, self.rule, mask_id, mask_id, self.generator)
        return Batch(inputs, targets, batch.weights)
