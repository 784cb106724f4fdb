"""Automatic mixed precision in bfloat16 (Micikevicius et al. 2018, "Mixed Precision Training").

What it changes: forward passes (training and evaluation) run under `torch.autocast` with
bfloat16, so matrix multiplies use reduced precision while parameters, gradients and optimizer
states stay in float32 (the master copy the paper prescribes). bfloat16 has float32's exponent
range, so no loss scaling is needed (use `fp16_autocast` semantics for float16). On the CPU,
autocast supports bfloat16 for linear layers and matmuls; whether that is faster depends on the
CPU's bf16 support, which is exactly what the benchmark measures.
"""

from __future__ import annotations

import torch

from benchbed.techniques.base import PrecisionConfig, Technique, TechniqueError, register


@register
class BF16Autocast(Technique):
    """Mixed precision: bfloat16 autocast over float32 master weights."""

    name = "bf16_autocast"
    category = "memory/precision"
    paper = "Micikevicius et al. 2018, Mixed Precision Training"
    Config = PrecisionConfig
    precision = "bf16"

    def validate(self, cell):
        if cell.get("device") != "cuda" or not torch.cuda.is_available():
            return  # a CPU cell is checked against the CPU's capability by the plan
        if not torch.cuda.is_bf16_supported():
            raise TechniqueError("techniques: bf16_autocast: this GPU does not support bfloat16")
        if not torch.cuda.is_bf16_supported(including_emulation=False) and not self.config.allow_emulated:
            raise TechniqueError(
                "techniques.bf16_autocast: this GPU only emulates bfloat16 (compute capability below 8.0), "
                "so the cell would time the emulation; use fp16_autocast on it, or set "
                "[techniques.bf16_autocast] allow_emulated = true to run it labelled as emulated"
            )

    def configure(self, run):
        run.autocast_dtype = torch.bfloat16
