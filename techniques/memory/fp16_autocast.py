"""Automatic mixed precision in float16 with dynamic loss scaling (Micikevicius et al. 2018, "Mixed
Precision Training", ICLR).

What it changes: forward passes run under ``torch.autocast`` in float16 over float32 master weights,
and the loss is multiplied by a dynamic scale before backward (``torch.amp.GradScaler``), because
float16's narrow exponent range would flush small gradients to zero. The train loop's
``optimizer_step`` unscales before clipping, skips steps whose gradients overflowed and adapts the
scale: exactly the paper's three parts (fp32 master copy, loss scaling, fp16 arithmetic).

On the CPU: PyTorch (2.4 and later) supports float16 autocast and GradScaler on the CPU, so the cell
runs; whether fp16 is faster there depends on the CPU's fp16 support, which is what is measured.
``validate`` refuses the cell where this PyTorch build cannot autocast float16 on the cell's device.
"""

from __future__ import annotations

import torch

from benchbed.techniques.base import PrecisionConfig, Technique, TechniqueError, register


def fp16_autocast_supported(device_type: str) -> bool:
    if device_type == "cuda":
        return torch.cuda.is_available()
    try:
        with torch.autocast(device_type=device_type, dtype=torch.float16):
            out = torch.nn.functional.linear(torch.ones(2, 2), torch.ones(2, 2))
        torch.amp.GradScaler(device_type)
    except (RuntimeError, ValueError, AssertionError):
        return False
    return out.dtype == torch.float16


@register
class FP16Autocast(Technique):
    """Mixed precision: float16 autocast with dynamic loss scaling."""

    name = "fp16_autocast"
    category = "memory/precision"
    paper = "Micikevicius et al. 2018, Mixed Precision Training"
    Config = PrecisionConfig
    precision = "fp16"
    conflicts = ("bf16_autocast",)

    def validate(self, cell):
        device = cell.get("device", "cpu")
        if device == "cpu" and not fp16_autocast_supported("cpu"):
            raise TechniqueError(
                "techniques: fp16_autocast: this PyTorch build cannot autocast float16 on the CPU"
            )

    def configure(self, run):
        run.autocast_dtype = torch.float16
        run.grad_scaling = True
