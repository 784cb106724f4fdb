"""Block-sparse attention: exact softmax attention restricted to a block mask, forward and backward.

Patterns, as options of one ``SparsityPattern`` over blocks of ``block`` tokens: a local window
(Longformer, Beltagy et al. 2020; the "local" half of Child et al. 2019), global blocks that attend
to and are attended by every block (Longformer's global tokens, BigBird's ITC), a strided pattern
(Child et al. 2019, "Generating Long Sequences with Sparse Transformers": key block j for query
block i when (i - j) % stride == 0), and random key blocks per query block (BigBird, Zaheer et al.
2020). A query block always sees itself; causal masking applies on top, token by token.

The Triton kernels are FlashAttention-2's (flash_attention.py) with the key loop replaced by a
lookup table: per query tile, the list of key tiles holding at least one allowed pair (CSR); per key
tile, the query tiles (for dK/dV). Inside a visited tile the exact token mask comes from the layout
(one int8 gather per tile), so tiles and layout blocks need not align. Work and time scale with the
density of the layout; the [T, T] mask never exists. The reference is masked SDPA on the same mask.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from benchbed.kernels._triton import DTYPE_NAMES, HAS_TRITON, POINTER_TYPES, AotConfig, launcher, new_empty
from benchbed.kernels._triton import signature_of as _signature_of
from benchbed.kernels.flash_attention import (
    HEAD_DIMS,
    LOG2_E,
    _check,
    _dot_dtype,
    device_arch,
    dot_precision,
    qkv_strides,
    unit_last,
)

if HAS_TRITON:
    import triton
    import triton.language as tl


@dataclass(frozen=True)
class SparsityPattern:
    block: int = 64  # tokens per layout block (a power of two >= 16)
    window: int = 1  # key blocks on each side of the query block (only earlier ones when causal)
    global_blocks: int = 1  # the first blocks: attend to everything and are attended by everything
    stride: int = 0  # Sparse Transformer strided pattern: (i - j) % stride == 0; 0 = off
    random_blocks: int = 0  # BigBird: random key blocks per query block, fixed by seed
    seed: int = 0

    def check(self) -> None:
        if self.block < 16 or self.block & (self.block - 1):
            raise ValueError(f"block: a power of two >= 16, got {self.block}")
        for name in ("window", "global_blocks", "stride", "random_blocks", "seed"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: must be >= 0, got {getattr(self, name)}")


def block_layout(n_blocks: int, pattern: SparsityPattern, causal: bool = True) -> torch.Tensor:
    """[n_blocks, n_blocks] bool on the CPU: True where query block i may attend to key block j."""
    pattern.check()
    i = torch.arange(n_blocks)[:, None]
    j = torch.arange(n_blocks)[None, :]
    layout = (i - j).abs() <= pattern.window
    layout |= (i < pattern.global_blocks) | (j < pattern.global_blocks)
    if pattern.stride:
        layout |= (i - j) % pattern.stride == 0
    if causal:
        layout &= j <= i
    if pattern.random_blocks:
        gen = torch.Generator().manual_seed(pattern.seed)
        for row in range(n_blocks):
            allowed = row + 1 if causal else n_blocks
            picks = torch.randperm(allowed, generator=gen)[: pattern.random_blocks]
            layout[row, picks] = True
    return layout


def density(seq: int, pattern: SparsityPattern, causal: bool = True) -> float:
    """Allowed (query, key) token pairs over those of dense (causal) attention."""
    mask = token_mask(seq, pattern, causal, torch.device("cpu"))
    dense = seq * (seq + 1) / 2 if causal else seq * seq
    return float(mask.sum()) / dense


def token_mask(seq: int, pattern: SparsityPattern, causal: bool, device) -> torch.Tensor:
    n_blocks = -(-seq // pattern.block)
    layout = block_layout(n_blocks, pattern, causal)
    mask = layout.repeat_interleave(pattern.block, 0).repeat_interleave(pattern.block, 1)[:seq, :seq]
    if causal:
        mask &= torch.ones(seq, seq, dtype=torch.bool).tril()
    return mask.to(device)


# -- PyTorch reference -----------------------------------------------------------------------------
def block_sparse_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool = True,
    pattern: SparsityPattern = SparsityPattern(),
    allow_tf32: bool | None = None,
) -> torch.Tensor:
    """Masked SDPA with the pattern's token mask (materialised [T, T]; any dtype including float64)."""
    mask = token_mask(q.shape[-2], pattern, causal, q.device)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def launch_config(head_dim: int, dtype: torch.dtype, arch: int = 90, precision: str = "tf32"):
    """Tiles per kernel. The per-tile layout gather costs registers that FlashAttention's tiles do not
    have to spare: chosen by compiling candidates for sm_90 and sm_80 under both hint sets and
    keeping the largest without a spill and with some register headroom (tests/test_aot.py checks
    every one). One table for every arch; the interpreter runs it too."""
    del arch  # the same table fits both
    if dtype == torch.float32 and precision == "ieee":
        tile = (16, 32, 4) if head_dim <= 32 else (16, 16, 4)  # (16, 16) spilled 8 bytes at D=16 on sm_80
        table = {"fwd": tile, "dkdv": tile, "dq": tile}
    else:
        wide_dq = head_dim <= 32 and dtype != torch.float32
        table = {
            "fwd": (64, 64, 8) if head_dim <= 64 else (32, 32, 4),
            "dkdv": (32, 32, 4),
            "dq": (64, 64, 8) if wide_dq else (32, 32, 4),
        }
    return {
        which: {"BLOCK_M": m, "BLOCK_N": n, "num_warps": warps, "num_stages": 2}
        for which, (m, n, warps) in table.items()
    }


# -- lookup tables ---------------------------------------------------------------------------------
@functools.lru_cache(maxsize=64)
def _tables(seq: int, pattern: SparsityPattern, causal: bool, block_m: int, block_n: int, device):
    """(layout int8 [nb, nb], CSR over query tiles: offsets, key tiles; CSC over key tiles: offsets,
    query tiles) for tiles of block_m queries x block_n keys."""
    nb = -(-seq // pattern.block)
    layout = block_layout(nb, pattern, causal)
    unit = min(pattern.block, block_m, block_n)  # powers of two: each divides the others
    fine = layout.repeat_interleave(pattern.block // unit, 0).repeat_interleave(pattern.block // unit, 1)
    n_units = -(-seq // unit)
    fine = fine[:n_units, :n_units]
    tiles_m, tiles_n = -(-seq // block_m), -(-seq // block_n)
    fm, fn = block_m // unit, block_n // unit
    padded = torch.zeros(tiles_m * fm, tiles_n * fn, dtype=torch.bool)
    padded[:n_units, :n_units] = fine
    active = padded.view(tiles_m, fm, tiles_n, fn).any(3).any(1)

    def csr(a):
        offsets = torch.zeros(a.shape[0] + 1, dtype=torch.int32)
        offsets[1:] = a.sum(1).cumsum(0)
        return offsets.to(device), a.nonzero()[:, 1].to(torch.int32).to(device)

    return (layout.to(torch.int8).to(device), *csr(active), *csr(active.t().contiguous()))


# -- Triton kernels --------------------------------------------------------------------------------
if HAS_TRITON:

    @triton.jit
    def _allowed(LAYOUT, n_layout, layout_block, offs_m, offs_n, T, CAUSAL):
        """The exact token mask of one tile: layout bit, sequence bounds, causal order."""
        inside = (offs_m[:, None] < T) & (offs_n[None, :] < T)
        bit = tl.load(LAYOUT + (offs_m[:, None] // layout_block) * n_layout + offs_n[None, :] // layout_block,
                      mask=inside, other=0)  # fmt: skip
        return inside & (bit != 0) & ((offs_m[:, None] >= offs_n[None, :]) | (CAUSAL == 0))

    @triton.jit
    def _bsa_fwd_kernel(
        Q, K, V, OUT, LSE, LAYOUT, LUT_OFF, LUT_IDX, qk_scale, T, H, n_layout, layout_block,
        stride_b, stride_h, stride_t,
        CAUSAL, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        DOT_PRECISION: tl.constexpr, DOT_DTYPE: tl.constexpr,
    ):  # fmt: skip
        start_m = tl.program_id(0)
        bh = tl.program_id(1).to(tl.int64)
        base = bh * T * HEAD_DIM
        qkv = (bh // H) * stride_b + (bh % H) * stride_h
        offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, HEAD_DIM)
        q = tl.load(
            Q + qkv + offs_m[:, None] * stride_t + offs_d[None, :], mask=offs_m[:, None] < T, other=0.0
        )
        m_i = tl.full((BLOCK_M,), -float("inf"), dtype=tl.float32)
        l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
        acc = tl.zeros((BLOCK_M, HEAD_DIM), dtype=tl.float32)
        for i in range(tl.load(LUT_OFF + start_m), tl.load(LUT_OFF + start_m + 1)):
            offs_n = tl.load(LUT_IDX + i) * BLOCK_N + tl.arange(0, BLOCK_N)
            kv_offsets = qkv + offs_n[:, None] * stride_t + offs_d[None, :]
            k = tl.load(K + kv_offsets, mask=offs_n[:, None] < T, other=0.0)
            qk = tl.dot(q.to(DOT_DTYPE), tl.trans(k.to(DOT_DTYPE)), input_precision=DOT_PRECISION) * qk_scale
            keep = _allowed(LAYOUT, n_layout, layout_block, offs_m, offs_n, T, CAUSAL)
            qk = tl.where(keep, qk, -float("inf"))
            m_new = tl.maximum(m_i, tl.max(qk, axis=1))
            m_safe = tl.where(m_new == -float("inf"), 0.0, m_new)  # a row with nothing allowed yet
            alpha = tl.exp2(m_i - m_safe)
            p = tl.exp2(qk - m_safe[:, None])
            l_i = l_i * alpha + tl.sum(p, axis=1)
            v = tl.load(V + kv_offsets, mask=offs_n[:, None] < T, other=0.0)
            acc = acc * alpha[:, None] + tl.dot(
                p.to(v.dtype).to(DOT_DTYPE), v.to(DOT_DTYPE), input_precision=DOT_PRECISION
            )
            m_i = m_new
        l_safe = tl.where(l_i == 0.0, 1.0, l_i)
        row_ok = offs_m < T
        tl.store(OUT + base + offs_m[:, None] * HEAD_DIM + offs_d[None, :], (acc / l_safe[:, None]).to(
            OUT.dtype.element_ty), mask=row_ok[:, None])  # fmt: skip
        tl.store(LSE + bh * T + offs_m, m_i + tl.log2(l_safe), mask=row_ok)

    @triton.jit
    def _bsa_bwd_dkdv_kernel(
        Q, K, V, DO, LSE, DELTA, DK, DV, LAYOUT, LUT_OFF, LUT_IDX, qk_scale, sm_scale, T, H, n_layout,
        layout_block, stride_b, stride_h, stride_t, stride_dob, stride_doh, stride_dot,
        CAUSAL, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        DOT_PRECISION: tl.constexpr, DOT_DTYPE: tl.constexpr,
    ):  # fmt: skip
        start_n = tl.program_id(0)
        bh = tl.program_id(1).to(tl.int64)
        base = bh * T * HEAD_DIM
        qkv = (bh // H) * stride_b + (bh % H) * stride_h
        dob = (bh // H) * stride_dob + (bh % H) * stride_doh
        offs_n = start_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, HEAD_DIM)
        kv_offsets = qkv + offs_n[:, None] * stride_t + offs_d[None, :]
        k = tl.load(K + kv_offsets, mask=offs_n[:, None] < T, other=0.0)
        v = tl.load(V + kv_offsets, mask=offs_n[:, None] < T, other=0.0)
        dk = tl.zeros((BLOCK_N, HEAD_DIM), dtype=tl.float32)
        dv = tl.zeros((BLOCK_N, HEAD_DIM), dtype=tl.float32)
        for i in range(tl.load(LUT_OFF + start_n), tl.load(LUT_OFF + start_n + 1)):
            offs_m = tl.load(LUT_IDX + i) * BLOCK_M + tl.arange(0, BLOCK_M)
            q = tl.load(Q + qkv + offs_m[:, None] * stride_t + offs_d[None, :], mask=offs_m[:, None] < T,
                        other=0.0)  # fmt: skip
            do = tl.load(DO + dob + offs_m[:, None] * stride_dot + offs_d[None, :], mask=offs_m[:, None] < T,
                         other=0.0)  # fmt: skip
            lse = tl.load(LSE + bh * T + offs_m, mask=offs_m < T, other=0.0)
            delta = tl.load(DELTA + bh * T + offs_m, mask=offs_m < T, other=0.0)
            qk_t = (
                tl.dot(k.to(DOT_DTYPE), tl.trans(q.to(DOT_DTYPE)), input_precision=DOT_PRECISION) * qk_scale
            )
            keep_t = tl.trans(_allowed(LAYOUT, n_layout, layout_block, offs_m, offs_n, T, CAUSAL))
            p_t = tl.where(keep_t, tl.exp2(qk_t - lse[None, :]), 0.0)
            dv += tl.dot(p_t.to(do.dtype).to(DOT_DTYPE), do.to(DOT_DTYPE), input_precision=DOT_PRECISION)
            dp_t = tl.dot(v.to(DOT_DTYPE), tl.trans(do.to(DOT_DTYPE)), input_precision=DOT_PRECISION)
            ds_t = p_t * (dp_t - delta[None, :])
            dk += tl.dot(ds_t.to(q.dtype).to(DOT_DTYPE), q.to(DOT_DTYPE), input_precision=DOT_PRECISION)
        out = base + offs_n[:, None] * HEAD_DIM + offs_d[None, :]
        tl.store(DK + out, (dk * sm_scale).to(DK.dtype.element_ty), mask=offs_n[:, None] < T)
        tl.store(DV + out, dv.to(DV.dtype.element_ty), mask=offs_n[:, None] < T)

    @triton.jit
    def _bsa_bwd_dq_kernel(
        Q, K, V, DO, LSE, DELTA, DQ, LAYOUT, LUT_OFF, LUT_IDX, qk_scale, sm_scale, T, H, n_layout,
        layout_block, stride_b, stride_h, stride_t, stride_dob, stride_doh, stride_dot,
        CAUSAL, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        DOT_PRECISION: tl.constexpr, DOT_DTYPE: tl.constexpr,
    ):  # fmt: skip
        start_m = tl.program_id(0)
        bh = tl.program_id(1).to(tl.int64)
        base = bh * T * HEAD_DIM
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
        for i in range(tl.load(LUT_OFF + start_m), tl.load(LUT_OFF + start_m + 1)):
            offs_n = tl.load(LUT_IDX + i) * BLOCK_N + tl.arange(0, BLOCK_N)
            kv_offsets = qkv + offs_n[:, None] * stride_t + offs_d[None, :]
            k = tl.load(K + kv_offsets, mask=offs_n[:, None] < T, other=0.0)
            v = tl.load(V + kv_offsets, mask=offs_n[:, None] < T, other=0.0)
            qk = tl.dot(q.to(DOT_DTYPE), tl.trans(k.to(DOT_DTYPE)), input_precision=DOT_PRECISION) * qk_scale
            keep = _allowed(LAYOUT, n_layout, layout_block, offs_m, offs_n, T, CAUSAL)
            p = tl.where(keep, tl.exp2(qk - lse[:, None]), 0.0)
            dp = tl.dot(do.to(DOT_DTYPE), tl.trans(v.to(DOT_DTYPE)), input_precision=DOT_PRECISION)
            ds = p * (dp - delta[:, None])
            dq += tl.dot(ds.to(k.dtype).to(DOT_DTYPE), k.to(DOT_DTYPE), input_precision=DOT_PRECISION)
        tl.store(DQ + base + offs_m[:, None] * HEAD_DIM + offs_d[None, :], (dq * sm_scale).to(DQ.dtype.element_ty),
                 mask=offs_m[:, None] < T)  # fmt: skip


class _BlockSparseFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, causal, pattern, precision):
        _check(q, k, v)
        batch, heads, seq, head_dim = q.shape
        q, k, v, strides = qkv_strides(q, k, v)
        o = new_empty(q.shape, device=q.device, dtype=q.dtype)
        lse = new_empty((batch * heads, seq), device=q.device, dtype=torch.float32)
        configs = launch_config(head_dim, q.dtype, device_arch(q.device), precision)
        cfg = configs["fwd"]
        layout, offsets, indices, _, _ = _tables(
            seq, pattern, causal, cfg["BLOCK_M"], cfg["BLOCK_N"], q.device
        )
        sm_scale = 1.0 / math.sqrt(head_dim)
        common = {"CAUSAL": causal, "HEAD_DIM": head_dim, "DOT_PRECISION": precision,
                  "DOT_DTYPE": _dot_dtype(q.dtype, q.device)}  # fmt: skip
        if q.numel():
            launcher(_bsa_fwd_kernel, q.device)[(len(offsets) - 1, batch * heads)](
                q, k, v, o, lse, layout, offsets, indices, sm_scale * LOG2_E, seq, heads, layout.shape[0],
                pattern.block, *strides, **common, **cfg,
            )  # fmt: skip
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.meta = (causal, pattern, precision, strides, configs, common)
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse = ctx.saved_tensors
        causal, pattern, precision, strides, configs, common = ctx.meta
        batch, heads, seq, head_dim = q.shape
        do = unit_last(do)
        delta = (o.float() * do.float()).sum(-1).reshape(batch * heads, seq).contiguous()
        dq, dk, dv = (new_empty(q.shape, device=q.device, dtype=q.dtype) for _ in range(3))
        sm_scale = 1.0 / math.sqrt(head_dim)
        if q.numel():
            cfg = configs["dkdv"]
            layout, _, _, offsets, indices = _tables(
                seq, pattern, causal, cfg["BLOCK_M"], cfg["BLOCK_N"], q.device
            )
            args = (sm_scale * LOG2_E, sm_scale, seq, heads, layout.shape[0], pattern.block, *strides,
                    *do.stride()[:3])  # fmt: skip
            launcher(_bsa_bwd_dkdv_kernel, q.device)[(len(offsets) - 1, batch * heads)](
                q, k, v, do, lse, delta, dk, dv, layout, offsets, indices, *args, **common, **cfg
            )
            cfg = configs["dq"]
            layout, offsets, indices, _, _ = _tables(
                seq, pattern, causal, cfg["BLOCK_M"], cfg["BLOCK_N"], q.device
            )
            launcher(_bsa_bwd_dq_kernel, q.device)[(len(offsets) - 1, batch * heads)](
                q, k, v, do, lse, delta, dq, layout, offsets, indices, *args, **common, **cfg
            )
        return dq, dk, dv, None, None, None


def block_sparse_attention_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool = True,
    pattern: SparsityPattern = SparsityPattern(),
    allow_tf32: bool | None = None,
) -> torch.Tensor:
    """q, k, v [B, H, T, D] (D in 16/32/64/128; read through their strides); one pattern for all heads."""
    pattern.check()
    return _BlockSparseFunction.apply(q, k, v, causal, pattern, dot_precision(q.dtype, allow_tf32))


# -- ahead-of-time configurations --------------------------------------------------------------------
def aot_configs(arch: int = 90, head_dims: tuple[int, ...] = HEAD_DIMS) -> list[AotConfig]:
    """Every (head dim, dtype, dot precision) of the three lookup-table kernels at their tiles."""
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
            shared = {"Q": p, "K": p, "V": p, "LSE": "*fp32", "LAYOUT": "*i8", "LUT_OFF": "*i32", "LUT_IDX": "*i32",
                      "qk_scale": "fp32", "T": "i32", "H": "i32", "n_layout": "i32", "layout_block": "i32",
                      "stride_b": "i32", "stride_h": "i32", "stride_t": "i32", "CAUSAL": "i1"}  # fmt: skip
            backward = {**shared, "DO": p, "DELTA": "*fp32", "sm_scale": "fp32", "stride_dob": "i32",
                        "stride_doh": "i32", "stride_dot": "i32"}  # fmt: skip
            for kernel, which, types in (
                (_bsa_fwd_kernel, "fwd", {**shared, "OUT": p}),
                (_bsa_bwd_dkdv_kernel, "dkdv", {**backward, "DK": p, "DV": p}),
                (_bsa_bwd_dq_kernel, "dq", {**backward, "DQ": p}),
            ):
                cfg = dict(launch[which])
                warps, stages = cfg.pop("num_warps"), cfg.pop("num_stages")
                constexprs = {"HEAD_DIM": head_dim, "DOT_PRECISION": precision,
                              "DOT_DTYPE": _dot_dtype(dtype, torch.device("cuda")), **cfg}  # fmt: skip
                name = DTYPE_NAMES[dtype] + ("-ieee" if precision == "ieee" else "")
                signature = _signature_of(kernel, types, constexprs)
                configs.append(AotConfig("block_sparse_attention", kernel, f"D={head_dim} {name} {which}",
                                         signature, constexprs, warps, stages))  # fmt: skip
    return configs
