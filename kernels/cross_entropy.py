"""Fused cross-entropy: softmax + negative log-likelihood per row, never storing probabilities.

`cross_entropy(logits, targets)`: one program per row streams the vocabulary in blocks with the
online log-sum-exp (Milakov & Gimelshein 2018, "Online normalizer calculation for softmax"),
keeps only the row's log-sum-exp for the backward, which recomputes softmax block by block.

`linear_cross_entropy(hidden, weight, targets, chunk_size)`: the output projection fused in, after
Wijmans et al. 2024 ("Cut Your Losses in Large-Vocabulary Language Models") and Liger-Kernel's
FusedLinearCrossEntropy: tokens are processed in chunks; for each chunk the logits are computed,
the kernel turns them *in place* into d(loss)/d(logits) (the loss is linear in its per-token
terms, so the gradient is known in the forward), and the chunk's contributions to d(hidden) and
d(weight) are accumulated. Peak extra memory is one [chunk, vocab] block in the inputs' dtype
instead of [tokens, vocab] (plus d(hidden), and d(weight) in fp32); when neither input needs a
gradient (evaluation, no_grad) the chunks are only reduced to the loss.

Loss = sum_i coef_i * nll_i with coef_i = 1 / (number of non-ignored targets) by default (the mean
of F.cross_entropy); `token_weights` gives other per-token coefficients (weighted sequences).
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
    signature_of,
)

if HAS_TRITON:
    import triton
    import triton.language as tl

BLOCK_V = 4096  # vocabulary columns per loop iteration: 16 KiB of fp32 per program, no spills


# -- PyTorch references ----------------------------------------------------------------------------
def cross_entropy_reference(
    logits: torch.Tensor,
    targets: torch.Tensor,
    ignore_index: int = -100,
    token_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    x = logits.float() if logits.dtype != torch.float64 else logits
    x, t = x.reshape(-1, x.shape[-1]), targets.reshape(-1)
    if token_weights is None:
        return F.cross_entropy(x, t, ignore_index=ignore_index)
    nll = F.cross_entropy(x, t, ignore_index=ignore_index, reduction="none")
    return (nll * token_weights.reshape(-1).to(nll.dtype)).sum()


def linear_cross_entropy_reference(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    chunk_size: int = 4096,
    ignore_index: int = -100,
    token_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Eager: full logits, then cross-entropy (chunk_size is accepted and ignored)."""
    logits = hidden.reshape(-1, hidden.shape[-1]) @ weight.t()
    x = logits.float() if logits.dtype != torch.float64 else logits
    t = targets.reshape(-1)
    if token_weights is None:
        return F.cross_entropy(x, t, ignore_index=ignore_index)
    nll = F.cross_entropy(x, t, ignore_index=ignore_index, reduction="none")
    return (nll * token_weights.reshape(-1).to(nll.dtype)).sum()


# -- Triton kernel -------------------------------------------------------------------------------------
if HAS_TRITON:

    @triton.jit
    def _cross_entropy_kernel(
        LOGITS, GRAD, TARGETS, COEF, LOSS, ROWMAX, LOGSUM, DLOSS, stride_row, V, ignore_index,
        MODE: tl.constexpr, BLOCK_V: tl.constexpr,
    ):  # fmt: skip
        """MODE 0 (forward): store each row's nll, max and log-sum of exp(x - max).
        MODE 1 (backward): read them, write coef * dloss * (softmax - onehot) to GRAD.
        MODE 2 (fused linear CE): both in one call, GRAD may be LOGITS itself (overwritten in place).

        The row max m and log s = log sum exp(x - m) are kept apart, never added into one
        log-sum-exp: at a logit offset of 1e4 an fp32 lse carries an absolute rounding error of
        ~5e-4, which exp(x - lse) turns into a 5e-4 relative gradient error. x - m is exact (both are
        fp32 values of the row, within a factor of 2 where it matters) and log s <= log V is small,
        so exp((x - m) - log s) keeps fp32's relative precision. An invalid target (>= V, or
        negative and not ignore_index) gives a NaN loss and gradient row, never a silent value."""
        row = tl.program_id(0).to(tl.int64)
        target = tl.load(TARGETS + row)
        valid = target != ignore_index
        bad = valid & ((target < 0) | (target >= V))
        if MODE != 1:
            m = -float("inf")
            s = 0.0
            target_logit = 0.0
            for start in range(0, V, BLOCK_V):
                cols = start + tl.arange(0, BLOCK_V)
                x = tl.load(LOGITS + row * stride_row + cols, mask=cols < V, other=-float("inf")).to(
                    tl.float32
                )
                m_new = tl.maximum(m, tl.max(x, axis=0))
                s = s * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), axis=0)
                m = m_new
                target_logit += tl.sum(tl.where(cols == target, x, 0.0), axis=0)
            log_s = tl.log(s)
            tl.store(ROWMAX + row, m)
            tl.store(LOGSUM + row, log_s)
            nll = tl.where(valid, (m - target_logit) + log_s, 0.0)
            tl.store(LOSS + row, tl.where(bad, float("nan"), nll))
        else:
            m = tl.load(ROWMAX + row)
            log_s = tl.load(LOGSUM + row)
        if MODE != 0:
            scale = tl.where(valid, tl.load(COEF + row) * tl.load(DLOSS), 0.0)
            scale = tl.where(bad, float("nan"), scale)
            for start in range(0, V, BLOCK_V):
                cols = start + tl.arange(0, BLOCK_V)
                x = tl.load(LOGITS + row * stride_row + cols, mask=cols < V, other=-float("inf")).to(
                    tl.float32
                )
                grad = (tl.exp((x - m) - log_s) - tl.where(cols == target, 1.0, 0.0)) * scale
                tl.store(GRAD + row * stride_row + cols, grad.to(GRAD.dtype.element_ty), mask=cols < V)


def _coefficients(
    targets: torch.Tensor, ignore_index: int, token_weights: torch.Tensor | None
) -> torch.Tensor:
    """Per-token loss coefficients (float32): 1/n_valid (the mean) or the given weights."""
    if token_weights is not None:
        return token_weights.reshape(-1).float().contiguous()
    valid = targets != ignore_index
    # all targets ignored: 0/0 = NaN, as F.cross_entropy's mean gives
    return valid.float() / valid.sum().float()


def check_targets(targets: torch.Tensor, vocab: int, ignore_index: int) -> None:
    """Refuse targets outside [0, vocab) that are not ``ignore_index``. On the CPU: a ValueError naming
    the first bad target. On a GPU: ``torch._assert_async``, so no host synchronisation per step; a
    bad target fails the next synchronising call, and the kernel has already written NaN for its row
    (a target >= V would otherwise give an infinite loss, a negative one a wrong finite loss)."""
    bad = (targets != ignore_index) & ((targets < 0) | (targets >= vocab))
    if targets.device.type == "cuda":
        torch._assert_async(~bad.any())
        return
    if bad.any():
        first = targets[bad][0].item()
        raise ValueError(
            f"cross_entropy: target {first} is outside [0, {vocab}) and is not ignore_index ({ignore_index})"
        )


def _launch(logits, grad, targets, coef, loss, rowmax, logsum, dloss, ignore_index, mode):
    rows, v = logits.shape
    if rows:
        launcher(_cross_entropy_kernel, logits.device)[(rows,)](
            logits, grad, targets, coef, loss, rowmax, logsum, dloss, logits.stride(0), v, ignore_index,
            MODE=mode, BLOCK_V=BLOCK_V, num_warps=8,
        )  # fmt: skip


class _CrossEntropyFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, targets, ignore_index, token_weights):
        x = logits.reshape(-1, logits.shape[-1]).contiguous()
        t = targets.reshape(-1).contiguous()
        check_targets(t, x.shape[1], ignore_index)
        rows = x.shape[0]
        loss_rows = new_empty(rows, device=x.device, dtype=torch.float32)
        rowmax = new_empty(rows, device=x.device, dtype=torch.float32)
        logsum = new_empty(rows, device=x.device, dtype=torch.float32)
        coef = _coefficients(t, ignore_index, token_weights)
        _launch(x, x, t, coef, loss_rows, rowmax, logsum, coef, ignore_index, mode=0)
        ctx.save_for_backward(x, t, coef, rowmax, logsum)
        ctx.ignore_index = ignore_index
        ctx.shape = logits.shape
        return (loss_rows * coef).sum()

    @staticmethod
    def backward(ctx, dloss):
        x, t, coef, rowmax, logsum = ctx.saved_tensors
        grad = new_empty_like(x)
        dloss32 = dloss.float().reshape(1).contiguous()
        _launch(x, grad, t, coef, rowmax, rowmax, logsum, dloss32, ctx.ignore_index, mode=1)
        return grad.view(ctx.shape), None, None, None


def cross_entropy_triton(
    logits: torch.Tensor,
    targets: torch.Tensor,
    ignore_index: int = -100,
    token_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    return _CrossEntropyFunction.apply(logits, targets, ignore_index, token_weights)


class _LinearCrossEntropyFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk_size, ignore_index, token_weights, needs_grad):
        """``needs_grad`` (hidden, weight): what autograd will ask for. Without either, each chunk is
        only reduced to its loss (mode 0: no gradient written, no gradient matmuls)."""
        grad_h_needed, grad_w_needed = needs_grad
        h = hidden.reshape(-1, hidden.shape[-1])
        t = targets.reshape(-1).contiguous()
        check_targets(t, weight.shape[0], ignore_index)
        coef = _coefficients(t, ignore_index, token_weights)
        n_tokens = h.shape[0]
        mode = 2 if grad_h_needed or grad_w_needed else 0
        grad_hidden = new_empty_like(h) if grad_h_needed else None
        grad_weight = (
            torch.zeros(weight.shape, device=weight.device, dtype=torch.float32) if grad_w_needed else None
        )
        loss = torch.zeros((), device=h.device, dtype=torch.float32)
        one = torch.ones(1, device=h.device, dtype=torch.float32)
        loss_rows = new_empty(min(chunk_size, n_tokens), device=h.device, dtype=torch.float32)
        rowmax, logsum = new_empty_like(loss_rows), new_empty_like(loss_rows)
        for start in range(0, n_tokens, chunk_size):
            stop = min(start + chunk_size, n_tokens)
            h_chunk = h[start:stop]
            logits = h_chunk @ weight.t()  # the only [chunk, vocab] buffer; becomes its own gradient
            rows = stop - start
            _launch(
                logits, logits, t[start:stop], coef[start:stop], loss_rows, rowmax, logsum, one,
                ignore_index, mode=mode,
            )  # fmt: skip
            loss += (loss_rows[:rows] * coef[start:stop]).sum()
            if grad_hidden is not None:
                grad_hidden[start:stop] = logits @ weight
            if grad_weight is not None:
                # in the inputs' dtype (fp32 accumulation inside the matmul), one [vocab, d] product
                # per chunk added to the fp32 sum: no fp32 copy of the [chunk, vocab] block
                grad_weight += logits.t() @ h_chunk
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.shapes = (hidden.shape, weight.dtype)
        return loss

    @staticmethod
    def backward(ctx, dloss):
        grad_hidden, grad_weight = ctx.saved_tensors
        hidden_shape, weight_dtype = ctx.shapes
        dh = dw = None
        if grad_hidden is not None:
            dh = (grad_hidden * dloss.to(grad_hidden.dtype)).view(hidden_shape)
        if grad_weight is not None:
            dw = (grad_weight * dloss.float()).to(weight_dtype)
        return dh, dw, None, None, None, None, None


def linear_cross_entropy_triton(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    chunk_size: int = 4096,
    ignore_index: int = -100,
    token_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    grad = torch.is_grad_enabled()
    needs_grad = (grad and hidden.requires_grad, grad and weight.requires_grad)
    return _LinearCrossEntropyFunction.apply(
        hidden, weight, targets, chunk_size, ignore_index, token_weights, needs_grad
    )


# -- ahead-of-time configurations --------------------------------------------------------------------
def aot_configs() -> list[AotConfig]:
    configs = []
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        p = POINTER_TYPES[dtype]
        types = {"LOGITS": p, "GRAD": p, "TARGETS": "*i64", "COEF": "*fp32", "LOSS": "*fp32",
                 "ROWMAX": "*fp32", "LOGSUM": "*fp32", "DLOSS": "*fp32", "stride_row": "i32", "V": "i32",
                 "ignore_index": "i32"}  # fmt: skip
        for mode, what in ((0, "forward"), (1, "backward"), (2, "fused linear fwd+grad")):
            constexprs = {"MODE": mode, "BLOCK_V": BLOCK_V}
            label = f"{what} {DTYPE_NAMES[dtype]}"
            op = "linear_cross_entropy" if mode == 2 else "cross_entropy"
            signature = signature_of(_cross_entropy_kernel, types, constexprs)
            configs.append(AotConfig(op, _cross_entropy_kernel, label, signature, constexprs, 8, 1))
    return configs
