"""fp8 linear layers (Micikevicius et al. 2022, "FP8 Formats for Deep Learning"; dynamic scaling as
in torchao's float8 training and Transformer Engine's current scaling).

What it changes: every nn.Linear inside the GPT's blocks (attention qkv/proj, MLP fc/proj; not the
tied output head) runs its three matmuls with fp8 operands: e4m3 for the forward (x and W), e5m2
gradients against e4m3 operands for dX and dW (or, with ``grad = "bf16"``, the gradient matmuls in
the inputs' dtype). Scales are computed from each tensor as it is used (``scaling = "row"``: one per
row of each operand, the torchao "rowwise" recipe; ``"tensor"``: one per tensor). Parameters stay
in their own dtype (master weights); the same Parameter objects are kept. This changes numerics:
loss curves differ slightly from bf16 and time-to-target is the comparison.

Where it runs: Triton kernels on CUDA GPUs with fp8 tensor cores (sm_89+; refused at scenario load
on older GPUs). On a CPU cell only ``backend = "reference"`` is accepted: it quantises exactly as
the kernels do and multiplies the dequantised values in fp32 -- it *emulates the numerics and saves
no time* (it is slower than the plain model).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import nn

from benchbed.techniques.base import Technique, TechniqueError, register
from benchbed.techniques.hardware import (
    check_backend,
    require_cuda_unless_reference,
    swap_linears,
    use_kernel,
)


class KernelLinear(nn.Module):
    """nn.Linear's parameters, the matmul done by ``kernel(x, weight, bias)``."""

    def __init__(self, source: nn.Linear, kernel):
        super().__init__()
        self.in_features, self.out_features = source.in_features, source.out_features
        self.weight, self.bias = source.weight, source.bias  # the same Parameters
        self.kernel = kernel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.kernel(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, bias={self.bias is not None}"


@dataclass(frozen=True)
class Fp8LinearConfig:
    scaling: str = "row"  # row | tensor
    grad: str = "e5m2"  # e5m2 | bf16 (gradient matmuls unquantised)
    backend: str = "auto"  # auto | reference | triton

    def check(self) -> None:
        from benchbed.kernels.quantized_linear import _check_options

        _check_options(self.scaling, self.grad)
        check_backend(self.backend)


@register
class Fp8Linear(Technique):
    """Linear layers with e4m3/e5m2 fp8 matmuls and dynamic per-row or per-tensor scales."""

    name = "fp8_linear"
    category = "hardware/low_precision"
    paper = "Micikevicius et al. 2022, FP8 Formats for Deep Learning"
    Config = Fp8LinearConfig
    conflicts = ("int8_linear", "semi_structured_sparsity", "lora")  # all replace the blocks' linears

    def validate(self, cell):
        require_cuda_unless_reference(self.name, cell, self.config.backend, "fp8 arithmetic")
        if cell.get("device") == "cuda" and self.config.backend != "reference" and torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability()
            if 10 * major + minor < 89:
                raise TechniqueError(
                    f"{self.name}: fp8 tensor cores need sm_89+, this GPU is sm_{major}{minor}"
                )

    def build_model(self, model, ctx):
        kernel = use_kernel(ctx, self.name, "fp8_linear", self.config.backend)
        kernel = functools.partial(kernel, scaling=self.config.scaling, grad=self.config.grad)
        ctx.run.extra["fp8_linear.layers"] = swap_linears(model, lambda m: KernelLinear(m, kernel), self.name)
        return model
