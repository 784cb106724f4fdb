"""int8 linear layers (Dettmers et al. 2022, "LLM.int8(): 8-bit Matrix Multiplication for
Transformers at Scale"; training recipe of SwitchBack, Wortsman et al. 2023, "Stable and
low-precision training for large-scale vision-language models").

What it changes: every nn.Linear inside the GPT's blocks (not the tied output head) computes its
forward and its input gradient as int8 x int8 matmuls with int32 accumulation -- symmetric
quantisation, one scale per token (row of the activations / of the output gradient) and one per
weight channel (output channel for the forward, input channel for dX) -- while the weight gradient
stays in the inputs' 16/32-bit dtype, as SwitchBack does. Parameters are unchanged (the same
Parameter objects); numerics change, so time-to-target is the comparison.

Where it runs: the Triton kernel on CUDA GPUs (int8 tensor cores, sm_80+). On a CPU cell only
``backend = "reference"`` is accepted: it quantises exactly as the kernel does and multiplies the
dequantised values in fp32 -- it *emulates the numerics and saves no time*.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from benchbed.techniques.base import Technique, TechniqueError, register
from benchbed.techniques.hardware import (
    check_backend,
    require_cuda_unless_reference,
    swap_linears,
    use_kernel,
)
from benchbed.techniques.hardware.fp8_linear import KernelLinear


@dataclass(frozen=True)
class Int8LinearConfig:
    backend: str = "auto"  # auto | reference | triton

    def check(self) -> None:
        check_backend(self.backend)


@register
class Int8Linear(Technique):
    """Linear layers with int8 forward and input-gradient matmuls (per-token / per-channel scales)."""

    name = "int8_linear"
    category = "hardware/low_precision"
    paper = "Wortsman et al. 2023, Stable and low-precision training for large-scale vision-language models"
    Config = Int8LinearConfig
    conflicts = ("fp8_linear", "semi_structured_sparsity", "lora")

    def validate(self, cell):
        require_cuda_unless_reference(self.name, cell, self.config.backend, "int8 arithmetic")
        if cell.get("device") == "cuda" and self.config.backend != "reference" and torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability()
            if major < 8:
                raise TechniqueError(
                    f"{self.name}: int8 tensor-core kernels need sm_80+, this GPU is sm_{major}{minor}"
                )

    def build_model(self, model, ctx):
        kernel = use_kernel(ctx, self.name, "int8_linear", self.config.backend)
        ctx.run.extra["int8_linear.layers"] = swap_linears(
            model, lambda m: KernelLinear(m, kernel), self.name
        )
        return model
