"""Fine-tuning with a frozen base: the pretrained layers are frozen and new task-specific layers on
top of them train (the survey's fine-tuning: "freeze the pretrained layers, add and train new
layers"; as in feature-based transfer, Yosinski et al. 2014, Howard & Ruder 2018).

What it changes: the model and which parameters train. Every pretrained parameter is frozen
(embeddings, blocks, final norm). On top of the last pretrained block it adds ``new_blocks`` fresh
transformer blocks and, with ``new_head``, an untied output head (the language model's "task
head"). The new blocks' output projections start at zero and the new head starts as a copy of the
pretrained (tied) head, so at step 0 the model computes exactly the base (a test checks it) and
training only adds to it. Gradients and optimizer state exist only for the new layers.

What the measurement shows: backward stops at the first new layer (nothing below needs an input
gradient), so a step costs the base's forward plus forward and backward of the new layers; the
`flops_per_token` formula and the measured FLOPs both see that. Whether the frozen features are
enough for the new task is what time-to-target says.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from benchbed.techniques.base import Technique, register
from benchbed.techniques.compute._finetune import require_gpt


@dataclass(frozen=True)
class FrozenBaseConfig:
    new_blocks: int = 1  # fresh transformer blocks on top of the frozen base
    new_head: bool = True  # an untied, trainable output head (initialised from the pretrained one)

    def check(self) -> None:
        if self.new_blocks < 0:
            raise ValueError(f"new_blocks: must be >= 0, got {self.new_blocks}")
        if self.new_blocks == 0 and not self.new_head:
            raise ValueError(
                "new_blocks, new_head: nothing would train (give new_blocks >= 1 or new_head = true)"
            )


@register
class FrozenBase(Technique):
    """Frozen pretrained layers; new blocks and a new head on top train."""

    name = "frozen_base"
    category = "compute/fine_tuning"
    paper = "Yosinski et al. 2014, How transferable are features in deep neural networks?"
    Config = FrozenBaseConfig
    conflicts = ("full_finetune", "lora", "from_scratch")

    def validate(self, cell):
        require_gpt(self.name, cell, pretrained=True)

    def build_model(self, model, ctx):
        c = self.config
        for p in model.parameters():
            p.requires_grad_(False)
        block_type = type(model.blocks[0])
        device = model.tok_emb.weight.device
        for _ in range(c.new_blocks):
            block = block_type(model.cfg).to(device)
            for module in block.modules():  # GPT initialisation, then zero output projections
                model._init_weights(module)
            with torch.no_grad():
                block.attn.proj.weight.zero_()
                block.mlp.proj.weight.zero_()
            model.blocks.append(block)
        if c.new_head:
            head = nn.Linear(model.cfg.d_model, model.cfg.vocab_size, bias=False).to(device)
            with torch.no_grad():
                head.weight.copy_(model.lm_head.weight)
            model.lm_head = head
        return model
