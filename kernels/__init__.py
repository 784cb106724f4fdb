"""Kernel registry: op name -> a PyTorch reference and one or more Triton backends.

``get(op, backend="auto")`` returns a callable. ``auto`` picks Triton when CUDA is available and the
tensors live on a CUDA device (pass ``device=``), and the PyTorch reference everywhere else.
``backend="triton"`` with CPU tensors runs the Triton kernel under Triton's interpreter (slow;
tests and small checks only). Each op lives in one module beside its reference:

- flash_attention.py -- FlashAttention-2 forward/backward (Dao 2023)
- block_sparse_attention.py -- the same over a block mask (local, global, strided, random blocks)
- cross_entropy.py   -- fused softmax+NLL, and the variant fused with the output projection
- norms.py           -- fused RMSNorm / LayerNorm forward and backward
- quantized_linear.py -- fp8 and int8 linear layers on one scaled Triton matmul
- optimizer_steps.py -- fused AdamW and Lion steps over flat buffers
- cuda_lion.py       -- the Lion step in CUDA C++ (load_inline), backend "cuda" of lion_step
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from benchbed.kernels import (
    block_sparse_attention,
    cross_entropy,
    cuda_lion,
    flash_attention,
    norms,
    optimizer_steps,
    quantized_linear,
)
from benchbed.kernels._triton import HAS_TRITON, AotConfig, TritonUnavailable

BACKENDS = ("auto", "reference", "triton", "cuda")  # cuda: CUDA C++ extensions (lion_step)


@dataclass(frozen=True)
class KernelOp:
    name: str
    reference: Callable
    backends: dict[str, Callable] = field(default_factory=dict)  # backend name -> callable
    dtypes: tuple[str, ...] = ("fp32", "bf16", "fp16")
    devices: tuple[str, ...] = ("cuda", "cpu (interpreter)")  # where the Triton backend runs
    description: str = ""
    training: bool = True  # has a backward (autograd.Function) or is an optimizer step


REGISTRY: dict[str, KernelOp] = {}


def register(op: KernelOp) -> KernelOp:
    if op.name in REGISTRY:
        raise RuntimeError(f"kernel op '{op.name}' registered twice")
    REGISTRY[op.name] = op
    return op


def cuda_available() -> bool:
    return torch.cuda.is_available()


def resolve_backend(backend: str = "auto", device: torch.device | str | None = None) -> str:
    """The concrete backend ('reference', 'triton' or 'cuda') that ``get`` would use."""
    if backend not in BACKENDS:
        raise ValueError(f"backend '{backend}': expected one of {', '.join(BACKENDS)}")
    if backend != "auto":
        return backend
    dev = torch.device(device) if device is not None else None
    on_cuda = dev.type == "cuda" if dev is not None else True
    return "triton" if HAS_TRITON and cuda_available() and on_cuda else "reference"


def get(op: str, backend: str = "auto", device: torch.device | str | None = None) -> Callable:
    """The callable for ``op``. ``auto``: Triton when CUDA is available and ``device`` (if given) is a
    CUDA device, the PyTorch reference otherwise."""
    if op not in REGISTRY:
        raise KeyError(f"unknown kernel op '{op}' (known: {', '.join(sorted(REGISTRY))})")
    chosen = resolve_backend(backend, device)
    entry = REGISTRY[op]
    if chosen == "reference":
        return entry.reference
    if chosen not in entry.backends:
        raise KeyError(
            f"kernel op '{op}' has no backend '{chosen}' (has: reference, {', '.join(entry.backends)})"
        )
    if chosen == "triton" and not HAS_TRITON:
        raise TritonUnavailable(f"kernel op '{op}': backend 'triton' needs the triton package")
    return entry.backends[chosen]


def describe_kernels() -> list[dict]:
    """Rows for `benchbed list kernels`: op, backends, dtypes, devices, description."""
    return [
        {
            "op": op.name,
            "backends": ", ".join(["reference", *op.backends]),
            "dtypes": ", ".join(op.dtypes),
            "devices": ", ".join(op.devices),
            "auto_here": resolve_backend("auto", "cuda" if cuda_available() else "cpu"),
            "description": op.description,
        }
        for op in REGISTRY.values()
    ]


def aot_configs(arch: int = 90) -> list[AotConfig]:
    """Every Triton kernel at every configuration it launches with on ``arch`` (for AOT compiles),
    each under both divisibility-hint sets the runtime may compile it with (``AotConfig.variants``)."""
    configs = [
        *flash_attention.aot_configs(arch),
        *block_sparse_attention.aot_configs(arch),
        *cross_entropy.aot_configs(),
        *norms.aot_configs(),
        *optimizer_steps.aot_configs(),
        *quantized_linear.aot_configs(),
    ]
    return [variant for config in configs for variant in config.variants()]


def _triton_backends(fn: Callable) -> dict[str, Callable]:
    return {"triton": fn} if HAS_TRITON else {}


register(
    KernelOp(
        "flash_attention",
        flash_attention.attention_reference,
        _triton_backends(flash_attention.flash_attention_triton),
        description="FlashAttention-2 fwd/bwd, q,k,v [B,H,T,D], D in 16/32/64/128, causal or full",
    )
)
register(
    KernelOp(
        "block_sparse_attention",
        block_sparse_attention.block_sparse_attention_reference,
        _triton_backends(block_sparse_attention.block_sparse_attention_triton),
        description="FlashAttention-2 over a block mask (window, global, strided, random blocks); "
        "reference: masked SDPA",
    )
)
register(
    KernelOp(
        "cross_entropy",
        cross_entropy.cross_entropy_reference,
        _triton_backends(cross_entropy.cross_entropy_triton),
        description="fused softmax + NLL per row, log-sum-exp kept, backward recomputes",
    )
)
register(
    KernelOp(
        "linear_cross_entropy",
        cross_entropy.linear_cross_entropy_reference,
        _triton_backends(cross_entropy.linear_cross_entropy_triton),
        description="output projection + cross-entropy in token chunks; full logits never stored",
    )
)
register(
    KernelOp(
        "rms_norm",
        norms.rms_norm_reference,
        _triton_backends(norms.rms_norm_triton),
        description="fused RMSNorm fwd/bwd, weight grads from per-program partial sums",
    )
)
register(
    KernelOp(
        "layer_norm",
        norms.layer_norm_reference,
        _triton_backends(norms.layer_norm_triton),
        description="fused LayerNorm fwd/bwd (bias optional), weight/bias grads from partial sums",
    )
)
register(
    KernelOp(
        "adamw_step",
        optimizer_steps.adamw_step_reference,
        _triton_backends(optimizer_steps.adamw_step_triton),
        dtypes=("params fp32/bf16/fp16, states fp32",),
        description="one fused AdamW launch over flat param/grad/state buffers (torch.optim.AdamW math)",
    )
)
register(
    KernelOp(
        "lion_step",
        optimizer_steps.lion_step_reference,
        {**_triton_backends(optimizer_steps.lion_step_triton), "cuda": cuda_lion.lion_step_cuda},
        dtypes=("params fp32/bf16/fp16, states fp32",),
        description="one fused Lion launch over flat buffers (Chen et al. 2023); cuda: CUDA C++ via load_inline",
    )
)

register(
    KernelOp(
        "fp8_linear",
        quantized_linear.fp8_linear_reference,
        _triton_backends(quantized_linear.fp8_linear_triton),
        dtypes=("inputs fp32/bf16; e4m3 fwd, e5m2 or bf16 grads",),
        devices=("cuda sm_89+", "cpu (interpreter)"),
        description="x W^T + b with fp8 operands, dynamic per-tensor or per-row scales (reference emulates)",
    )
)
register(
    KernelOp(
        "int8_linear",
        quantized_linear.int8_linear_reference,
        _triton_backends(quantized_linear.int8_linear_triton),
        dtypes=("inputs fp32/bf16; int8 fwd and dX, 16/32-bit dW",),
        description="x W^T + b in int8: per-token x, per-channel W, int32 accumulation (SwitchBack)",
    )
)

__all__ = [
    "BACKENDS",
    "REGISTRY",
    "KernelOp",
    "aot_configs",
    "describe_kernels",
    "get",
    "register",
    "resolve_backend",
]
