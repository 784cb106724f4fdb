"""Activation offloading: the activations a block saves for backward are moved to host memory in
forward and brought back in backward, with ``torch.autograd.graph.save_on_cpu`` (the offloading
of activations in Rhu et al. 2016, "vDNN: Virtualized Deep Neural Networks for Scalable,
Memory-Efficient Neural Network Design"; ZeRO-Offload/ZeRO-Infinity offload the other states).

What it changes: every ``every``-th transformer block (blocks 0, every, 2 every, ...) runs under
``save_on_cpu(pin_memory=True)`` on a GPU: each tensor autograd saves is copied into pinned host
memory (asynchronously), and copied back when backward needs it. Device memory held by those
blocks' activations drops to almost nothing; the copies cost PCIe bandwidth and time, inside the
step (the technique pays for them). Parameters saved by a layer are not copied (they stay on the
device anyway).

With ``activation_checkpointing``: a checkpointed block keeps no activations (only its input,
held by the checkpoint), so offloading skips it and applies to the blocks checkpointing left alone;
``run_extra`` lists which blocks each technique took. Checkpointing is applied first (its category
comes first in the lifecycle), so the two compose in either scenario order.

On a CPU cell the device memory is the host memory: there is nothing to move, and the technique
installs no hooks (``save_on_cpu`` would copy each tensor into another host buffer for nothing); it
records that it was inactive. Its saved-activation bytes are then those of the baseline, which is
the honest reading.

What the measurement shows: ``saved_activation_bytes`` (peak bytes saved for backward on the
device) falls by the offloaded blocks' share; ``run_extra.activation_offload.offloaded_bytes`` is
what the first step moved to the host; time per step rises by the copies.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from benchbed.techniques.base import Technique, register


@dataclass(frozen=True)
class ActivationOffloadConfig:
    every: int = 1  # offload every n-th block (1 = all)
    pin_memory: bool = True  # pinned host buffers (asynchronous copies); GPU only

    def check(self) -> None:
        if self.every < 1:
            raise ValueError(f"every: must be >= 1, got {self.every}")


class Offloaded(nn.Module):
    """Runs ``block`` with the tensors it saves for backward kept in host memory."""

    def __init__(self, block: nn.Module, pin_memory: bool, counter: dict):
        super().__init__()
        self.block = block
        self.pin_memory = pin_memory
        self.counter = counter

    def _hooks(self):
        inner = torch.autograd.graph.save_on_cpu(pin_memory=self.pin_memory)
        pack, unpack = inner.pack_hook, inner.unpack_hook
        counter = self.counter

        def counted_pack(t: torch.Tensor):
            if isinstance(t, nn.Parameter) or t.device.type == "cpu":
                return (None, t)  # a parameter, or already on the host: kept as is
            if counter["on"]:
                counter["bytes"] += t.numel() * t.element_size()
            return (True, pack(t))

        def counted_unpack(packed):
            moved, value = packed
            return unpack(value) if moved else value

        return torch.autograd.graph.saved_tensors_hooks(counted_pack, counted_unpack)

    def forward(self, *args, **kwargs):
        if not torch.is_grad_enabled():
            return self.block(*args, **kwargs)
        with self._hooks():
            return self.block(*args, **kwargs)


@register
class ActivationOffload(Technique):
    """Offload the activations saved for backward to (pinned) host memory, block by block."""

    name = "activation_offload"
    category = "memory/offloading"
    paper = "Rhu et al. 2016, vDNN: Virtualized Deep Neural Networks for Scalable, Memory-Efficient Neural Network Design"
    Config = ActivationOffloadConfig

    def build_model(self, model, ctx):
        self.counter = {"on": False, "bytes": 0}
        active = ctx.device.type != "cpu"
        offloaded, checkpointed = [], []
        blocks = model.blocks
        for i in range(len(blocks)):
            if i % self.config.every:
                continue
            if type(blocks[i]).__name__ == "_Checkpointed":  # keeps no activations: nothing to move
                checkpointed.append(i)
                continue
            offloaded.append(i)
            if active:
                blocks[i] = Offloaded(blocks[i], self.config.pin_memory, self.counter)
        self.note = ctx.run.extra["activation_offload"] = {
            "active": active,
            "blocks": offloaded,
            "skipped_checkpointed": checkpointed,
            "pin_memory": self.config.pin_memory and active,
            "offloaded_bytes": float("nan"),
        }
        if not active:
            self.note["why_inactive"] = "CPU cell: activations already live in host memory"
        return model

    def train_step(self, ctx, batch, step, inner):
        if step != 0 or not self.note["active"]:
            return inner(batch)
        self.counter["on"] = True  # what the first step moves to the host
        try:
            return inner(batch)
        finally:
            self.counter["on"] = False
            self.note["offloaded_bytes"] = float(self.counter["bytes"])
