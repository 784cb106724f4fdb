"""Full fine-tuning: every weight of the pretrained base trains on the new task (the baseline of
the fine-tuning rows; Howard & Ruder 2018 and Devlin et al. 2019 fine-tune the whole network).

What it changes: nothing but the check that the workload starts from a pretrained base (on a
random initialisation "fine-tuning" is training from scratch). Everything trains, so gradients and
optimizer state cover every parameter. Its reference row is `from_scratch`: the same architecture
on the same task from a random initialisation, which says what the pretrained base is worth.
"""

from __future__ import annotations

from benchbed.techniques.base import Technique, register
from benchbed.techniques.compute._finetune import require_gpt


@register
class FullFinetune(Technique):
    """Full fine-tuning: every pretrained weight trains on the new task."""

    name = "full_finetune"
    category = "compute/fine_tuning"
    paper = "Howard & Ruder 2018, Universal Language Model Fine-tuning for Text Classification"
    conflicts = ("frozen_base", "lora", "from_scratch")

    def validate(self, cell):
        require_gpt(self.name, cell, pretrained=True)

    def build_model(self, model, ctx):
        for p in model.parameters():
            p.requires_grad_(True)
        return model
