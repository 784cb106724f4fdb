"""The attention kernels as ``torch.library`` custom ops, so ``torch.compile`` traces through them
instead of breaking the graph at an ``autograd.Function`` it cannot see into.

``benchbed::flash_attention_fwd`` / ``_bwd`` and ``benchbed::block_sparse_attention_fwd`` / ``_bwd``
have fake (meta) implementations for tracing and are tied together with ``register_autograd``. On
CUDA they run the Triton kernels (the same forward/backward code as the autograd Functions); on any
other device the forward is the PyTorch reference and the backward recomputes its gradients,
written out (the log-sum-exp output is then an unused zero buffer). ``flash_attention`` and
``block_sparse_attention`` below are the callables: the signature of the registry's ops.
"""

from __future__ import annotations

import torch

from benchbed.kernels import block_sparse_attention as bsa
from benchbed.kernels import flash_attention as fa
from benchbed.kernels._triton import HAS_TRITON

Tensor = torch.Tensor


class _Ctx:
    """Stands in for an autograd ctx so the custom ops reuse the autograd Functions' code."""

    def save_for_backward(self, *tensors):
        self.saved_tensors = tensors


def _on_triton(t: Tensor) -> bool:
    return HAS_TRITON and t.device.type == "cuda"


def _precision(q: Tensor, allow_tf32: bool) -> str:
    return fa.dot_precision(q.dtype, allow_tf32)


def _lse_like(q: Tensor) -> Tensor:
    b, h, t, _ = q.shape
    return q.new_zeros((b * h, t), dtype=torch.float32)


def _reference_grads(
    do: Tensor, q: Tensor, k: Tensor, v: Tensor, keep: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """dq, dk, dv of softmax(q k^T / sqrt(d), masked to ``keep``) v, written out (a custom op's
    implementation runs below autograd, so it cannot ask autograd for them)."""
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    qf, kf, vf, dof = (t.to(acc) for t in (q, k, v, do))
    scale = qf.shape[-1] ** -0.5
    scores = (qf @ kf.transpose(-2, -1)) * scale
    p = torch.softmax(scores.masked_fill(~keep, float("-inf")), dim=-1)
    dv = p.transpose(-2, -1) @ dof
    dp = dof @ vf.transpose(-2, -1)
    ds = p * (dp - (dp * p).sum(-1, keepdim=True))
    dq = (ds @ kf) * scale
    dk = (ds.transpose(-2, -1) @ qf) * scale
    return tuple(g.to(q.dtype).contiguous() for g in (dq, dk, dv))


def _causal(seq: int, device) -> Tensor:
    return torch.ones(seq, seq, dtype=torch.bool, device=device).tril()


# -- flash_attention -------------------------------------------------------------------------------
@torch.library.custom_op("benchbed::flash_attention_fwd", mutates_args=())
def flash_attention_fwd(
    q: Tensor, k: Tensor, v: Tensor, causal: bool, allow_tf32: bool
) -> tuple[Tensor, Tensor]:
    if _on_triton(q):
        ctx = _Ctx()
        out = fa._FlashAttentionFunction.forward(ctx, q, k, v, causal, _precision(q, allow_tf32))
        return out, ctx.saved_tensors[4]
    return fa.attention_reference(q, k, v, causal).contiguous(), _lse_like(q)


@flash_attention_fwd.register_fake
def _(q, k, v, causal, allow_tf32):
    return q.new_empty(q.shape), _lse_like(q)


@torch.library.custom_op("benchbed::flash_attention_bwd", mutates_args=())
def flash_attention_bwd(
    do: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, causal: bool, allow_tf32: bool
) -> tuple[Tensor, Tensor, Tensor]:
    if _on_triton(q):
        ctx = _Ctx()
        q, k, v, strides = fa.qkv_strides(q, k, v)
        ctx.saved_tensors = (q, k, v, out, lse)
        ctx.causal, ctx.precision, ctx.strides = causal, _precision(q, allow_tf32), strides
        return fa._FlashAttentionFunction.backward(ctx, do)[:3]
    seq = q.shape[-2]
    keep = _causal(seq, q.device) if causal else torch.ones(seq, seq, dtype=torch.bool, device=q.device)
    return _reference_grads(do, q, k, v, keep)


@flash_attention_bwd.register_fake
def _(do, q, k, v, out, lse, causal, allow_tf32):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _fa_setup(ctx, inputs, output):
    q, k, v, causal, allow_tf32 = inputs
    ctx.save_for_backward(q, k, v, *output)
    ctx.options = (causal, allow_tf32)


def _fa_backward(ctx, d_out, d_lse):
    q, k, v, out, lse = ctx.saved_tensors
    dq, dk, dv = flash_attention_bwd(d_out.contiguous(), q, k, v, out, lse, *ctx.options)
    return dq, dk, dv, None, None


flash_attention_fwd.register_autograd(_fa_backward, setup_context=_fa_setup)


def flash_attention(
    q: Tensor, k: Tensor, v: Tensor, causal: bool = True, allow_tf32: bool | None = None
) -> Tensor:
    tf32 = torch.backends.cuda.matmul.allow_tf32 if allow_tf32 is None else allow_tf32
    return flash_attention_fwd(q, k, v, causal, bool(tf32))[0]


# -- block_sparse_attention -------------------------------------------------------------------------
def _pattern(fields: list[int]) -> bsa.SparsityPattern:
    return bsa.SparsityPattern(*fields)


@torch.library.custom_op("benchbed::block_sparse_attention_fwd", mutates_args=())
def block_sparse_attention_fwd(
    q: Tensor, k: Tensor, v: Tensor, causal: bool, pattern: list[int], allow_tf32: bool
) -> tuple[Tensor, Tensor]:
    if _on_triton(q):
        ctx = _Ctx()
        out = bsa._BlockSparseFunction.forward(
            ctx, q, k, v, causal, _pattern(pattern), _precision(q, allow_tf32)
        )
        return out, ctx.saved_tensors[4]
    return bsa.block_sparse_attention_reference(q, k, v, causal, _pattern(pattern)).contiguous(), _lse_like(q)


@block_sparse_attention_fwd.register_fake
def _(q, k, v, causal, pattern, allow_tf32):
    return q.new_empty(q.shape), _lse_like(q)


@torch.library.custom_op("benchbed::block_sparse_attention_bwd", mutates_args=())
def block_sparse_attention_bwd(
    do: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, causal: bool, pattern: list[int],
    allow_tf32: bool,
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    p = _pattern(pattern)
    if _on_triton(q):
        ctx = _Ctx()
        q, k, v, strides = fa.qkv_strides(q, k, v)
        precision = _precision(q, allow_tf32)
        configs = bsa.launch_config(q.shape[-1], q.dtype, fa.device_arch(q.device), precision)
        common = {"CAUSAL": causal, "HEAD_DIM": q.shape[-1], "DOT_PRECISION": precision,
                  "DOT_DTYPE": fa._dot_dtype(q.dtype, q.device)}  # fmt: skip
        ctx.saved_tensors = (q, k, v, out, lse)
        ctx.meta = (causal, p, precision, strides, configs, common)
        return bsa._BlockSparseFunction.backward(ctx, do)[:3]
    return _reference_grads(do, q, k, v, bsa.token_mask(q.shape[-2], p, causal, q.device))


@block_sparse_attention_bwd.register_fake
def _(do, q, k, v, out, lse, causal, pattern, allow_tf32):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _bsa_setup(ctx, inputs, output):
    q, k, v, causal, pattern, allow_tf32 = inputs
    ctx.save_for_backward(q, k, v, *output)
    ctx.options = (causal, pattern, allow_tf32)


def _bsa_backward(ctx, d_out, d_lse):
    q, k, v, out, lse = ctx.saved_tensors
    dq, dk, dv = block_sparse_attention_bwd(d_out.contiguous(), q, k, v, out, lse, *ctx.options)
    return dq, dk, dv, None, None, None


block_sparse_attention_fwd.register_autograd(_bsa_backward, setup_context=_bsa_setup)


def block_sparse_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    causal: bool = True,
    pattern: bsa.SparsityPattern = bsa.SparsityPattern(),
    allow_tf32: bool | None = None,
) -> Tensor:
    pattern.check()
    tf32 = torch.backends.cuda.matmul.allow_tf32 if allow_tf32 is None else allow_tf32
    fields = [pattern.block, pattern.window, pattern.global_blocks, pattern.stride, pattern.random_blocks,
              pattern.seed]  # fmt: skip
    return block_sparse_attention_fwd(q, k, v, causal, fields, bool(tf32))[0]
