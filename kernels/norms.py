"""Fused RMSNorm and LayerNorm, forward and backward.

RMSNorm: Zhang & Sennrich 2019, "Root Mean Square Layer Normalization"; LayerNorm: Ba, Kiros &
Hinton 2016. The kernel layout follows Triton's layer-norm tutorial (itself after Apex): the
forward keeps one row per program and stores the per-row statistics (mean, 1/std) so the backward
does not recompute them; the backward gives each program a contiguous run of rows, computes dx
row by row and accumulates its own partial sums of dweight/dbias in registers, written to a
[programs, N] buffer that one reduction sums afterwards (no atomics, deterministic).

Statistics and arithmetic are float32 whatever the input dtype; the output has the input's dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from benchbed.kernels._triton import (
    DTYPE_NAMES,
    HAS_TRITON,
    POINTER_TYPES,
    AotConfig,
    launcher,
    new_empty,
    new_empty_like,
    next_power_of_2,
    signature_of,
)

if HAS_TRITON:
    import triton
    import triton.language as tl

# one row must fit one program's registers: the backward spills 8-112 bytes at 8192 (16 warps, aligned
# pointers) and 216-792 at 16384, so wider rows are refused
MAX_WIDTH = 4096
MIN_BLOCK = 1024  # narrower rows run masked in a 1024-wide block: 3 block widths cover every accepted one


# -- PyTorch references ----------------------------------------------------------------------------
def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor | None, eps: float = 1e-6) -> torch.Tensor:
    xf = x.float() if x.dtype != torch.float64 else x
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    if weight is not None:
        y = y * weight.to(y.dtype)
    return y.to(x.dtype)


def layer_norm_reference(
    x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float = 1e-5
) -> torch.Tensor:
    return F.layer_norm(x, (x.shape[-1],), weight, bias, eps)


# -- Triton kernels --------------------------------------------------------------------------------
if HAS_TRITON:

    @triton.jit
    def _norm_fwd_kernel(
        X, W, B, Y, MEAN, RSTD, stride_row, N, eps,
        IS_RMS: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr,
    ):  # fmt: skip
        row = tl.program_id(0)
        cols = tl.arange(0, BLOCK_N)
        mask = cols < N
        x = tl.load(X + row * stride_row + cols, mask=mask, other=0.0).to(tl.float32)
        if IS_RMS:
            mean = 0.0
            xc = x
        else:
            mean = tl.sum(x, axis=0) / N
            xc = tl.where(mask, x - mean, 0.0)
        var = tl.sum(xc * xc, axis=0) / N
        rstd = 1.0 / tl.sqrt(var + eps)
        w = tl.load(W + cols, mask=mask, other=0.0)
        y = xc * rstd * w
        if HAS_BIAS:
            y += tl.load(B + cols, mask=mask, other=0.0)
        tl.store(Y + row * stride_row + cols, y.to(Y.dtype.element_ty), mask=mask)
        tl.store(MEAN + row, mean)
        tl.store(RSTD + row, rstd)

    @triton.jit
    def _norm_bwd_kernel(
        X, W, DY, DX, MEAN, RSTD, DW_PARTIAL, DB_PARTIAL, stride_row, M, N, rows_per_program,
        IS_RMS: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr,
    ):  # fmt: skip
        pid = tl.program_id(0)
        cols = tl.arange(0, BLOCK_N)
        mask = cols < N
        w = tl.load(W + cols, mask=mask, other=0.0)
        dw = tl.zeros((BLOCK_N,), dtype=tl.float32)
        db = tl.zeros((BLOCK_N,), dtype=tl.float32)
        row_start = pid * rows_per_program
        row_end = tl.minimum(row_start + rows_per_program, M)
        for row in range(row_start, row_end):
            x = tl.load(X + row * stride_row + cols, mask=mask, other=0.0).to(tl.float32)
            dy = tl.load(DY + row * stride_row + cols, mask=mask, other=0.0).to(tl.float32)
            mean = tl.load(MEAN + row)
            rstd = tl.load(RSTD + row)
            xhat = tl.where(mask, (x - mean) * rstd, 0.0)
            wdy = w * dy
            c1 = tl.sum(xhat * wdy, axis=0) / N
            if IS_RMS:
                dx = (wdy - xhat * c1) * rstd
            else:
                c2 = tl.sum(wdy, axis=0) / N
                dx = (wdy - (xhat * c1 + c2)) * rstd
            tl.store(DX + row * stride_row + cols, dx.to(DX.dtype.element_ty), mask=mask)
            dw += dy * xhat
            if HAS_BIAS:
                db += dy
        tl.store(DW_PARTIAL + pid * N + cols, dw, mask=mask)
        if HAS_BIAS:
            tl.store(DB_PARTIAL + pid * N + cols, db, mask=mask)


def _block(n: int) -> int:
    return max(next_power_of_2(n), MIN_BLOCK)


def _num_warps(block_n: int) -> int:
    """4 warps at 1024, 8 at 2048-4096."""
    return min(max(block_n // 256, 1), 8)


def _backward_programs(rows: int, device: torch.device) -> int:
    if device.type == "cuda":
        sms = torch.cuda.get_device_properties(device).multi_processor_count
        return max(1, min(rows, 4 * sms))
    return max(1, min(rows, 4))  # the interpreter runs programs one after another


class _NormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, eps, is_rms):
        shape, n = x.shape, x.shape[-1]
        if n > MAX_WIDTH:
            raise ValueError(
                f"norm width {n} exceeds {MAX_WIDTH} (wider rows spill registers; use the reference)"
            )
        x2 = x.reshape(-1, n).contiguous()
        rows = x2.shape[0]
        w32 = (weight if weight is not None else torch.ones(n, device=x.device)).float().contiguous()
        b32 = bias.float().contiguous() if bias is not None else w32  # unused when HAS_BIAS is false
        y = new_empty_like(x2)
        mean = new_empty(rows, device=x.device, dtype=torch.float32)
        rstd = new_empty(rows, device=x.device, dtype=torch.float32)
        block_n = _block(n)
        if rows:
            launcher(_norm_fwd_kernel, x.device)[(rows,)](
                x2, w32, b32, y, mean, rstd, x2.stride(0), n, eps,
                IS_RMS=is_rms, HAS_BIAS=bias is not None, BLOCK_N=block_n, num_warps=_num_warps(block_n),
            )  # fmt: skip
        ctx.save_for_backward(x2, w32, mean, rstd)
        ctx.meta = (shape, is_rms, weight is not None, bias is not None, block_n)
        ctx.param_dtypes = (
            weight.dtype if weight is not None else None,
            bias.dtype if bias is not None else None,
        )
        return y.view(shape)

    @staticmethod
    def backward(ctx, dy):
        x2, w32, mean, rstd = ctx.saved_tensors
        shape, is_rms, has_weight, has_bias, block_n = ctx.meta
        rows, n = x2.shape
        dy2 = dy.reshape(-1, n).contiguous()
        dx = new_empty_like(x2)
        programs = _backward_programs(rows, x2.device)
        dw_partial = new_empty((programs, n), device=x2.device, dtype=torch.float32)
        db_partial = (
            new_empty((programs, n), device=x2.device, dtype=torch.float32) if has_bias else dw_partial
        )
        if rows:
            launcher(_norm_bwd_kernel, x2.device)[(programs,)](
                x2, w32, dy2, dx, mean, rstd, dw_partial, db_partial, x2.stride(0), rows, n,
                triton.cdiv(rows, programs),
                IS_RMS=is_rms, HAS_BIAS=has_bias, BLOCK_N=block_n, num_warps=_num_warps(block_n),
            )  # fmt: skip
        else:
            dw_partial.zero_()
            db_partial.zero_()
        w_dtype, b_dtype = ctx.param_dtypes
        dw = dw_partial.sum(0).to(w_dtype) if has_weight and ctx.needs_input_grad[1] else None
        db = db_partial.sum(0).to(b_dtype) if has_bias and ctx.needs_input_grad[2] else None
        return dx.view(shape), dw, db, None, None


def rms_norm_triton(x: torch.Tensor, weight: torch.Tensor | None, eps: float = 1e-6) -> torch.Tensor:
    return _NormFunction.apply(x, weight, None, eps, True)


def layer_norm_triton(
    x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float = 1e-5
) -> torch.Tensor:
    return _NormFunction.apply(x, weight, bias, eps, False)


# -- ahead-of-time configurations --------------------------------------------------------------------
#: every block width the runtime launches (BLOCK_N = max(next pow2 of the width, MIN_BLOCK) <= MAX_WIDTH)
AOT_WIDTHS = (1024, 2048, 4096)


def aot_configs() -> list[AotConfig]:
    configs = []
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        p = POINTER_TYPES[dtype]
        for kind, is_rms, has_bias in (
            ("rms", True, False),
            ("layer", False, False),
            ("layer+bias", False, True),
        ):
            for block_n in AOT_WIDTHS:
                constexprs = {"IS_RMS": is_rms, "HAS_BIAS": has_bias, "BLOCK_N": block_n}
                label = f"{kind} N<={block_n} {DTYPE_NAMES[dtype]}"
                op = "rms_norm" if is_rms else "layer_norm"
                fwd_types = {"X": p, "W": "*fp32", "B": "*fp32", "Y": p, "MEAN": "*fp32", "RSTD": "*fp32",
                             "stride_row": "i32", "N": "i32", "eps": "fp32"}  # fmt: skip
                bwd_types = {"X": p, "W": "*fp32", "DY": p, "DX": p, "MEAN": "*fp32", "RSTD": "*fp32",
                             "DW_PARTIAL": "*fp32", "DB_PARTIAL": "*fp32", "stride_row": "i32", "M": "i32",
                             "N": "i32", "rows_per_program": "i32"}  # fmt: skip
                warps = _num_warps(block_n)
                for kernel, types in ((_norm_fwd_kernel, fwd_types), (_norm_bwd_kernel, bwd_types)):
                    configs.append(
                        AotConfig(
                            op, kernel, label, signature_of(kernel, types, constexprs), constexprs, warps, 1
                        )
                    )
    return configs
