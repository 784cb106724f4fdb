"""2:4 semi-structured weight sparsity (Mishra et al. 2021, "Accelerating Sparse Deep Neural
Networks"; NVIDIA's Automatic SParsity recipe) through ``torch.sparse.to_sparse_semi_structured``.

What it changes: every nn.Linear inside the GPT's blocks is pruned once, at build time, to 2:4 --
in each group of 4 consecutive input weights of a row the 2 of largest magnitude are kept -- and the
mask is kept fixed (the weight's gradient is masked, so the pattern survives the optimizer). The
forward multiplies by a compressed 2:4 copy of the weight on the sparse tensor cores of sm_80+
GPUs (cuSPARSELt/CUTLASS), in bf16 (fp32 inputs are cast; the output keeps the input's dtype); the
copy is recompressed after every optimizer step, inside the step's time. Both gradient matmuls stay
dense. Half the weights are zero from the first step, so the model changes: loss curves differ from
the dense model and time-to-target is the comparison.

Where it runs: CUDA GPUs of compute capability 8.0 or newer. Anywhere else the scenario is refused at
load with one line (no emulation: a dense masked matmul would measure nothing of interest).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from benchbed.techniques.base import NoOptions, Technique, TechniqueError, register
from benchbed.techniques.hardware import swap_linears


def mask_2_4(weight: torch.Tensor) -> torch.Tensor:
    """Bool mask keeping the 2 largest |w| of every 4 consecutive inputs of each row."""
    rows, cols = weight.shape
    groups = weight.detach().abs().reshape(rows, cols // 4, 4)
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(2, groups.topk(2, dim=2).indices, True)
    return keep.reshape(rows, cols)


class _SparseForward(torch.autograd.Function):
    """y = x W_s^T on the sparse copy; dX = g W (dense, masked W), dW = (g^T x) * mask."""

    @staticmethod
    def forward(ctx, x, weight, mask, compressed):
        ctx.save_for_backward(x, weight, mask)
        x2 = x.reshape(-1, x.shape[-1]).to(torch.bfloat16)
        y = F.linear(x2, compressed)  # the documented use of a SparseSemiStructuredTensor weight
        return y.to(x.dtype).view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, g):
        x, weight, mask = ctx.saved_tensors
        g2 = g.reshape(-1, g.shape[-1])
        dx = (g2 @ weight.to(g2.dtype)).view(x.shape)
        dw = (g2.t() @ x.reshape(-1, x.shape[-1]).to(g2.dtype)).to(weight.dtype) * mask
        return dx, dw, None, None


class SemiStructuredLinear(nn.Module):
    def __init__(self, source: nn.Linear, compress=None):
        super().__init__()
        self.weight, self.bias = source.weight, source.bias  # the same Parameters, pruned in place
        self.register_buffer("mask", mask_2_4(source.weight))
        with torch.no_grad():
            self.weight.mul_(self.mask)
        self.compress = compress or torch.sparse.to_sparse_semi_structured
        self.compressed = None
        self.version = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.compressed is None or self.version != self.weight._version:  # recompress after a step
            self.compressed = self.compress(self.weight.detach().to(torch.bfloat16))
            self.version = self.weight._version
        y = _SparseForward.apply(x, self.weight, self.mask, self.compressed)
        return y if self.bias is None else y + self.bias.to(y.dtype)


@register
class SemiStructuredSparsity(Technique):
    """2:4 weight sparsity on sparse tensor cores (torch.sparse.to_sparse_semi_structured, sm_80+)."""

    name = "semi_structured_sparsity"
    category = "hardware/sparse_matmul"
    paper = "Mishra et al. 2021, Accelerating Sparse Deep Neural Networks"
    Config = NoOptions
    conflicts = ("fp8_linear", "int8_linear", "lora")

    def validate(self, cell):
        if cell.get("device") != "cuda":
            raise TechniqueError(
                f"{self.name}: 2:4 sparse tensor cores need a CUDA GPU of sm_80 or newer; "
                f"device '{cell.get('device')}' has none"
            )
        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability()
            if major < 8:
                raise TechniqueError(
                    f"{self.name}: needs sm_80+ for 2:4 sparsity, this GPU is sm_{major}{minor}"
                )

    def build_model(self, model, ctx):
        ctx.run.extra["semi_structured.layers"] = swap_linears(model, SemiStructuredLinear, self.name)
        return model
