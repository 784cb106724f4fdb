"""Triton kernels against float64 references: under Triton's interpreter on the CPU (marker
`interpreter`, small odd shapes) and on a CUDA device (marker `gpu`, larger shapes).

Every check draws fresh random inputs, runs the kernel with its output buffers NaN-filled before
launch (``poisoned_outputs``: an element the kernel forgets to write stays NaN and fails), and
compares outputs and gradients with the same computation in float64 on the same (already rounded)
inputs. The comparison is ``max|actual - ref| <= rtol * max|ref| + cond + atol``.

``cond`` is the conditioning term (``conditioned``): how far the float64 reference itself moves when
every input element is multiplied by (1 + u r), r uniform in [-1, 1], u the unit roundoff of the
kernel's multiplications (IEEE fp32 2^-24, TF32 2^-11, fp8/int8 the quantisation step), times 4, the
largest over two draws. ``rtol * max|ref|`` alone cannot see conditioning: attention at input
magnitude ~30 has scores of order 1e3, where a relative input error u moves the output by ~1e3 u,
far beyond rtol * max|ref|, while at magnitude 1 the same kernel is accurate to rtol. The term is
what a backward-stable kernel in that arithmetic is entitled to; a wrong mask or scale (errors of
order 1) still fails by orders of magnitude.

Tolerances, per dtype of the kernel's inputs and outputs (unit roundoff u: fp32 2^-24, fp16 2^-11,
bf16 2^-8):
- fp32: rtol 2e-5 -- float32 accumulation over at most a few thousand terms costs ~sqrt(n) u
  relative to the largest term, far below 2e-5; on a GPU, attention uses TF32 dots (10-bit mantissa,
  u = 2^-11), so fp32 attention there gets the fp16 tolerance.
- fp16: rtol 4e-3 -- the output is rounded once (u = 4.9e-4) and attention rounds the
  probabilities to fp16 before the P.V product; 8 u leaves room for both, and a wrong mask, scale
  or missing tile (errors of order 1) fails it by orders of magnitude.
- bf16: rtol 3e-2 -- the same argument with u = 3.9e-3 (8 u).
"""

from __future__ import annotations

import math

import pytest
import torch

from benchbed.kernels import (
    block_sparse_attention,
    cross_entropy,
    flash_attention,
    norms,
    optimizer_steps,
    quantized_linear,
)
from benchbed.kernels._triton import poisoned_outputs

RTOL = {torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}
ATOL = 1e-6
HAS_CUDA = torch.cuda.is_available()


def assert_close(actual: torch.Tensor, ref: torch.Tensor, rtol: float, what: str, cond: float = 0.0) -> None:
    assert not torch.isnan(actual).any(), f"{what}: NaN in the kernel's output (an element never written?)"
    err = (actual.double().cpu() - ref.double().cpu()).abs().max().item()
    bound = rtol * ref.double().abs().max().item() + cond + ATOL
    assert err <= bound, f"{what}: max abs error {err:.3g} > {bound:.3g}"


def conditioned(fn, inputs, u: float, samples: int = 2, factor: float = 4.0, seed: int = 0) -> list[float]:
    """Per output of ``fn`` (float64, returns a tuple of tensors): ``factor`` times the largest change
    of that output when every input element is perturbed by a relative ``u`` (see the module docstring)."""
    gen = torch.Generator().manual_seed(seed)
    inputs = [x.detach().double().cpu() for x in inputs]
    base = fn(*inputs)
    spread = [0.0] * len(base)
    for _ in range(samples):
        moved = fn(
            *(x * (1 + u * (2 * torch.rand(x.shape, generator=gen, dtype=torch.float64) - 1)) for x in inputs)
        )
        spread = [max(s, (m - b).abs().max().item()) for s, m, b in zip(spread, moved, base, strict=True)]
    return [factor * s for s in spread]


def attention_with_grads(causal, d_out):
    """float64 attention -> (out, dq, dk, dv) for ``conditioned``."""

    def fn(q, k, v):
        q, k, v = (t.clone().requires_grad_(True) for t in (q, k, v))
        out = flash_attention.attention_reference(q, k, v, causal=causal)
        grads = torch.autograd.grad(out, (q, k, v), d_out.double().cpu())
        return (out.detach(), *grads)

    return fn


def leaf(t: torch.Tensor) -> torch.Tensor:
    return t.detach().clone().requires_grad_(True)


def as_f64(t: torch.Tensor) -> torch.Tensor:
    return t.detach().double().requires_grad_(True)


# -- checkers shared by the interpreter and GPU tests -------------------------------------------
def check_flash_attention(
    batch, heads, seq, head_dim, dtype, causal, device, rtol, *, scale=1.0, strided=False, allow_tf32=None, u=0.0
):  # fmt: skip
    """``strided``: q, k, v as the GPT makes them (split from one [B, T, 3C] projection and transposed)
    and a non-contiguous output gradient, so the kernels read through strides. ``u``: the unit roundoff
    of the dots for the conditioning term (0: none)."""
    gen = torch.Generator().manual_seed(seq * 1000 + head_dim)
    shape = (batch, heads, seq, head_dim)
    if strided:
        qkv = (scale * torch.randn(batch, seq, 3 * heads * head_dim, generator=gen)).to(device, dtype)
        q, k, v = (
            t.view(batch, seq, heads, head_dim).transpose(1, 2) for t in qkv.split(heads * head_dim, 2)
        )
        d_out = torch.randn(batch, seq, heads, head_dim, generator=gen).to(device, dtype).transpose(1, 2)
    else:
        q, k, v = ((scale * torch.randn(*shape, generator=gen)).to(device, dtype) for _ in range(3))
        d_out = torch.randn(*shape, generator=gen).to(device, dtype)
    qt, kt, vt = (t.detach().requires_grad_(True) for t in (q, k, v))
    with poisoned_outputs():
        out = flash_attention.flash_attention_triton(qt, kt, vt, causal=causal, allow_tf32=allow_tf32)
        out.backward(d_out)
    q64, k64, v64 = as_f64(q), as_f64(k), as_f64(v)
    ref = flash_attention.attention_reference(q64, k64, v64, causal=causal)
    ref.backward(d_out.double())
    cond = conditioned(attention_with_grads(causal, d_out), (q, k, v), u) if u else [0.0] * 4
    label = f"attention T={seq} D={head_dim} {dtype} causal={causal} scale={scale}"
    assert out.dtype == dtype and out.shape == q.shape
    assert_close(out, ref, rtol, f"{label} out", cond[0])
    # gradients are sums over T terms of products of rounded quantities: one extra factor of 2
    grads = (("dq", qt.grad, q64.grad), ("dk", kt.grad, k64.grad), ("dv", vt.grad, v64.grad))
    for (name, got, want), c in zip(grads, cond[1:], strict=True):
        assert_close(got, want, 2 * rtol, f"{label} {name}", c)


def check_block_sparse_attention(
    batch, heads, seq, head_dim, dtype, causal, pattern, device, rtol, strided=True
):
    """Against float64 masked SDPA on the pattern's token mask; outputs and gradients."""
    gen = torch.Generator().manual_seed(seq * 7 + head_dim)
    width = heads * head_dim
    if strided:  # the GPT's layout: transposed views of one projection
        qkv = torch.randn(batch, seq, 3 * width, generator=gen).to(device, dtype)
        q, k, v = (t.view(batch, seq, heads, head_dim).transpose(1, 2) for t in qkv.split(width, 2))
    else:
        q, k, v = (
            torch.randn(batch, heads, seq, head_dim, generator=gen).to(device, dtype) for _ in range(3)
        )
    d_out = torch.randn(batch, heads, seq, head_dim, generator=gen).to(device, dtype)
    qt, kt, vt = (t.detach().requires_grad_(True) for t in (q, k, v))
    with poisoned_outputs():
        out = block_sparse_attention.block_sparse_attention_triton(qt, kt, vt, causal, pattern)
        out.backward(d_out)
    q64, k64, v64 = as_f64(q), as_f64(k), as_f64(v)
    ref = block_sparse_attention.block_sparse_attention_reference(q64, k64, v64, causal, pattern)
    ref.backward(d_out.double())
    label = f"block_sparse T={seq} D={head_dim} {dtype} causal={causal} {pattern}"
    assert out.dtype == dtype and out.shape == q.shape
    assert_close(out, ref, rtol, f"{label} out")
    for name, got, want in (("dq", qt.grad, q64.grad), ("dk", kt.grad, k64.grad), ("dv", vt.grad, v64.grad)):
        assert_close(got, want, 2 * rtol, f"{label} {name}")


def check_cross_entropy(rows, vocab, dtype, device, rtol, weighted=False):
    gen = torch.Generator().manual_seed(rows * 7 + vocab)
    logits = (3 * torch.randn(rows, vocab, generator=gen)).to(device, dtype)
    targets = torch.randint(0, vocab, (rows,), generator=gen)
    targets[:: max(2, rows // 3)] = -100  # some ignored rows
    targets = targets.to(device)
    weights = torch.rand(rows, generator=gen).to(device) if weighted else None
    x = leaf(logits)
    with poisoned_outputs():
        loss = cross_entropy.cross_entropy_triton(x, targets, -100, token_weights=weights)
        loss.backward(torch.tensor(1.7, device=device))
    x64 = as_f64(logits)
    ref = cross_entropy.cross_entropy_reference(
        x64, targets, -100, token_weights=None if weights is None else weights.double()
    )
    (ref * 1.7).backward()
    assert_close(loss.reshape(1), ref.reshape(1), max(rtol, 2e-5), f"cross_entropy V={vocab} {dtype} loss")
    assert_close(x.grad, x64.grad, rtol, f"cross_entropy V={vocab} {dtype} dlogits")


def check_linear_cross_entropy(tokens, width, vocab, chunk_size, dtype, device, rtol, weighted=False):
    gen = torch.Generator().manual_seed(tokens + vocab + chunk_size)
    hidden = torch.randn(tokens, width, generator=gen).to(device, dtype)
    weight = (torch.randn(vocab, width, generator=gen) / math.sqrt(width)).to(device, dtype)
    targets = torch.randint(0, vocab, (tokens,), generator=gen)
    targets[1::5] = -100
    targets = targets.to(device)
    weights = torch.rand(tokens, generator=gen).to(device) if weighted else None
    h, w = leaf(hidden), leaf(weight)
    with poisoned_outputs():
        loss = cross_entropy.linear_cross_entropy_triton(
            h, w, targets, chunk_size, -100, token_weights=weights
        )
        loss.backward()
    h64, w64 = as_f64(hidden), as_f64(weight)
    ref = cross_entropy.linear_cross_entropy_reference(
        h64, w64, targets, ignore_index=-100, token_weights=None if weights is None else weights.double()
    )
    ref.backward()
    label = f"linear_cross_entropy N={tokens} V={vocab} chunk={chunk_size} {dtype}"
    assert_close(loss.reshape(1), ref.reshape(1), 2 * rtol, f"{label} loss")
    assert_close(h.grad, h64.grad, 2 * rtol, f"{label} dhidden")
    assert_close(w.grad, w64.grad, 2 * rtol, f"{label} dweight")


def check_quantized_linear(kind, tokens, d_in, d_out, dtype, scaling, grad, device, with_bias=True):
    """Kernel vs the same quantisation dequantised and multiplied in float64. The quantised operands
    are identical (one quantize() in both paths), fp8 and int8 products are exact in the kernel's
    fp32/int32 accumulators, so what remains is fp32 summation order and the output's rounding:
    fp32 outputs rtol 2e-5, bf16 outputs bf16's."""
    gen = torch.Generator().manual_seed(tokens * 3 + d_in)
    x = torch.randn(2, tokens, d_in, generator=gen).to(device, dtype)
    w = (torch.randn(d_out, d_in, generator=gen) / math.sqrt(d_in)).to(device)
    b = torch.randn(d_out, generator=gen).to(device) if with_bias else None
    g = torch.randn(2, tokens, d_out, generator=gen).to(device, dtype)
    fn = quantized_linear.fp8_linear_triton if kind == "fp8" else quantized_linear.int8_linear_triton
    ref_fn = (
        quantized_linear.fp8_linear_reference if kind == "fp8" else quantized_linear.int8_linear_reference
    )
    xt, wt = leaf(x), leaf(w)
    with poisoned_outputs():
        y = fn(xt, wt, b, scaling, grad)
        y.backward(g)
    x64, w64 = leaf(x), leaf(w)
    ref = ref_fn(x64, w64, b, scaling, grad, acc=torch.float64)
    ref.backward(g)
    rtol = RTOL[dtype]
    label = f"{kind}_linear {tokens}x{d_in}->{d_out} {dtype} {scaling} grad={grad}"
    assert y.dtype == dtype and y.shape == (2, tokens, d_out)
    assert_close(y, ref, rtol, f"{label} out")
    assert_close(xt.grad, x64.grad, 2 * rtol, f"{label} dx")
    # dW: the fp8 kernel writes it in the weight's fp32; unquantised (int8's SwitchBack, grad="bf16")
    # it is a matmul in the inputs' dtype
    unquantised = kind == "int8" or grad == "bf16"
    assert_close(wt.grad, w64.grad, 2 * (rtol if unquantised else RTOL[torch.float32]), f"{label} dweight")


def check_norm(kind, rows, width, dtype, device, rtol, with_bias=True):
    gen = torch.Generator().manual_seed(rows * 31 + width)
    x = (torch.randn(rows, width, generator=gen) * 2 + 0.5).to(device, dtype)
    weight = (1 + 0.3 * torch.randn(width, generator=gen)).to(device)
    bias = (0.1 * torch.randn(width, generator=gen)).to(device) if with_bias else None
    d_out = torch.randn(rows, width, generator=gen).to(device, dtype)
    xt, wt = leaf(x), leaf(weight)
    bt = leaf(bias) if bias is not None else None
    with poisoned_outputs():
        if kind == "rms":
            y = norms.rms_norm_triton(xt, wt, 1e-6)
        else:
            y = norms.layer_norm_triton(xt, wt, bt, 1e-5)
        y.backward(d_out)
    x64, w64 = as_f64(x), as_f64(weight)
    b64 = as_f64(bias) if bias is not None else None
    ref = (
        norms.rms_norm_reference(x64, w64, 1e-6)
        if kind == "rms"
        else norms.layer_norm_reference(x64, w64, b64, 1e-5)
    )
    ref.backward(d_out.double())
    label = f"{kind}_norm {rows}x{width} {dtype} bias={bias is not None}"
    assert y.dtype == dtype
    assert_close(y, ref, rtol, f"{label} out")
    assert_close(xt.grad, x64.grad, 2 * rtol, f"{label} dx")
    # dweight/dbias sum `rows` terms computed in fp32 from rounded inputs: rtol of the input dtype
    assert_close(wt.grad, w64.grad, 2 * rtol, f"{label} dweight")
    if bias is not None:
        assert_close(bt.grad, b64.grad, 2 * rtol, f"{label} dbias")


def check_optimizer(algorithm, n, param_dtype, device, steps=3):
    """Several steps; each compared with the float64 reference applied to the kernel's own previous
    parameters and states, so a one-step error cannot hide behind (or be blamed on) earlier rounding."""
    gen = torch.Generator().manual_seed(n)
    params = torch.randn(n, generator=gen).to(device, param_dtype)
    exp_avg = torch.zeros(n, device=device)
    exp_avg_sq = torch.zeros(n, device=device)
    lr, betas, eps, wd = 3e-3, (0.9, 0.95), 1e-8, 0.1
    for step in range(1, steps + 1):
        grads = torch.randn(n, generator=gen).to(device, param_dtype)
        grads[:7] = 0.0  # Lion at step 1: sign(0) = 0; AdamW: 0/(0+eps)
        p64, m64, v64 = params.double(), exp_avg.double(), exp_avg_sq.double()
        before = params.clone()
        if algorithm == "adamw":
            optimizer_steps.adamw_step_triton(params, grads, exp_avg, exp_avg_sq, step, lr, betas, eps, wd)
            optimizer_steps.adamw_step_reference(p64, grads.double(), m64, v64, step, lr, betas, eps, wd)
            assert_close(exp_avg_sq, v64, 1e-6, f"adamw step {step} exp_avg_sq")
        else:
            optimizer_steps.lion_step_triton(params, grads, exp_avg, lr, betas, wd)
            optimizer_steps.lion_step_reference(p64, grads.double(), m64, lr, betas, wd)
        assert_close(exp_avg, m64, 1e-6, f"{algorithm} step {step} exp_avg")
        # fp32: a few float32 roundings of p (|p| ~ 1) and of an update of size lr: ~1e-7 relative.
        # bf16 parameters: the kernel rounds p once to bf16; one ulp (2^-7 relative) because Triton's
        # interpreter converts fp32 -> bf16 by truncation where a GPU rounds to nearest (half an ulp).
        param_rtol = 1e-6 if param_dtype == torch.float32 else 2**-7
        assert_close(params, p64, param_rtol, f"{algorithm} step {step} params {param_dtype}")
        assert (params != before).any(), "the step changed nothing: the comparison would be vacuous"


# -- interpreter tests (CPU) ----------------------------------------------------------------------
interpreter = pytest.mark.interpreter

ATTENTION_CASES = [  # (batch, heads, seq, head_dim, dtype, causal): tails that are not block multiples
    (1, 2, 37, 16, torch.float32, True),
    (2, 1, 150, 16, torch.float32, False),
    (1, 1, 130, 64, torch.bfloat16, True),
    (1, 1, 67, 64, torch.float16, False),
    (1, 1, 70, 128, torch.float32, True),
    (1, 1, 33, 128, torch.bfloat16, False),
    (1, 1, 1, 32, torch.float16, True),
]


@interpreter
@pytest.mark.parametrize("batch,heads,seq,head_dim,dtype,causal", ATTENTION_CASES)
def test_flash_attention_interpreter(batch, heads, seq, head_dim, dtype, causal):
    check_flash_attention(batch, heads, seq, head_dim, dtype, causal, "cpu", RTOL[dtype])


@interpreter
@pytest.mark.parametrize("head_dim,dtype,causal", [(16, torch.float32, True), (64, torch.bfloat16, False)])
def test_flash_attention_reads_strided_qkv_interpreter(monkeypatch, head_dim, dtype, causal):
    """The GPT's q/k/v (transposed views of one projection) and a transposed output gradient are read
    through their strides: no copy is made, and the results are those of contiguous inputs."""
    copies = []
    original = flash_attention.qkv_strides
    monkeypatch.setattr(
        flash_attention,
        "qkv_strides",
        lambda q, k, v: copies.append(not q.is_contiguous()) or original(q, k, v),
    )
    check_flash_attention(2, 3, 45, head_dim, dtype, causal, "cpu", RTOL[dtype], strided=True)
    assert copies == [True]
    qkv = torch.randn(2, 45, 3 * 3 * head_dim)
    q, k, v = (t.view(2, 45, 3, head_dim).transpose(1, 2) for t in qkv.split(3 * head_dim, 2))
    q2, k2, v2, strides = original(q, k, v)
    assert q2.data_ptr() == q.data_ptr() and v2.data_ptr() == v.data_ptr()  # views, not copies
    assert strides == (45 * 9 * head_dim, head_dim, 9 * head_dim)


def test_fp32_attention_dot_precision_follows_torch_unless_given():
    matmul = torch.backends.cuda.matmul
    before = matmul.allow_tf32
    try:
        matmul.allow_tf32 = False
        assert flash_attention.dot_precision(torch.float32) == "ieee"
        assert flash_attention.dot_precision(torch.float32, allow_tf32=True) == "tf32"
        matmul.allow_tf32 = True
        assert flash_attention.dot_precision(torch.float32) == "tf32"
        assert flash_attention.dot_precision(torch.float32, allow_tf32=False) == "ieee"
    finally:
        matmul.allow_tf32 = before
    assert flash_attention.dot_precision(torch.bfloat16, allow_tf32=False) == "tf32"  # unused for 16-bit
    ieee = flash_attention.launch_config(128, torch.float32, 90, "ieee")
    assert ieee != flash_attention.launch_config(128, torch.float32, 90, "tf32")


def test_tolerance_scales_with_conditioning():
    """The conditioning term separates arithmetic errors from conditioning: attention on inputs of
    magnitude 30 with TF32 dots (simulated: q, k, v rounded to 10 mantissa bits, then float64) is
    off by several percent -- inside the TF32 term (u = 2^-11), far outside the IEEE fp32 one
    (u = 2^-24), so a kernel that used TF32 where IEEE was asked for fails (at magnitude 1 too).
    The fp32 term relative to max|ref| grows with the magnitude; rtol * max|ref| does not."""
    gen = torch.Generator().manual_seed(5)
    d_out = torch.randn(1, 2, 40, 32, generator=gen, dtype=torch.float64)
    fn = attention_with_grads(True, d_out)

    def tf32(t):  # round to nearest with 10 explicit mantissa bits
        m, e = torch.frexp(t)
        return torch.ldexp(torch.round(m * 2**11) / 2**11, e)

    relative = {}
    for scale in (30.0, 1.0):
        q, k, v = (scale * torch.randn(1, 2, 40, 32, generator=gen, dtype=torch.float64) for _ in range(3))
        exact = fn(q, k, v)[0]
        simulated = fn(tf32(q), tf32(k), tf32(v))[0]
        err = (simulated - exact).abs().max().item()
        ieee, tf = conditioned(fn, (q, k, v), 2**-24)[0], conditioned(fn, (q, k, v), 2**-11)[0]
        plain = RTOL[torch.float32] * exact.abs().max().item()
        assert err <= tf + plain, (scale, err, tf)
        assert err > ieee + plain, (scale, err, ieee, plain)
        relative[scale] = ieee / exact.abs().max().item()
        if scale == 30.0:  # the old rule (fp16's tolerance for TF32) fails it too
            assert err > RTOL[torch.float16] * exact.abs().max().item()
    assert relative[30.0] > 10 * relative[1.0]  # the term grows with the conditioning; rtol does not


BSA = block_sparse_attention.SparsityPattern
BLOCK_SPARSE_CASES = [  # odd lengths; layout blocks smaller and larger than the kernel tiles
    (1, 2, 150, 16, torch.float32, True, BSA(block=16, window=1, global_blocks=1, stride=3, random_blocks=1)),
    (2, 1, 201, 64, torch.bfloat16, False, BSA(block=32, window=1, global_blocks=1)),
    (1, 1, 333, 32, torch.float16, True, BSA(block=128, window=0, global_blocks=0, random_blocks=1, seed=3)),
    (1, 1, 97, 128, torch.float32, True, BSA(block=16, window=2, global_blocks=0, stride=2)),
]


@interpreter
@pytest.mark.parametrize("batch,heads,seq,head_dim,dtype,causal,pattern", BLOCK_SPARSE_CASES)
def test_block_sparse_attention_interpreter(batch, heads, seq, head_dim, dtype, causal, pattern):
    check_block_sparse_attention(batch, heads, seq, head_dim, dtype, causal, pattern, "cpu", RTOL[dtype])


def test_block_sparse_layout_patterns():
    """Window, global, strided and random blocks, causal on top, the diagonal always kept."""
    layout = block_sparse_attention.block_layout(8, BSA(window=1, global_blocks=1, stride=0), causal=True)
    expected = torch.zeros(8, 8, dtype=torch.bool)
    for i in range(8):
        expected[i, max(0, i - 1) : i + 1] = True
        expected[i, 0] = True
    assert torch.equal(layout, expected)
    strided = block_sparse_attention.block_layout(9, BSA(window=0, global_blocks=0, stride=4), causal=False)
    assert strided[8, 0] and strided[8, 4] and strided[0, 8] and not strided[8, 5]
    random = block_sparse_attention.block_layout(16, BSA(window=0, global_blocks=0, random_blocks=2), True)
    assert (random.sum(1) <= 3).all() and random.diagonal().all() and not random.triu(1).any()
    assert torch.equal(
        random, block_sparse_attention.block_layout(16, BSA(window=0, global_blocks=0, random_blocks=2), True)
    )
    full = block_sparse_attention.density(256, BSA(block=16, window=16, global_blocks=0))
    assert full == 1.0 and block_sparse_attention.density(1024, BSA()) < 0.5


@interpreter
@pytest.mark.parametrize(
    "kind,tokens,d_in,d_out,dtype,scaling,grad",
    [
        ("fp8", 37, 70, 45, torch.float32, "row", "e5m2"),
        ("fp8", 19, 130, 67, torch.float32, "tensor", "e5m2"),
        ("fp8", 11, 64, 33, torch.bfloat16, "row", "bf16"),
        ("int8", 37, 70, 45, torch.float32, "row", "e5m2"),
        ("int8", 13, 96, 150, torch.bfloat16, "row", "e5m2"),
    ],
)
def test_quantized_linear_interpreter(kind, tokens, d_in, d_out, dtype, scaling, grad):
    check_quantized_linear(kind, tokens, d_in, d_out, dtype, scaling, grad, "cpu")


def test_quantize_rounds_to_the_format_and_factors_scales():
    t = torch.tensor([[1.0, -2.0, 0.5], [100.0, 3.0, -50.0]])
    q, s = quantized_linear.quantize(t, torch.int8, 0)  # per row
    assert q.dtype == torch.int8 and s.shape == (2,)
    assert q[0].tolist() == [64, -127, 32] and q[1].tolist() == [127, 4, -64]
    torch.testing.assert_close(s, torch.tensor([2.0, 100.0]) / 127)
    q8, s8 = quantized_linear.quantize(t, quantized_linear.E4M3, None)
    assert q8.dtype == torch.float8_e4m3fn and s8.numel() == 1
    assert q8.float().abs().max().item() == 448.0  # the amax maps to the format's largest value
    rel = ((q8.float() * s8) - t).abs() / t.abs()
    assert rel.max().item() <= 2**-4  # e4m3: 3 mantissa bits, round to nearest
    qc, sc = quantized_linear.quantize(t, torch.int8, 1)  # per column
    assert sc.shape == (3,) and qc[:, 0].tolist() == [1, 127]


@interpreter
@pytest.mark.parametrize(
    "rows,vocab,dtype,weighted",
    [(7, 5003, torch.float32, False), (5, 300, torch.bfloat16, False), (6, 4099, torch.float16, True)],
)
def test_cross_entropy_interpreter(rows, vocab, dtype, weighted):
    check_cross_entropy(rows, vocab, dtype, "cpu", RTOL[dtype], weighted)


@interpreter
@pytest.mark.parametrize("offset", [1e4, -3e3])
def test_cross_entropy_gradient_at_large_logit_offsets_interpreter(offset):
    """Logits around 1e4: an fp32 log-sum-exp is off by ~5e-4 there, which exp(x - lse) used to turn
    into a 1.2-1.6e-4 relative gradient error; keeping the row max and log-sum apart gives eager
    fp32's precision (checked at the fp32 tolerance against float64 on the same fp32 inputs)."""
    gen = torch.Generator().manual_seed(11)
    logits = (offset + 3 * torch.randn(6, 301, generator=gen)).float()
    targets = torch.randint(0, 301, (6,), generator=gen)
    x = leaf(logits)
    with poisoned_outputs():
        loss = cross_entropy.cross_entropy_triton(x, targets)
        loss.backward()
    x64 = as_f64(logits)
    ref = cross_entropy.cross_entropy_reference(x64, targets)
    ref.backward()
    assert_close(loss.reshape(1), ref.reshape(1), RTOL[torch.float32], f"offset {offset} loss")
    assert_close(x.grad, x64.grad, RTOL[torch.float32], f"offset {offset} dlogits")


@interpreter
@pytest.mark.parametrize("bad", [301, 1000, -1, -7])
@pytest.mark.parametrize("op", ["cross_entropy", "linear_cross_entropy"])
def test_cross_entropy_refuses_out_of_range_targets_interpreter(op, bad):
    logits, hidden, weight = torch.randn(4, 301), torch.randn(4, 16), torch.randn(301, 16)
    targets = torch.tensor([0, -100, bad, 300])
    with pytest.raises(ValueError, match=f"target {bad} is outside \\[0, 301\\)"):
        if op == "cross_entropy":
            cross_entropy.cross_entropy_triton(logits, targets)
        else:
            cross_entropy.linear_cross_entropy_triton(hidden, weight, targets, 2)
    targets[2] = -100  # ignore_index itself is fine
    assert torch.isfinite(cross_entropy.cross_entropy_triton(logits, targets))


@interpreter
def test_cross_entropy_kernel_writes_nan_for_a_bad_target_interpreter():
    """The kernel's own guard (what a GPU run relies on between asynchronous checks): a target >= V or
    negative gives NaN, not inf or a wrong finite loss."""
    x = torch.randn(3, 50)
    t = torch.tensor([50, -4, 2])
    loss, rowmax, logsum = torch.empty(3), torch.empty(3), torch.empty(3)
    coef = torch.full((3,), 1 / 3)
    cross_entropy._launch(x, x, t, coef, loss, rowmax, logsum, coef, -100, mode=0)
    assert torch.isnan(loss[:2]).all() and torch.isfinite(loss[2])


@interpreter
@pytest.mark.parametrize("requires", [(False, False), (True, False), (False, True)])
def test_linear_cross_entropy_computes_only_the_gradients_asked_for_interpreter(monkeypatch, requires):
    modes = []
    launch = cross_entropy._launch
    monkeypatch.setattr(
        cross_entropy, "_launch", lambda *a, mode: modes.append(mode) or launch(*a, mode=mode)
    )
    gen = torch.Generator().manual_seed(2)
    hidden = torch.randn(10, 16, generator=gen).requires_grad_(requires[0])
    weight = torch.randn(97, 16, generator=gen).requires_grad_(requires[1])
    targets = torch.randint(0, 97, (10,), generator=gen)
    loss = cross_entropy.linear_cross_entropy_triton(hidden, weight, targets, 4)
    ref = cross_entropy.linear_cross_entropy_reference(hidden.double(), weight.double(), targets)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    assert set(modes) == ({0} if not any(requires) else {2}) and len(modes) == 3
    if any(requires):
        loss.backward()
        assert (hidden.grad is not None) == requires[0] and (weight.grad is not None) == requires[1]
    with torch.no_grad():
        modes.clear()
        cross_entropy.linear_cross_entropy_triton(hidden, weight, targets, 4)
        assert modes == [0, 0, 0]


@interpreter
@pytest.mark.parametrize(
    "tokens,width,vocab,chunk_size,dtype,weighted",
    [
        (23, 16, 517, 8, torch.float32, False),
        (19, 32, 4200, 19, torch.float32, True),
        (9, 16, 97, 4, torch.bfloat16, False),
    ],
)
def test_linear_cross_entropy_interpreter(tokens, width, vocab, chunk_size, dtype, weighted):
    check_linear_cross_entropy(tokens, width, vocab, chunk_size, dtype, "cpu", RTOL[dtype], weighted)


@interpreter
@pytest.mark.parametrize(
    "kind,rows,width,dtype,with_bias",
    [
        ("layer", 13, 100, torch.float32, True),
        ("layer", 5, 1000, torch.bfloat16, False),
        ("layer", 3, 64, torch.float16, True),
        ("rms", 11, 100, torch.float32, False),
        ("rms", 4, 257, torch.bfloat16, False),
    ],
)
def test_norms_interpreter(kind, rows, width, dtype, with_bias):
    check_norm(kind, rows, width, dtype, "cpu", RTOL[dtype], with_bias)


@interpreter
@pytest.mark.parametrize("algorithm", ["adamw", "lion"])
@pytest.mark.parametrize("param_dtype", [torch.float32, torch.bfloat16])
def test_optimizer_steps_interpreter(algorithm, param_dtype):
    check_optimizer(algorithm, 3001, param_dtype, "cpu")  # 3001: not a multiple of the 1024 block


# -- GPU tests --------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("seq", [1000, 2048])
def test_flash_attention_gpu(head_dim, dtype, causal, seq):
    # fp32 without TF32 (torch's default): IEEE dots, fp32 tolerance plus the fp32 conditioning term
    u = 2**-24 if dtype == torch.float32 else 0.0
    check_flash_attention(2, 4, seq, head_dim, dtype, causal, "cuda", RTOL[dtype], strided=True, u=u)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("allow_tf32,scale", [(True, 1.0), (True, 30.0), (False, 30.0)])
def test_flash_attention_fp32_precision_gpu(allow_tf32, scale):
    """TF32 is held to its own conditioning term (u = 2^-11); IEEE fp32 at magnitude 30 to fp32's."""
    u = 2**-11 if allow_tf32 else 2**-24
    check_flash_attention(1, 2, 1000, 64, torch.float32, True, "cuda", RTOL[torch.float32], scale=scale,
                          allow_tf32=allow_tf32, u=u)  # fmt: skip


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_block_sparse_attention_gpu(head_dim, dtype):
    check_block_sparse_attention(2, 4, 2000, head_dim, dtype, True, BSA(), "cuda", RTOL[dtype])
    check_block_sparse_attention(
        1, 2, 1000, head_dim, dtype, False, BSA(block=128, stride=3), "cuda", RTOL[dtype]
    )


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize(
    "kind,scaling,grad", [("fp8", "row", "e5m2"), ("fp8", "tensor", "bf16"), ("int8", "row", "e5m2")]
)
def test_quantized_linear_gpu(kind, scaling, grad):
    if kind == "fp8" and torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("fp8 tensor cores need sm_89+")
    check_quantized_linear(kind, 1000, 768, 3072, torch.bfloat16, scaling, grad, "cuda")
    check_quantized_linear(kind, 333, 200, 130, torch.float32, scaling, grad, "cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_cross_entropy_gpu(dtype):
    check_cross_entropy(512, 50257, dtype, "cuda", RTOL[dtype])
    check_linear_cross_entropy(1000, 256, 50257, 256, dtype, "cuda", RTOL[dtype], weighted=True)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_norms_gpu(dtype):
    check_norm("layer", 4097, 768, dtype, "cuda", RTOL[dtype], True)
    check_norm("rms", 1000, 4096, dtype, "cuda", RTOL[dtype], False)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("algorithm", ["adamw", "lion"])
def test_optimizer_steps_gpu(algorithm):
    check_optimizer(algorithm, 10_000_019, torch.float32, "cuda")


@interpreter
@pytest.mark.parametrize("head_dim,dtype", [(64, torch.bfloat16), (128, torch.float32)])
def test_flash_attention_interpreter_with_sm80_tiles(monkeypatch, head_dim, dtype):
    """The interpreter normally runs the sm_90 tile table; run the A100 table's tiles too."""
    monkeypatch.setattr(flash_attention, "device_arch", lambda device: 80)
    check_flash_attention(1, 1, 77, head_dim, dtype, True, "cpu", RTOL[dtype])
