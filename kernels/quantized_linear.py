"""Low-precision linear layers: fp8 (e4m3 forward, e5m2 or bf16 gradients) and int8, with dynamic
scales, on one Triton scaled matmul.

``fp8_linear(x, weight, bias, scaling="row", grad="e5m2")`` after Micikevicius et al. 2022 ("FP8
Formats for Deep Learning") and torchao's float8 training: every matmul of the layer (forward
y = x W^T, input gradient dX = dY W, weight gradient dW = dY^T X) quantises its two operands to
fp8 with a scale computed from the current tensor (dynamic scaling): per tensor (one amax) or per
row (one amax per row of the operand along its non-reduced dimension, so the scale factors out of
the sum). The forward operands are e4m3 (3 mantissa bits, max 448); gradients are e5m2 (2 bits,
max 57344) or, with ``grad="bf16"``, the two gradient matmuls stay in the inputs' dtype.

``int8_linear(x, weight, bias)`` after Dettmers et al. 2022 ("LLM.int8()") and SwitchBack (Wortsman
et al. 2023, "Stable and low-precision training for large-scale vision-language models"): symmetric
int8 with per-output-channel weight scales and per-token activation scales for the forward, int32
accumulation; the input gradient is int8 too (dY per token, W per input channel); the weight
gradient stays in 16/32-bit, as SwitchBack does.

The Triton kernel computes C = (A @ B) * sa[row] * sb[col] with A, B read through their strides
(fp8 e4m3/e5m2 or int8; fp32 or int32 accumulation). The references quantise the same way and
multiply the dequantised operands in fp32 (float64 in tests): they *emulate the numerics* on any
device and save no time; only the Triton path on a GPU with fp8/int8 tensor cores (fp8: sm_89+)
can be faster than bf16.
"""

from __future__ import annotations

import torch

from benchbed.kernels._triton import HAS_TRITON, AotConfig, launcher, new_empty, signature_of

if HAS_TRITON:
    import triton
    import triton.language as tl

E4M3, E5M2 = torch.float8_e4m3fn, torch.float8_e5m2
QMAX = {E4M3: 448.0, E5M2: 57344.0, torch.int8: 127.0}
SCALINGS, GRADS = ("tensor", "row"), ("e5m2", "bf16")
OUT_DTYPES = (torch.float32, torch.bfloat16)  # kernel outputs; others are converted from fp32
TILE = {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 64, "num_warps": 4, "num_stages": 3}


def quantize(t: torch.Tensor, dtype: torch.dtype, dim: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(q, scale) with t ~= q * scale: one scale (``dim=None``) or one per index of ``dim`` (the amax
    over the other dimension of a 2-D tensor). Round to nearest; int8 symmetric in [-127, 127]."""
    t32 = t.float()
    amax = t32.abs().amax() if dim is None else t32.abs().amax(dim=1 - dim)
    scale = (amax / QMAX[dtype]).clamp_min(1e-12)
    scaled = t32 / (scale if dim is None else scale.unsqueeze(1 - dim))
    if dtype == torch.int8:
        return scaled.round().clamp(-127, 127).to(torch.int8), scale.reshape(-1)
    return scaled.clamp(-QMAX[dtype], QMAX[dtype]).to(dtype), scale.reshape(-1)


def _dequant(q: torch.Tensor, scale: torch.Tensor, dim: int | None, like: torch.dtype) -> torch.Tensor:
    s = scale if dim is None or scale.numel() == 1 else scale.unsqueeze(1 - dim)
    return q.to(like) * s.to(like)


# -- PyTorch references (emulate the numerics; float64 in tests) ---------------------------------------
def _emulated_mm(a, b, a_dtype, b_dtype, a_dim, b_dim, acc):
    """a [M, K] @ b [K, N] with a quantised per row of a (a_dim=0) or per tensor, b per column of b
    (b_dim=1) or per tensor, then dequantised in ``acc`` (fp32, or float64 for tests)."""
    qa, sa = quantize(a, a_dtype, a_dim)
    qb, sb = quantize(b, b_dtype, b_dim)
    return _dequant(qa, sa, a_dim, acc) @ _dequant(qb, sb, b_dim, acc)


class _EmulatedLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x2, weight, fwd, bwd_x, bwd_w, per_row, acc):
        """fwd / bwd_x / bwd_w: (a_dtype, b_dtype) of each matmul, None = unquantised."""
        ctx.save_for_backward(x2, weight)
        ctx.meta = (bwd_x, bwd_w, per_row, acc)
        dim_a, dim_b = (0, 1) if per_row else (None, None)
        return _emulated_mm(x2, weight.t(), *fwd, dim_a, dim_b, acc).to(x2.dtype)

    @staticmethod
    def backward(ctx, g):
        x2, weight = ctx.saved_tensors
        bwd_x, bwd_w, per_row, acc = ctx.meta
        dim_a, dim_b = (0, 1) if per_row else (None, None)
        mm = lambda a, b, dt: (  # noqa: E731
            _emulated_mm(a, b, *dt, dim_a, dim_b, acc) if dt else a.to(acc) @ b.to(acc)
        )
        dx = mm(g, weight, bwd_x).to(x2.dtype)
        dw = mm(g.t(), x2, bwd_w).to(weight.dtype)
        return dx, dw, None, None, None, None, None


def _plan(kind: str, scaling: str, grad: str):
    if kind == "int8":  # SwitchBack: int8 forward and input gradient, 16/32-bit weight gradient
        return (torch.int8, torch.int8), (torch.int8, torch.int8), None, True
    g = None if grad == "bf16" else (E5M2, E4M3)
    return (E4M3, E4M3), g, g, scaling == "row"


def _check_options(scaling: str, grad: str) -> None:
    if scaling not in SCALINGS:
        raise ValueError(f"scaling: expected one of {', '.join(SCALINGS)}, got '{scaling}'")
    if grad not in GRADS:
        raise ValueError(f"grad: expected one of {', '.join(GRADS)}, got '{grad}'")


def _linear(fn, kind, x, weight, bias, scaling="row", grad="e5m2", acc=torch.float32):
    _check_options(scaling, grad)
    x2 = x.reshape(-1, x.shape[-1])
    y = fn.apply(x2, weight, *_plan(kind, scaling, grad), acc)
    if bias is not None:
        y = y + bias.to(y.dtype)
    return y.view(*x.shape[:-1], weight.shape[0])


def fp8_linear_reference(x, weight, bias=None, scaling: str = "row", grad: str = "e5m2", acc=torch.float32):
    """x W^T + b with fp8 quantisation emulated (the weight e4m3 per output row or per tensor)."""
    return _linear(_EmulatedLinear, "fp8", x, weight, bias, scaling, grad, acc)


def int8_linear_reference(x, weight, bias=None, scaling: str = "row", grad: str = "e5m2", acc=torch.float32):
    """x W^T + b with int8 emulated (per-token x, per-channel W); scaling/grad are fp8 options, ignored."""
    return _linear(_EmulatedLinear, "int8", x, weight, bias, "row", "e5m2", acc)


# -- Triton kernel -------------------------------------------------------------------------------------
if HAS_TRITON:

    @triton.jit
    def _scaled_mm_kernel(
        A, B, C, SA, SB, M, N, K, stride_am, stride_ak, stride_bk, stride_bn, stride_cm,
        ROW_SA: tl.constexpr, COL_SB: tl.constexpr, INT: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    ):  # fmt: skip
        """C[M, N] = (A @ B) * SA[m or 0] * SB[n or 0]; fp32 (fp8 inputs) or int32 (int8) accumulation."""
        pid_m, pid_n = tl.program_id(0), tl.program_id(1)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_k = tl.arange(0, BLOCK_K)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32 if INT else tl.float32)
        for k0 in range(0, K, BLOCK_K):
            kk = k0 + offs_k
            a = tl.load(A + offs_m[:, None].to(tl.int64) * stride_am + kk[None, :] * stride_ak,
                        mask=(offs_m[:, None] < M) & (kk[None, :] < K), other=0.0)  # fmt: skip
            b = tl.load(B + kk[:, None] * stride_bk + offs_n[None, :].to(tl.int64) * stride_bn,
                        mask=(kk[:, None] < K) & (offs_n[None, :] < N), other=0.0)  # fmt: skip
            acc += tl.dot(a, b)
        out = acc.to(tl.float32)
        sa = tl.load(SA + offs_m, mask=offs_m < M, other=0.0) if ROW_SA else tl.load(SA)
        sb = tl.load(SB + offs_n, mask=offs_n < N, other=0.0) if COL_SB else tl.load(SB)
        if ROW_SA:
            out = out * sa[:, None]
        else:
            out = out * sa
        if COL_SB:
            out = out * sb[None, :]
        else:
            out = out * sb
        tl.store(C + offs_m[:, None].to(tl.int64) * stride_cm + offs_n[None, :], out.to(C.dtype.element_ty),
                 mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))  # fmt: skip


def scaled_mm(a, b, a_dtype, b_dtype, per_row: bool, out_dtype: torch.dtype) -> torch.Tensor:
    """a [M, K] @ b [K, N] through the kernel: a quantised per row (or tensor), b per column (or
    tensor); the quantised operands keep the strides of a and b (transposed views: no copies)."""
    qa, sa = quantize(a, a_dtype, 0 if per_row else None)
    qb, sb = quantize(b, b_dtype, 1 if per_row else None)
    m, k = qa.shape
    n = qb.shape[1]
    kernel_out = out_dtype if out_dtype in OUT_DTYPES else torch.float32  # only compiled outputs
    c = new_empty((m, n), device=a.device, dtype=kernel_out)
    if m and n:
        grid = (triton.cdiv(m, TILE["BLOCK_M"]), triton.cdiv(n, TILE["BLOCK_N"]))
        launcher(_scaled_mm_kernel, a.device)[grid](
            qa, qb, c, sa, sb, m, n, k, qa.stride(0), qa.stride(1), qb.stride(0), qb.stride(1), c.stride(0),
            ROW_SA=sa.numel() > 1 or per_row, COL_SB=sb.numel() > 1 or per_row, INT=a_dtype == torch.int8,
            **TILE,
        )  # fmt: skip
    return c.to(out_dtype)


class _TritonLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x2, weight, fwd, bwd_x, bwd_w, per_row, acc):
        ctx.save_for_backward(x2, weight)
        ctx.meta = (bwd_x, bwd_w, per_row)
        return scaled_mm(x2, weight.t(), *fwd, per_row, x2.dtype)

    @staticmethod
    def backward(ctx, g):
        x2, weight = ctx.saved_tensors
        bwd_x, bwd_w, per_row = ctx.meta
        dx = scaled_mm(g, weight, *bwd_x, per_row, x2.dtype) if bwd_x else (g @ weight.to(g.dtype))
        dw = scaled_mm(g.t(), x2, *bwd_w, per_row, weight.dtype) if bwd_w else (g.t() @ x2.to(g.dtype))
        return dx, dw.to(weight.dtype), None, None, None, None, None


def fp8_linear_triton(x, weight, bias=None, scaling: str = "row", grad: str = "e5m2"):
    return _linear(_TritonLinear, "fp8", x, weight, bias, scaling, grad)


def int8_linear_triton(x, weight, bias=None, scaling: str = "row", grad: str = "e5m2"):
    return _linear(_TritonLinear, "int8", x, weight, bias, "row", "e5m2")


def torchao_float8_available() -> bool:
    """torchao's float8 training (the sweep's comparison row) imports here."""
    try:
        import torchao.float8  # noqa: F401
    except Exception:  # ImportError, or a torchao built against another torch
        return False
    return True


# -- ahead-of-time configurations --------------------------------------------------------------------
def aot_configs() -> list[AotConfig]:
    """What the layers launch: e4m3 x e4m3 (forward, per row or per tensor), e5m2 x e4m3 (the
    gradient matmuls), int8 x int8 (forward and input gradient), each into fp32 or bf16. fp8 dots
    need sm_89+, so the fp8 configurations compile for sm_90 only."""
    configs = []
    cases = [("fp8", "*fp8e4nv", "*fp8e4nv", True), ("fp8", "*fp8e4nv", "*fp8e4nv", False),
             ("fp8", "*fp8e5", "*fp8e4nv", True), ("fp8", "*fp8e5", "*fp8e4nv", False),
             ("int8", "*i8", "*i8", True)]  # fmt: skip
    for kind, a_type, b_type, per_row in cases:
        for out in ("*fp32", "*bf16"):
            types = {"A": a_type, "B": b_type, "C": out, "SA": "*fp32", "SB": "*fp32", "M": "i32", "N": "i32",
                     "K": "i32", "stride_am": "i32", "stride_ak": "i32", "stride_bk": "i32", "stride_bn": "i32",
                     "stride_cm": "i32"}  # fmt: skip
            tile = dict(TILE)
            warps, stages = tile.pop("num_warps"), tile.pop("num_stages")
            constexprs = {"ROW_SA": per_row, "COL_SB": per_row, "INT": kind == "int8", **tile}
            label = f"{a_type[1:]} x {b_type[1:]} {'per-row' if per_row else 'per-tensor'} -> {out[1:]}"
            op = "fp8_linear" if kind == "fp8" else "int8_linear"
            signature = signature_of(_scaled_mm_kernel, types, constexprs)
            archs = (90,) if kind == "fp8" else None
            configs.append(
                AotConfig(op, _scaled_mm_kernel, label, signature, constexprs, warps, stages, archs=archs)
            )
    return configs
