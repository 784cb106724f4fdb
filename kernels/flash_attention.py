"""FlashAttention-2 (Dao 2023, "FlashAttention-2: Faster Attention with Better Parallelism and Work
Partitioning"; the algorithm of Dao et al. 2022, "FlashAttention").

Forward: each program owns BLOCK_M query rows of one (batch, head) and streams key/value blocks
through an online softmax (running max m, running sum l, rescaled accumulator), so the [T, T] score
matrix never exists; it stores the output and the row log-sum-exp (base 2, for exp2). Backward
recomputes the probabilities from the stored log-sum-exp: one kernel per key block accumulates dK
and dV over query blocks, one per query block accumulates dQ over key blocks (FA2's split, no
atomics); delta = rowsum(dO * O) is computed first.

Inputs are [batch, heads, seq, head_dim], the signature of benchbed.models.gpt.sdpa_attention.
Head dims 16, 32, 64, 128; any sequence length (masked tails); causal or not; fp32 (IEEE FMA dots,
or TF32 tensor-core dots with ``allow_tf32``, by default torch's own matmul setting), bf16, fp16,
all with float32 accumulation. q, k, v are read through their strides (the GPT's q/k/v are
transposed views of one projection: no copies); the output and gradients are contiguous.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from benchbed.kernels._triton import (
    DTYPE_NAMES,
    HAS_TRITON,
    POINTER_TYPES,
    AotConfig,
    launcher,
    new_empty,
    signature_of,
)

if HAS_TRITON:
    import triton
    import triton.language as tl

HEAD_DIMS = (16, 32, 64, 128)
LOG2_E = 1.4426950408889634


# -- PyTorch reference -----------------------------------------------------------------------------
def attention_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = True, allow_tf32: bool | None = None
) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + causal mask) v, materialised (eager; any dtype including float64).
    ``allow_tf32`` is accepted for the kernel's signature; eager matmuls follow torch's own setting."""
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
    if causal:
        t_q, t_k = q.shape[-2], k.shape[-2]
        keep = torch.ones(t_q, t_k, dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~keep, float("-inf"))
    return F.softmax(scores.float() if scores.dtype != torch.float64 else scores, dim=-1).to(v.dtype) @ v


# -- Triton kernels --------------------------------------------------------------------------------
if HAS_TRITON:

    @triton.jit
    def _attn_fwd_kernel(
        Q, K, V, OUT, LSE, qk_scale, T, H, stride_b, stride_h, stride_t,
        CAUSAL, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        DOT_PRECISION: tl.constexpr, DOT_DTYPE: tl.constexpr,
    ):  # fmt: skip
        start_m = tl.program_id(0)
        bh = tl.program_id(1).to(tl.int64)
        base = bh * T * HEAD_DIM  # OUT: contiguous [B, H, T, D]
        qkv = (bh // H) * stride_b + (bh % H) * stride_h  # Q, K, V: any strides, unit stride in D
        offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, HEAD_DIM)
        q = tl.load(
            Q + qkv + offs_m[:, None] * stride_t + offs_d[None, :], mask=offs_m[:, None] < T, other=0.0
        )
        m_i = tl.full((BLOCK_M,), -float("inf"), dtype=tl.float32)
        l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
        acc = tl.zeros((BLOCK_M, HEAD_DIM), dtype=tl.float32)
        hi = T
        if CAUSAL:  # a runtime flag: one compiled variant serves both (halves the AOT set)
            hi = tl.minimum((start_m + 1) * BLOCK_M, T)
        for start_n in range(0, hi, BLOCK_N):
            offs_n = start_n + tl.arange(0, BLOCK_N)
            kv_offsets = qkv + offs_n[:, None] * stride_t + offs_d[None, :]
            k = tl.load(K + kv_offsets, mask=offs_n[:, None] < T, other=0.0)
            qk = tl.dot(q.to(DOT_DTYPE), tl.trans(k.to(DOT_DTYPE)), input_precision=DOT_PRECISION) * qk_scale
            keep = (offs_n[None, :] < T) & ((offs_m[:, None] >= offs_n[None, :]) | (CAUSAL == 0))
            qk = tl.where(keep, qk, -float("inf"))
            m_new = tl.maximum(m_i, tl.max(qk, axis=1))
            alpha = tl.exp2(m_i - m_new)
            p = tl.exp2(qk - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, axis=1)
            v = tl.load(V + kv_offsets, mask=offs_n[:, None] < T, other=0.0)
            acc = acc * alpha[:, None] + tl.dot(
                p.to(v.dtype).to(DOT_DTYPE), v.to(DOT_DTYPE), input_precision=DOT_PRECISION
            )
            m_i = m_new
        acc = acc / l_i[:, None]
        row_ok = offs_m < T
        tl.store(OUT + base + offs_m[:, None] * HEAD_DIM + offs_d[None, :], acc.to(OUT.dtype.element_ty),
                 mask=row_ok[:, None])  # fmt: skip
        tl.store(LSE + bh * T + offs_m, m_i + tl.log2(l_i), mask=row_ok)

    @triton.jit
    def _attn_bwd_dkdv_kernel(
        Q, K, V, DO, LSE, DELTA, DK, DV, qk_scale, sm_scale, T, H, stride_b, stride_h, stride_t,
        stride_dob, stride_doh, stride_dot,
        CAUSAL, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        DOT_PRECISION: tl.constexpr, DOT_DTYPE: tl.constexpr,
    ):  # fmt: skip
        start_n = tl.program_id(0) * BLOCK_N
        bh = tl.program_id(1).to(tl.int64)
        base = bh * T * HEAD_DIM  # DK, DV: contiguous [B, H, T, D]
        qkv = (bh // H) * stride_b + (bh % H) * stride_h
        dob = (bh // H) * stride_dob + (bh % H) * stride_doh
        offs_n = start_n + tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, HEAD_DIM)
        kv_offsets = qkv + offs_n[:, None] * stride_t + offs_d[None, :]
        k = tl.load(K + kv_offsets, mask=offs_n[:, None] < T, other=0.0)
        v = tl.load(V + kv_offsets, mask=offs_n[:, None] < T, other=0.0)
        dk = tl.zeros((BLOCK_N, HEAD_DIM), dtype=tl.float32)
        dv = tl.zeros((BLOCK_N, HEAD_DIM), dtype=tl.float32)
        lo = 0
        if CAUSAL:
            lo = (start_n // BLOCK_M) * BLOCK_M
        for start_m in range(lo, T, BLOCK_M):
            offs_m = start_m + tl.arange(0, BLOCK_M)
            q = tl.load(Q + qkv + offs_m[:, None] * stride_t + offs_d[None, :], mask=offs_m[:, None] < T,
                        other=0.0)  # fmt: skip
            do = tl.load(DO + dob + offs_m[:, None] * stride_dot + offs_d[None, :], mask=offs_m[:, None] < T,
                         other=0.0)  # fmt: skip
            lse = tl.load(LSE + bh * T + offs_m, mask=offs_m < T, other=0.0)
            delta = tl.load(DELTA + bh * T + offs_m, mask=offs_m < T, other=0.0)
            qk_t = (
                tl.dot(k.to(DOT_DTYPE), tl.trans(q.to(DOT_DTYPE)), input_precision=DOT_PRECISION) * qk_scale
            )  # [BLOCK_N, BLOCK_M]
            keep = (offs_m[None, :] < T) & ((offs_m[None, :] >= offs_n[:, None]) | (CAUSAL == 0))
            p_t = tl.where(keep, tl.exp2(qk_t - lse[None, :]), 0.0)
            dv += tl.dot(p_t.to(do.dtype).to(DOT_DTYPE), do.to(DOT_DTYPE), input_precision=DOT_PRECISION)
            dp_t = tl.dot(v.to(DOT_DTYPE), tl.trans(do.to(DOT_DTYPE)), input_precision=DOT_PRECISION)
            ds_t = p_t * (dp_t - delta[None, :])
            dk += tl.dot(ds_t.to(q.dtype).to(DOT_DTYPE), q.to(DOT_DTYPE), input_precision=DOT_PRECISION)
        out_offsets = base + offs_n[:, None] * HEAD_DIM + offs_d[None, :]
        tl.store(DK + out_offsets, (dk * sm_scale).to(DK.dtype.element_ty), mask=offs_n[:, None] < T)
        tl.store(DV + out_offsets, dv.to(DV.dtype.element_ty), mask=offs_n[:, None] < T)

    @triton.jit
    def _attn_bwd_dq_kernel(
        Q, K, V, DO, LSE, DELTA, DQ, qk_scale, sm_scale, T, H, stride_b, stride_h, stride_t,
        stride_dob, stride_doh, stride_dot,
        CAUSAL, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        DOT_PRECISION: tl.constexpr, DOT_DTYPE: tl.constexpr,
    ):  # fmt: skip
        start_m = tl.program_id(0)
        bh = tl.program_id(1).to(tl.int64)
        base = bh * T * HEAD_DIM  # DQ: contiguous [B, H, T, D]
        qkv = (bh // H) * stride_b + (bh % H) * stride_h
        dob = (bh // H) * stride_dob + (bh % H) * stride_doh
        offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, HEAD_DIM)
        q = tl.load(
            Q + qkv + offs_m[:, None] * stride_t + offs_d[None, :], mask=offs_m[:, None] < T, other=0.0
        )
        do = tl.load(DO + dob + offs_m[:, None] * stride_dot + offs_d[None, :], mask=offs_m[:, None] < T,
                     other=0.0)  # fmt: skip
        lse = tl.load(LSE + bh * T + offs_m, mask=offs_m < T, other=0.0)
        delta = tl.load(DELTA + bh * T + offs_m, mask=offs_m < T, other=0.0)
        dq = tl.zeros((BLOCK_M, HEAD_DIM), dtype=tl.float32)
        hi = T
        if CAUSAL:  # a runtime flag: one compiled variant serves both (halves the AOT set)
            hi = tl.minimum((start_m + 1) * BLOCK_M, T)
        for start_n in range(0, hi, BLOCK_N):
            offs_n = start_n + tl.arange(0, BLOCK_N)
            kv_offsets = qkv + offs_n[:, None] * stride_t + offs_d[None, :]
            k = tl.load(K + kv_offsets, mask=offs_n[:, None] < T, other=0.0)
            v = tl.load(V + kv_offsets, mask=offs_n[:, None] < T, other=0.0)
            qk = tl.dot(q.to(DOT_DTYPE), tl.trans(k.to(DOT_DTYPE)), input_precision=DOT_PRECISION) * qk_scale
            keep = (offs_n[None, :] < T) & ((offs_m[:, None] >= offs_n[None, :]) | (CAUSAL == 0))
            p = tl.where(keep, tl.exp2(qk - lse[:, None]), 0.0)
            dp = tl.dot(do.to(DOT_DTYPE), tl.trans(v.to(DOT_DTYPE)), input_precision=DOT_PRECISION)
            ds = p * (dp - delta[:, None])
            dq += tl.dot(ds.to(k.dtype).to(DOT_DTYPE), k.to(DOT_DTYPE), input_precision=DOT_PRECISION)
        dq_offsets = base + offs_m[:, None] * HEAD_DIM + offs_d[None, :]
        tl.store(DQ + dq_offsets, (dq * sm_scale).to(DQ.dtype.element_ty), mask=offs_m[:, None] < T)


def launch_config(
    head_dim: int, dtype: torch.dtype, arch: int = 90, precision: str = "tf32"
) -> dict[str, dict[str, int]]:
    """Block sizes and warps per kernel for a compute capability and, for fp32, the dot precision
    ("tf32" tensor cores or "ieee" FMA dots). The interpreter uses the sm_90 table, so CPU tests
    exercise configurations a GPU launches; tests/test_aot.py compiles every one for sm_90 and sm_80
    and fails on any spill (`benchbed kernels report` shows registers and spills)."""
    if dtype == torch.float32 and precision == "ieee":
        # FMA dots hold the whole product tile in registers. Found by compiling candidates for every
        # head dim, sm_90/sm_80 and both hint sets: 32x32 spilled up to 784 bytes at D=128; 16x32
        # spilled 88-312 bytes in the forward at D >= 64 and 8 in dK/dV at D=32 on sm_80, where 16x16
        # is clean -- but 16x16 dK/dV spills 8 bytes at D=64 on sm_80 (register allocation is not
        # monotonic in the tile), so the dK/dV tile depends on the head dim
        table = {
            "fwd": (16, 16, 4),
            "dkdv": (16, 16, 4) if head_dim == 32 else (16, 32, 4),
            "dq": (16, 32, 4),
        }
        return _as_launch(table)
    if dtype == torch.float32:
        if head_dim <= 64:
            table = {"fwd": (64, 64, 8), "dkdv": (64, 64, 8), "dq": (64, 64, 8)}
        else:
            # dkdv (BLOCK_M=64 queries, BLOCK_N=32 keys, 8 warps): (32, 64, 4) spilled 32-56 bytes
            # once the runtime's divisibility hints were compiled in; this tile has 0 spills either way
            table = {"fwd": (64, 32, 8), "dkdv": (64, 32, 8), "dq": (64, 32, 4)}
    elif head_dim <= 64:
        table = {"fwd": (128, 64, 8), "dkdv": (64, 64, 8), "dq": (64, 64, 8)}
    else:
        table = {"fwd": (64, 64, 8), "dkdv": (32, 64, 4), "dq": (64, 64, 8)}
    if arch < 90:  # no wgmma: mma.sync tiles hold more registers per thread, so smaller backward tiles
        if dtype == torch.float32:
            table.update(dkdv=(32, 32, 4), dq=(32, 64, 4) if head_dim <= 64 else (32, 32, 4))
        else:
            table.update(dkdv=(64, 32, 4) if head_dim <= 64 else (32, 32, 4), dq=(64, 32, 4))
    return _as_launch(table)


def _as_launch(table: dict[str, tuple[int, int, int]]) -> dict[str, dict[str, int]]:
    return {
        which: {"BLOCK_M": m, "BLOCK_N": n, "num_warps": warps, "num_stages": 2}
        for which, (m, n, warps) in table.items()
    }


def device_arch(device: torch.device) -> int:
    """Compute capability as an int (90 for sm_90); the interpreter gets the sm_90 table."""
    if device.type != "cuda":
        return 90
    major, minor = torch.cuda.get_device_capability(device)
    return 10 * major + minor


def dot_precision(dtype: torch.dtype, allow_tf32: bool | None = None) -> str:
    """ "tf32" or "ieee" for the dots of fp32 inputs; 16-bit inputs always get "tf32" (ignored for them).
    ``allow_tf32=None`` follows torch's own matmul setting (torch.backends.cuda.matmul.allow_tf32,
    False by default), so fp32 attention is IEEE fp32 unless the run asked for TF32 everywhere. TF32
    products carry 10 mantissa bits: at input magnitude ~30 that is an error near 9% of the output,
    against ~1e-4 for IEEE fp32 dots. The interpreter computes both exactly in fp32."""
    if dtype != torch.float32:
        return "tf32"
    if allow_tf32 is None:
        allow_tf32 = torch.backends.cuda.matmul.allow_tf32
    return "tf32" if allow_tf32 else "ieee"


_TL_DTYPES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def _dot_dtype(dtype: torch.dtype, device: torch.device):
    """The dtype dot operands are cast to: the input's own on a GPU (a no-op cast). Triton 3.9's
    interpreter multiplies bf16 operands as their raw uint16 bit patterns, so under the interpreter
    bf16 operands are widened to fp32 first; a bf16 x bf16 product is exact in fp32, so this is the
    GPU's bf16 MMA with fp32 accumulation up to summation order (operands keep their bf16 rounding)."""
    if device.type != "cuda" and dtype == torch.bfloat16:
        return tl.float32
    return getattr(tl, _TL_DTYPES[dtype])


def _check(q, k, v):
    if q.dim() != 4 or q.shape != k.shape or q.shape != v.shape:
        raise ValueError(f"flash_attention: q, k, v must share one [batch, heads, seq, head_dim] shape, got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")  # fmt: skip
    if q.shape[-1] not in HEAD_DIMS:
        raise ValueError(f"flash_attention: head_dim {q.shape[-1]} not supported (supported: {HEAD_DIMS})")
    if q.dtype not in POINTER_TYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(
            f"flash_attention: dtype {q.dtype} not supported (fp32, bf16, fp16; all three equal)"
        )


def qkv_strides(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
    """q, k, v as the kernels read them: through their own strides when the three share them and
    head_dim is unit-stride (q/k/v split from one projection and transposed, as in the GPT), else
    contiguous copies. Returns (q, k, v, (stride_b, stride_h, stride_t))."""
    if not (q.stride() == k.stride() == v.stride() and q.stride(-1) == 1):
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    return q, k, v, q.stride()[:3]


def unit_last(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


class _FlashAttentionFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, causal, precision):
        _check(q, k, v)
        batch, heads, seq, head_dim = q.shape
        q, k, v, strides = qkv_strides(q, k, v)
        o = new_empty(q.shape, device=q.device, dtype=q.dtype)  # contiguous [B, H, T, D]
        lse = new_empty((batch * heads, seq), device=q.device, dtype=torch.float32)
        sm_scale = 1.0 / math.sqrt(head_dim)
        cfg = launch_config(head_dim, q.dtype, device_arch(q.device), precision)["fwd"]
        grid = (triton.cdiv(seq, cfg["BLOCK_M"]), batch * heads)
        if q.numel():
            launcher(_attn_fwd_kernel, q.device)[grid](
                q, k, v, o, lse, sm_scale * LOG2_E, seq, heads, *strides,
                CAUSAL=causal, HEAD_DIM=head_dim, DOT_PRECISION=precision,
                DOT_DTYPE=_dot_dtype(q.dtype, q.device), **cfg,
            )  # fmt: skip
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.causal, ctx.precision, ctx.strides = causal, precision, strides
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse = ctx.saved_tensors
        batch, heads, seq, head_dim = q.shape
        do = unit_last(do)  # any other strides are read as they are
        delta = (o.float() * do.float()).sum(-1).reshape(batch * heads, seq).contiguous()
        dq, dk, dv = (new_empty(q.shape, device=q.device, dtype=q.dtype) for _ in range(3))
        sm_scale = 1.0 / math.sqrt(head_dim)
        configs = launch_config(head_dim, q.dtype, device_arch(q.device), ctx.precision)
        common = {
            "CAUSAL": ctx.causal,
            "HEAD_DIM": head_dim,
            "DOT_PRECISION": ctx.precision,
            "DOT_DTYPE": _dot_dtype(q.dtype, q.device),
        }
        strides = (seq, heads, *ctx.strides, *do.stride()[:3])
        if q.numel():
            cfg = configs["dkdv"]
            launcher(_attn_bwd_dkdv_kernel, q.device)[(triton.cdiv(seq, cfg["BLOCK_N"]), batch * heads)](
                q, k, v, do, lse, delta, dk, dv, sm_scale * LOG2_E, sm_scale, *strides, **common, **cfg
            )
            cfg = configs["dq"]
            launcher(_attn_bwd_dq_kernel, q.device)[(triton.cdiv(seq, cfg["BLOCK_M"]), batch * heads)](
                q, k, v, do, lse, delta, dq, sm_scale * LOG2_E, sm_scale, *strides, **common, **cfg
            )
        return dq, dk, dv, None, None


def flash_attention_triton(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = True, allow_tf32: bool | None = None
) -> torch.Tensor:
    """``allow_tf32``: fp32 dots on TF32 tensor cores; None follows torch.backends.cuda.matmul.allow_tf32."""
    return _FlashAttentionFunction.apply(q, k, v, causal, dot_precision(q.dtype, allow_tf32))


# -- ahead-of-time configurations --------------------------------------------------------------------
def aot_configs(arch: int = 90, head_dims: tuple[int, ...] = HEAD_DIMS) -> list[AotConfig]:
    """Three kernels per head dim, dtype and (fp32) dot precision; causal is a runtime flag."""
    configs = []
    variants = [
        (torch.float32, "tf32"),
        (torch.float32, "ieee"),
        (torch.bfloat16, "tf32"),
        (torch.float16, "tf32"),
    ]
    for head_dim in head_dims:
        for dtype, precision in variants:
            p = POINTER_TYPES[dtype]
            launch = launch_config(head_dim, dtype, arch, precision)
            shared = {"Q": p, "K": p, "V": p, "LSE": "*fp32", "qk_scale": "fp32", "T": "i32", "H": "i32",
                      "stride_b": "i32", "stride_h": "i32", "stride_t": "i32", "CAUSAL": "i1"}  # fmt: skip
            backward = {**shared, "DO": p, "DELTA": "*fp32", "sm_scale": "fp32", "stride_dob": "i32",
                        "stride_doh": "i32", "stride_dot": "i32"}  # fmt: skip
            kernels = (
                (_attn_fwd_kernel, "fwd", {**shared, "OUT": p}),
                (_attn_bwd_dkdv_kernel, "dkdv", {**backward, "DK": p, "DV": p}),
                (_attn_bwd_dq_kernel, "dq", {**backward, "DQ": p}),
            )
            for kernel, which, types in kernels:
                cfg = dict(launch[which])
                warps, stages = cfg.pop("num_warps"), cfg.pop("num_stages")
                constexprs = {
                    "HEAD_DIM": head_dim,
                    "DOT_PRECISION": precision,
                    "DOT_DTYPE": _dot_dtype(dtype, torch.device("cuda")),
                    **cfg,
                }
                name = DTYPE_NAMES[dtype] + ("-ieee" if precision == "ieee" else "")
                label = f"D={head_dim} {name} {which}"
                signature = signature_of(kernel, types, constexprs)
                configs.append(
                    AotConfig("flash_attention", kernel, label, signature, constexprs, warps, stages)
                )
    return configs
