"""The kernel sweep behind `benchbed kernels bench`: each op at small to large shapes, per dtype,
forward and forward+backward, for the reference, the Triton backend and the PyTorch baselines the
goals name (SDPA for attention, foreach for the optimizer steps).

Rows: op, backend, shape, dtype, mode, median_ms, tflops, gb_s, peak_mem_bytes, device, note.
TFLOP/s is given for ops dominated by matrix products (attention, linear cross-entropy), GB/s for
memory-bound ones (norms, cross-entropy, optimizer steps; bytes = the minimum each must move).
A quantity not measured is NaN: peak memory on the CPU, throughput where no model applies.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from benchbed import kernels
from benchbed.kernels import block_sparse_attention, flash_attention, quantized_linear

NAN = float("nan")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Case:
    op: str
    backend: str
    shape: str
    dtype: str
    mode: str  # fwd | fwd+bwd | step
    setup: Callable[[], Callable[[], object]]  # builds inputs, returns the timed callable
    flops: float = NAN
    bytes_moved: float = NAN
    size: str = "small"  # small | large: the CPU runs only small cases


def _attention_cases(device: torch.device) -> list[Case]:
    shapes = [(4, 8, 512, 64), (4, 16, 2048, 64), (2, 16, 4096, 64), (2, 8, 4096, 128)]
    if device.type != "cuda":
        shapes = [(1, 2, 128, 32)]
    cases = []
    for b, h, t, d in shapes:
        for dtype_name in ("bf16", "fp16", "fp32") if device.type == "cuda" else ("fp32",):
            dtype = DTYPES[dtype_name]
            fwd_flops = 4.0 * b * h * t * t * d * 0.5  # causal: half the score matrix
            backends: dict[str, Callable] = {
                "reference": flash_attention.attention_reference,
                "triton": flash_attention.flash_attention_triton,
                "sdpa": lambda q, k, v, causal=True: F.scaled_dot_product_attention(
                    q, k, v, is_causal=causal
                ),
            }
            for backend, fn in backends.items():
                for mode in ("fwd", "fwd+bwd"):

                    def setup(fn=fn, mode=mode, shape=(b, h, t, d), dtype=dtype):
                        q, k, v = (
                            torch.randn(shape, device=device, dtype=dtype, requires_grad=mode != "fwd")
                            for _ in range(3)
                        )
                        grad = torch.randn(shape, device=device, dtype=dtype)
                        if mode == "fwd":
                            return lambda: fn(q, k, v, causal=True)
                        return lambda: fn(q, k, v, causal=True).backward(grad)

                    flops = fwd_flops * (1.0 if mode == "fwd" else 3.5)  # FA2 paper: bwd = 2.5 x fwd
                    size = "small" if t <= 512 else "large"
                    cases.append(
                        Case(
                            "flash_attention",
                            backend,
                            f"B={b} H={h} T={t} D={d} causal",
                            dtype_name,
                            mode,
                            setup,
                            flops,
                            NAN,
                            size,
                        )
                    )
    return cases


def _block_sparse_cases(device: torch.device) -> list[Case]:
    """Time against density: one shape, causal, sliding windows of growing width (plus one global
    block); the dense flash_attention kernel and SDPA at the same shape are the density-1 rows."""
    if device.type == "cuda":
        (b, h, t, d), block, windows, dtypes = (2, 16, 4096, 64), 64, (0, 1, 3, 7, 15), ("bf16",)
    else:
        (b, h, t, d), block, windows, dtypes = (1, 2, 256, 32), 32, (0, 2), ("fp32",)
    cases = []
    for dtype_name in dtypes:
        dtype = DTYPES[dtype_name]
        for window in windows:
            pattern = block_sparse_attention.SparsityPattern(block=block, window=window, global_blocks=1)
            dens = block_sparse_attention.density(t, pattern)
            for backend in ("reference", "triton"):
                fn = kernels.get("block_sparse_attention", backend)
                for mode in ("fwd", "fwd+bwd"):

                    def setup(fn=fn, mode=mode, pattern=pattern, dtype=dtype):
                        q, k, v = (
                            torch.randn(b, h, t, d, device=device, dtype=dtype, requires_grad=mode != "fwd")
                            for _ in range(3)
                        )
                        grad = torch.randn(b, h, t, d, device=device, dtype=dtype)
                        call = lambda: fn(q, k, v, True, pattern)
                        return call if mode == "fwd" else (lambda: call().backward(grad))

                    # useful FLOPs only: the allowed pairs (density x the causal triangle)
                    flops = 4.0 * b * h * t * t * d * 0.5 * dens * (1.0 if mode == "fwd" else 3.5)
                    shape = f"B={b} H={h} T={t} D={d} block={block} window={window} density={dens:.3f}"
                    size = "small" if t <= 512 else "large"
                    cases.append(
                        Case(
                            "block_sparse_attention",
                            backend,
                            shape,
                            dtype_name,
                            mode,
                            setup,
                            flops,
                            NAN,
                            size,
                        )
                    )
    return cases


def _torchao_float8(k: int, n: int, device, dtype):
    """torchao's float8 training linear (rowwise recipe, eager: no torch.compile) as fn(x, w, b)."""
    from torch import nn
    from torchao.float8 import Float8LinearConfig, convert_to_float8_training

    model = nn.Sequential(nn.Linear(k, n, bias=False, device=device, dtype=dtype))
    convert_to_float8_training(model, config=Float8LinearConfig.from_recipe_name("rowwise"))
    return lambda x, w, b: model(x)


def _linear_cases(device: torch.device) -> list[Case]:
    """fp8 / int8 linear layers against the same layer in bf16 (torch.matmul through F.linear) and,
    where importable, torchao's float8 training; TFLOP/s counts 2MNK per matmul."""
    if device.type == "cuda":
        shapes, dtype_name = [(8192, 4096, 4096), (8192, 768, 3072)], "bf16"
    else:
        shapes, dtype_name = [(256, 128, 256)], "fp32"
    dtype = DTYPES[dtype_name]
    backends: dict[str, Callable] = {
        "torch": lambda x, w, b: F.linear(x, w, b),
        "fp8-reference": quantized_linear.fp8_linear_reference,
        "int8-reference": quantized_linear.int8_linear_reference,
        "fp8-triton": quantized_linear.fp8_linear_triton,
        "int8-triton": quantized_linear.int8_linear_triton,
    }
    if device.type == "cuda" and quantized_linear.torchao_float8_available():
        backends["torchao-float8"] = None  # built per shape
    cases = []
    for m, k, n in shapes:
        for backend, fn in backends.items():
            op = "int8_linear" if backend.startswith("int8") else "fp8_linear"
            for mode in ("fwd", "fwd+bwd"):

                def setup(fn=fn, backend=backend, mode=mode, m=m, k=k, n=n):
                    grad = mode != "fwd"
                    x = torch.randn(m, k, device=device, dtype=dtype, requires_grad=grad)
                    w = (torch.randn(n, k, device=device, dtype=dtype) / math.sqrt(k)).requires_grad_(grad)
                    g = torch.randn(m, n, device=device, dtype=dtype)
                    call_fn = _torchao_float8(k, n, device, dtype) if backend == "torchao-float8" else fn
                    call = lambda: call_fn(x, w, None)
                    return call if mode == "fwd" else (lambda: call().backward(g))

                flops = 2.0 * m * n * k * (1.0 if mode == "fwd" else 3.0)
                # the triton backends run through the bench's interpreter switch on the CPU
                kind = "triton" if backend.endswith("triton") else backend
                size = "small" if m * k <= 1 << 16 else "large"
                cases.append(Case(op, kind if kind == "triton" else backend, f"M={m} K={k} N={n} {backend}",
                                  dtype_name, mode, setup, flops, NAN, size))  # fmt: skip
    return cases


def _cross_entropy_cases(device: torch.device) -> list[Case]:
    shapes = [(4096, 32768), (8192, 50304)] if device.type == "cuda" else [(64, 1000)]
    cases = []
    for rows, vocab in shapes:
        for dtype_name in ("bf16", "fp32") if device.type == "cuda" else ("fp32",):
            dtype = DTYPES[dtype_name]
            for backend in ("reference", "triton"):
                fn = kernels.get("cross_entropy", backend)
                for mode in ("fwd", "fwd+bwd"):

                    def setup(fn=fn, mode=mode, rows=rows, vocab=vocab, dtype=dtype):
                        x = torch.randn(rows, vocab, device=device, dtype=dtype, requires_grad=mode != "fwd")
                        t = torch.randint(0, vocab, (rows,), device=device)
                        return (lambda: fn(x, t)) if mode == "fwd" else (lambda: fn(x, t).backward())

                    elem = DTYPES[dtype_name].itemsize
                    moved = rows * vocab * elem * (1 if mode == "fwd" else 3)  # read; + read, write grad
                    size = "small" if rows * vocab <= 1 << 20 else "large"
                    cases.append(
                        Case(
                            "cross_entropy",
                            backend,
                            f"N={rows} V={vocab}",
                            dtype_name,
                            mode,
                            setup,
                            NAN,
                            moved,
                            size,
                        )
                    )
    lin_shapes = [(8192, 768, 50304)] if device.type == "cuda" else [(64, 32, 1000)]
    for tokens, width, vocab in lin_shapes:
        dtype_name = "bf16" if device.type == "cuda" else "fp32"
        dtype = DTYPES[dtype_name]
        for backend in ("reference", "triton"):
            fn = kernels.get("linear_cross_entropy", backend)

            def setup(fn=fn, tokens=tokens, width=width, vocab=vocab, dtype=dtype):
                h = torch.randn(tokens, width, device=device, dtype=dtype, requires_grad=True)
                w = (
                    torch.randn(vocab, width, device=device, dtype=dtype) / math.sqrt(width)
                ).requires_grad_()
                t = torch.randint(0, vocab, (tokens,), device=device)
                return lambda: fn(h, w, t, 1024).backward()

            flops = 6.0 * tokens * width * vocab  # logits, d(hidden), d(weight)
            size = "small" if tokens * vocab <= 1 << 20 else "large"
            cases.append(
                Case(
                    "linear_cross_entropy",
                    backend,
                    f"N={tokens} d={width} V={vocab} chunk=1024",
                    dtype_name,
                    "fwd+bwd",
                    setup,
                    flops,
                    NAN,
                    size,
                )
            )
    return cases


def _norm_cases(device: torch.device) -> list[Case]:
    shapes = [(8192, 768), (16384, 4096)] if device.type == "cuda" else [(256, 64)]
    cases = []
    for rows, width in shapes:
        for dtype_name in ("bf16", "fp32") if device.type == "cuda" else ("fp32",):
            dtype = DTYPES[dtype_name]
            for op in ("layer_norm", "rms_norm"):
                for backend in ("reference", "triton"):
                    fn = kernels.get(op, backend)
                    for mode in ("fwd", "fwd+bwd"):

                        def setup(fn=fn, op=op, mode=mode, rows=rows, width=width, dtype=dtype):
                            x = torch.randn(
                                rows, width, device=device, dtype=dtype, requires_grad=mode != "fwd"
                            )
                            w = torch.ones(width, device=device, requires_grad=mode != "fwd")
                            g = torch.randn(rows, width, device=device, dtype=dtype)
                            call = (
                                (lambda: fn(x, w, None, 1e-5))
                                if op == "layer_norm"
                                else (lambda: fn(x, w, 1e-6))
                            )
                            return call if mode == "fwd" else (lambda: call().backward(g))

                        elem = dtype.itemsize
                        moved = rows * width * elem * (2 if mode == "fwd" else 5)  # x,y; + x,dy,dx
                        size = "small" if rows * width <= 1 << 16 else "large"
                        cases.append(
                            Case(
                                op, backend, f"N={rows} d={width}", dtype_name, mode, setup, NAN, moved, size
                            )
                        )
    return cases


def _foreach_lion(params, grads, exp_avg, lr, betas, weight_decay):
    """torch._foreach Lion over a list of tensors: the goal's baseline for the fused lion step."""
    beta1, beta2 = betas
    update = torch._foreach_mul(exp_avg, beta1)
    torch._foreach_add_(update, grads, alpha=1.0 - beta1)
    torch._foreach_sign_(update)
    torch._foreach_mul_(params, 1.0 - lr * weight_decay)
    torch._foreach_add_(params, update, alpha=-lr)
    torch._foreach_mul_(exp_avg, beta2)
    torch._foreach_add_(exp_avg, grads, alpha=1.0 - beta2)


def _optimizer_cases(device: torch.device) -> list[Case]:
    sizes = [124_000_000] if device.type == "cuda" else [100_000]
    cases = []
    for n in sizes:
        for op in ("adamw_step", "lion_step"):
            for backend in ("reference", "triton", "foreach"):

                def setup(op=op, backend=backend, n=n):
                    p, g = torch.randn(n, device=device), torch.randn(n, device=device)
                    m, v = torch.zeros(n, device=device), torch.zeros(n, device=device)
                    if backend == "foreach":  # the same numbers split like a GPT's ~150 tensors
                        chunks = [n // 150] * 149 + [n - 149 * (n // 150)]
                        ps, gs, ms, vs = (list(t.split(chunks)) for t in (p, g, m, v))
                        if op == "lion_step":
                            return lambda: _foreach_lion(ps, gs, ms, 1e-4, (0.9, 0.99), 0.1)
                        tensors = [torch.nn.Parameter(t) for t in ps]
                        for t, grad in zip(tensors, gs, strict=True):
                            t.grad = grad
                        adamw = torch.optim.AdamW(
                            tensors, lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1, foreach=True
                        )
                        return adamw.step
                    fn = kernels.get(op, backend)
                    if op == "lion_step":
                        return lambda: fn(p, g, m, 1e-4, (0.9, 0.99), 0.1)
                    return lambda: fn(p, g, m, v, 1, 1e-3, (0.9, 0.95), 1e-8, 0.1)

                moved = n * 4 * (7 if op == "adamw_step" else 5)  # read p,g,m(,v); write p,m(,v)
                size = "small" if n <= 1_000_000 else "large"
                cases.append(Case(op, backend, f"n={n}", "fp32", "step", setup, NAN, moved, size))
    return cases


def all_cases(device: torch.device) -> list[Case]:
    return [
        *_attention_cases(device),
        *_block_sparse_cases(device),
        *_linear_cases(device),
        *_cross_entropy_cases(device),
        *_norm_cases(device),
        *_optimizer_cases(device),
    ]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(case: Case, device: torch.device, repeats: int, warmup: int) -> dict:
    """Median wall time of `repeats` calls after `warmup` calls, and peak memory on CUDA."""
    row = {
        "op": case.op,
        "backend": case.backend,
        "shape": case.shape,
        "dtype": case.dtype,
        "mode": case.mode,
    }
    row.update(median_ms=NAN, tflops=NAN, gb_s=NAN, peak_mem_bytes=NAN, note="")
    try:
        if device.type == "cuda":
            torch.cuda.empty_cache()
            base = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
        call = case.setup()
        for _ in range(warmup):
            call()
        _sync(device)
        times_ms = []
        for _ in range(repeats):
            start = time.perf_counter()
            call()
            _sync(device)
            times_ms.append((time.perf_counter() - start) * 1e3)
        median_ms = statistics.median(times_ms)
        row["median_ms"] = median_ms
        row["tflops"] = case.flops / (median_ms * 1e-3) / 1e12 if not math.isnan(case.flops) else NAN
        row["gb_s"] = case.bytes_moved / (median_ms * 1e-3) / 1e9 if not math.isnan(case.bytes_moved) else NAN
        if device.type == "cuda":
            row["peak_mem_bytes"] = float(torch.cuda.max_memory_allocated(device) - base)
    except (RuntimeError, ValueError) as exc:  # out of memory, unsupported shape: recorded, not fatal
        row["note"] = f"error: {str(exc).splitlines()[0][:200]}"
    return row
