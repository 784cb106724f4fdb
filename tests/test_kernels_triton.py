"""Triton kernels against float64 references: under Triton's interpreter on the CPU (marker
`interpreter`, small odd shapes) and on a CUDA device (marker `gpu`, larger shapes).

Every check draws fresh random inputs, runs the kernel with its output buffers NaN-filled before
launch (``poisoned_outputs``: an element the kernel forgets to write stays NaN and fails), and
compares outputs and gradients with the same computation in float64 on the same (already rounded)
inputs. The comparison is ``max|actual - ref| <= rtol * max|ref| + atol``.

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

from benchbed.kernels import cross_entropy, flash_attention, norms, optimizer_steps
from benchbed.kernels._triton import poisoned_outputs

RTOL = {torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}
ATOL = 1e-6
HAS_CUDA = torch.cuda.is_available()


def assert_close(actual: torch.Tensor, ref: torch.Tensor, rtol: float, what: str) -> None:
    assert not torch.isnan(actual).any(), f"{what}: NaN in the kernel's output (an element never written?)"
    err = (actual.double().cpu() - ref.double().cpu()).abs().max().item()
    bound = rtol * ref.double().abs().max().item() + ATOL
    assert err <= bound, f"{what}: max abs error {err:.3g} > {bound:.3g}"


def leaf(t: torch.Tensor) -> torch.Tensor:
    return t.detach().clone().requires_grad_(True)


def as_f64(t: torch.Tensor) -> torch.Tensor:
    return t.detach().double().requires_grad_(True)


# -- checkers shared by the interpreter and GPU tests -------------------------------------------
def check_flash_attention(batch, heads, seq, head_dim, dtype, causal, device, rtol):
    gen = torch.Generator().manual_seed(seq * 1000 + head_dim)
    q, k, v = (torch.randn(batch, heads, seq, head_dim, generator=gen).to(device, dtype) for _ in range(3))
    d_out = torch.randn(batch, heads, seq, head_dim, generator=gen).to(device, dtype)
    qt, kt, vt = leaf(q), leaf(k), leaf(v)
    with poisoned_outputs():
        out = flash_attention.flash_attention_triton(qt, kt, vt, causal=causal)
        out.backward(d_out)
    q64, k64, v64 = as_f64(q), as_f64(k), as_f64(v)
    ref = flash_attention.attention_reference(q64, k64, v64, causal=causal)
    ref.backward(d_out.double())
    label = f"attention T={seq} D={head_dim} {dtype} causal={causal}"
    assert out.dtype == dtype and out.shape == q.shape
    assert_close(out, ref, rtol, f"{label} out")
    # gradients are sums over T terms of products of rounded quantities: one extra factor of 2
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
@pytest.mark.parametrize(
    "rows,vocab,dtype,weighted",
    [(7, 5003, torch.float32, False), (5, 300, torch.bfloat16, False), (6, 4099, torch.float16, True)],
)
def test_cross_entropy_interpreter(rows, vocab, dtype, weighted):
    check_cross_entropy(rows, vocab, dtype, "cpu", RTOL[dtype], weighted)


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
    # fp32 attention uses TF32 dots on the GPU: the fp16 tolerance (both have a 10-bit mantissa)
    rtol = RTOL[torch.float16] if dtype == torch.float32 else RTOL[dtype]
    check_flash_attention(2, 4, seq, head_dim, dtype, causal, "cuda", rtol)


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
