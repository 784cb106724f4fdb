"""FlashAttention-2 (Dao 2023, "FlashAttention-2: Faster Attention with Better Parallelism and Work
Partitioning"; the algorithm of Dao et al. 2022, "FlashAttention").

Forward: each program owns BLOCK_M query rows of one (batch, head) and streams key/value blocks
through an online softmax (running max m, running sum l, rescaled accumulator), so the [T, T] score
matrix never exists; it stores the output and the row log-sum-exp (base 2, for exp2). Backward
recomputes the probabilities from the stored log-sum-exp: one kernel per key block accumulates dK
and dV over query blocks, one per query block accumulates dQ over key blocks (FA2's split, no
atomics); delta = rowsum(dO * O) is computed first.

Inputs are [batch, heads, seq, head_dim], the signature of benchbed.models.gpt.sdpa_attention.
Head dims 16, 32, 64, 128; any sequence length (masked tails); causal or not; fp32 (with
TF32 tensor-core dots on a GPU), bf16, fp16, all with float32 accumulation.
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
    new_empty_like,
    signature_of,
)

if HAS_TRITON:
    import triton
    import triton.language as tl

HEAD_DIMS = (16, 32, 64, 128)
LOG2_E = 1.4426950408889634


# -- PyTorch reference -----------------------------------------------------------------------------
def attention_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = True
) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + causal mask) v, materialised (eager; any dtype including float64)."""
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
        Q, K, V, OUT, LSE, qk_scale, T,
        CAUSAL, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        DOT_PRECISION: tl.constexpr, DOT_DTYPE: tl.constexpr,
    ):  # fmt: skip
        start_m = tl.program_id(0)
        bh = tl.program_id(1).to(tl.int64)
        base = bh * T * HEAD_DIM
        offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, HEAD_DIM)
        q = tl.load(
            Q + base + offs_m[:, None] * HEAD_DIM + offs_d[None, :], mask=offs_m[:, None] < T, other=0.0
        )
        m_i = tl.full((BLOCK_M,), -float("inf"), dtype=tl.float32)
        l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
        acc = tl.zeros((BLOCK_M, HEAD_DIM), dtype=tl.float32)
        hi = T
        if CAUSAL:  # a runtime flag: one compiled variant serves both (halves the AOT set)
            hi = tl.minimum((start_m + 1) * BLOCK_M, T)
        for start_n in range(0, hi, BLOCK_N):
            offs_n = start_n + tl.arange(0, BLOCK_N)
            kv_offsets = base + offs_n[:, None] * HEAD_DIM + offs_d[None, :]
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
        Q, K, V, DO, LSE, DELTA, DK, DV, qk_scale, sm_scale, T,
        CAUSAL, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        DOT_PRECISION: tl.constexpr, DOT_DTYPE: tl.constexpr,
    ):  # fmt: skip
        start_n = tl.program_id(0) * BLOCK_N
        bh = tl.program_id(1).to(tl.int64)
        base = bh * T * HEAD_DIM
        offs_n = start_n + tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, HEAD_DIM)
        kv_offsets = base + offs_n[:, None] * HEAD_DIM + offs_d[None, :]
        k = tl.load(K + kv_offsets, mask=offs_n[:, None] < T, other=0.0)
        v = tl.load(V + kv_offsets, mask=offs_n[:, None] < T, other=0.0)
        dk = tl.zeros((BLOCK_N, HEAD_DIM), dtype=tl.float32)
        dv = tl.zeros((BLOCK_N, HEAD_DIM), dtype=tl.float32)
        lo = 0
        if CAUSAL:
            lo = (start_n // BLOCK_M) * BLOCK_M
        for start_m in range(lo, T, BLOCK_M):
            offs_m = start_m + tl.arange(0, BLOCK_M)
            q_offsets = base + offs_m[:, None] * HEAD_DIM + offs_d[None, :]
            q = tl.load(Q + q_offsets, mask=offs_m[:, None] < T, other=0.0)
            do = tl.load(DO + q_offsets, mask=offs_m[:, None] < T, other=0.0)
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
        tl.store(DK + kv_offsets, (dk * sm_scale).to(DK.dtype.element_ty), mask=offs_n[:, None] < T)
        tl.store(DV + kv_offsets, dv.to(DV.dtype.element_ty), mask=offs_n[:, None] < T)

    @triton.jit
    def _attn_bwd_dq_kernel(
        Q, K, V, DO, LSE, DELTA, DQ, qk_scale, sm_scale, T,
        CAUSAL, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        DOT_PRECISION: tl.constexpr, DOT_DTYPE: tl.constexpr,
    ):  # fmt: skip
        start_m = tl.program_id(0)
        bh = tl.program_id(1).to(tl.int64)
        base = bh * T * HEAD_DIM
        offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, HEAD_DIM)
        q_offsets = base + offs_m[:, None] * HEAD_DIM + offs_d[None, :]
        q = tl.load(Q + q_offsets, mask=offs_m[:, None] < T, other=0.0)
        do = tl.load(DO + q_offsets, mask=offs_m[:, None] < T, other=0.0)
        lse = tl.load(LSE + bh * T + offs_m, mask=offs_m < T, other=0.0)
        delta = tl.load(DELTA + bh * T + offs_m, mask=offs_m < T, other=0.0)
        dq = tl.zeros((BLOCK_M, HEAD_DIM), dtype=tl.float32)
        hi = T
        if CAUSAL:  # a runtime flag: one compiled variant serves both (halves the AOT set)
            hi = tl.minimum((start_m + 1) * BLOCK_M, T)
        for start_n in range(0, hi, BLOCK_N):
            offs_n = start_n + tl.arange(0, BLOCK_N)
            kv_offsets = base + offs_n[:, None] * HEAD_DIM + offs_d[None, :]
            k = tl.load(K + kv_offsets, mask=offs_n[:, None] < T, other=0.0)
            v = tl.load(V + kv_offsets, mask=offs_n[:, None] < T, other=0.0)
            qk = tl.dot(q.to(DOT_DTYPE), tl.trans(k.to(DOT_DTYPE)), input_precision=DOT_PRECISION) * qk_scale
            keep = (offs_n[None, :] < T) & ((offs_m[:, None] >= offs_n[None, :]) | (CAUSAL == 0))
            p = tl.where(keep, tl.exp2(qk - lse[:, None]), 0.0)
            dp = tl.dot(do.to(DOT_DTYPE), tl.trans(v.to(DOT_DTYPE)), input_precision=DOT_PRECISION)
            ds = p * (dp - delta[:, None])
            dq += tl.dot(ds.to(k.dtype).to(DOT_DTYPE), k.to(DOT_DTYPE), input_precision=DOT_PRECISION)
        tl.store(DQ + q_offsets, (dq * sm_scale).to(DQ.dtype.element_ty), mask=offs_m[:, None] < T)


def launch_config(head_dim: int, dtype: torch.dtype, arch: int = 90) -> dict[str, dict[str, int]]:
    """Block sizes and warps per kernel for a compute capability. The interpreter uses the sm_90
    table, so CPU tests exercise configurations a GPU launches; tests/test_aot.py compiles every
    one for sm_90 and sm_80. Tables chosen so that no configuration spills registers where a tile
    size without spills was found (`benchbed kernels report` shows registers and spills)."""
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


def _dot_precision(dtype: torch.dtype) -> str:
    """fp32 inputs use TF32 tensor-core dots (10-bit mantissa products, fp32 accumulation), as
    torch.backends.cuda.matmul.allow_tf32 would: exact IEEE fp32 dots spill registers at every tile
    size tried on sm_90 and compile 3-5x slower. Ignored for 16-bit inputs and by the interpreter."""
    return "tf32"


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


class _FlashAttentionFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, causal):
        _check(q, k, v)
        batch, heads, seq, head_dim = q.shape
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        o = new_empty_like(q)
        lse = new_empty((batch * heads, seq), device=q.device, dtype=torch.float32)
        sm_scale = 1.0 / math.sqrt(head_dim)
        cfg = launch_config(head_dim, q.dtype, device_arch(q.device))["fwd"]
        grid = (triton.cdiv(seq, cfg["BLOCK_M"]), batch * heads)
        if q.numel():
            launcher(_attn_fwd_kernel, q.device)[grid](
                q, k, v, o, lse, sm_scale * LOG2_E, seq,
                CAUSAL=causal, HEAD_DIM=head_dim, DOT_PRECISION=_dot_precision(q.dtype),
                DOT_DTYPE=_dot_dtype(q.dtype, q.device), **cfg,
            )  # fmt: skip
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.causal = causal
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse = ctx.saved_tensors
        batch, heads, seq, head_dim = q.shape
        do = do.contiguous()
        delta = (o.float() * do.float()).sum(-1).reshape(batch * heads, seq).contiguous()
        dq, dk, dv = new_empty_like(q), new_empty_like(k), new_empty_like(v)
        sm_scale = 1.0 / math.sqrt(head_dim)
        configs = launch_config(head_dim, q.dtype, device_arch(q.device))
        common = {
            "CAUSAL": ctx.causal,
            "HEAD_DIM": head_dim,
            "DOT_PRECISION": _dot_precision(q.dtype),
            "DOT_DTYPE": _dot_dtype(q.dtype, q.device),
        }
        if q.numel():
            cfg = configs["dkdv"]
            launcher(_attn_bwd_dkdv_kernel, q.device)[(triton.cdiv(seq, cfg["BLOCK_N"]), batch * heads)](
                q, k, v, do, lse, delta, dk, dv, sm_scale * LOG2_E, sm_scale, seq, **common, **cfg
            )
            cfg = configs["dq"]
            launcher(_attn_bwd_dq_kernel, q.device)[(triton.cdiv(seq, cfg["BLOCK_M"]), batch * heads)](
                q, k, v, do, lse, delta, dq, sm_scale * LOG2_E, sm_scale, seq, **common, **cfg
            )
        return dq, dk, dv, None


def flash_attention_triton(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = True
) -> torch.Tensor:
    return _FlashAttentionFunction.apply(q, k, v, causal)


# -- ahead-of-time configurations --------------------------------------------------------------------
def aot_configs(arch: int = 90, head_dims: tuple[int, ...] = HEAD_DIMS) -> list[AotConfig]:
    """Three kernels per head dim and dtype (causal is a runtime flag, so it needs no variant)."""
    configs = []
    for head_dim in head_dims:
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            p = POINTER_TYPES[dtype]
            launch = launch_config(head_dim, dtype, arch)
            shared = {"Q": p, "K": p, "V": p, "LSE": "*fp32", "qk_scale": "fp32", "T": "i32", "CAUSAL": "i1"}
            backward = {**shared, "DO": p, "DELTA": "*fp32", "sm_scale": "fp32"}
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
                    "DOT_PRECISION": _dot_precision(dtype),
                    "DOT_DTYPE": _dot_dtype(dtype, torch.device("cuda")),
                    **cfg,
                }
                label = f"D={head_dim} {DTYPE_NAMES[dtype]} {which}"
                signature = signature_of(kernel, types, constexprs)
                configs.append(
                    AotConfig("flash_attention", kernel, label, signature, constexprs, warps, stages)
                )
    return configs
