"""From scratch: the reference row of the fine-tuning workloads. The pretrained architecture is
re-initialised (the GPT's own initialisation, seeded by the cell) and trained on the new task like
any model trained from scratch, under the same budget and target as the fine-tuning rows.

What it shows: what the pretrained base is worth on the task (if this row reaches the target as
fast as full fine-tuning, the task does not need pretraining and the fine-tuning rows mean little).
The base is still loaded (and pretrained once if absent) because the workload starts from it; its
weights are then discarded, so the row's clock holds only training from scratch.
"""

from __future__ import annotations

import torch

from benchbed.techniques.base import Technique, register
from benchbed.techniques.compute._finetune import require_gpt


@register
class FromScratch(Technique):
    """Reference row: the fine-tuning workload's model re-initialised and trained from scratch."""

    name = "from_scratch"
    category = "compute/fine_tuning"
    paper = "Howard & Ruder 2018, Universal Language Model Fine-tuning for Text Classification (the from-scratch baseline)"
    conflicts = ("full_finetune", "frozen_base", "lora")

    def validate(self, cell):
        require_gpt(self.name, cell, pretrained=True)

    def build_model(self, model, ctx):
        torch.manual_seed(ctx.run.seed)
        return type(model)(model.cfg).to(ctx.device)
