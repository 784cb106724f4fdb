"""pytest-benchmark micro-benchmarks of the kernels: reference vs Triton, forward and forward+backward.

Run: ``pytest tests/benchmarks --benchmark-only`` (pyproject's addopts skip benchmarks by default).
Without CUDA only the reference cases run, at small shapes; the Triton cases skip (the interpreter
would time Python, not the kernel). Gate a change with ``--benchmark-autosave`` on the baseline and
``--benchmark-compare --benchmark-compare-fail=median:10%`` on the candidate (docs/kernels.md).
"""

from __future__ import annotations

import pytest
import torch

from benchbed import kernels

HAS_CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if HAS_CUDA else "cpu")
BACKENDS = [
    "reference",
    pytest.param(
        "triton", marks=[pytest.mark.gpu, pytest.mark.skipif(not HAS_CUDA, reason="Triton timings need CUDA")]
    ),
]
MODES = ["fwd", "fwd+bwd"]


def _sync() -> None:
    if HAS_CUDA:
        torch.cuda.synchronize()


def _run(benchmark, call) -> None:
    def timed():
        call()
        _sync()

    benchmark(timed)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", MODES)
def test_flash_attention(benchmark, backend, mode):
    shape, dtype = ((4, 16, 2048, 64), torch.bfloat16) if HAS_CUDA else ((1, 2, 128, 32), torch.float32)
    fn = kernels.get("flash_attention", backend)
    q, k, v = (torch.randn(shape, device=DEVICE, dtype=dtype, requires_grad=mode != "fwd") for _ in range(3))
    grad = torch.randn(shape, device=DEVICE, dtype=dtype)
    _run(
        benchmark,
        (lambda: fn(q, k, v, causal=True))
        if mode == "fwd"
        else (lambda: fn(q, k, v, causal=True).backward(grad)),
    )


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", MODES)
def test_cross_entropy(benchmark, backend, mode):
    rows, vocab = (8192, 50304) if HAS_CUDA else (64, 1000)
    fn = kernels.get("cross_entropy", backend)
    x = torch.randn(rows, vocab, device=DEVICE, requires_grad=mode != "fwd")
    t = torch.randint(0, vocab, (rows,), device=DEVICE)
    _run(benchmark, (lambda: fn(x, t)) if mode == "fwd" else (lambda: fn(x, t).backward()))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", ["layer_norm", "rms_norm"])
@pytest.mark.parametrize("mode", MODES)
def test_norms(benchmark, backend, op, mode):
    rows, width = (16384, 768) if HAS_CUDA else (256, 64)
    fn = kernels.get(op, backend)
    x = torch.randn(rows, width, device=DEVICE, requires_grad=mode != "fwd")
    w = torch.ones(width, device=DEVICE, requires_grad=mode != "fwd")
    g = torch.randn(rows, width, device=DEVICE)
    call = (lambda: fn(x, w, None, 1e-5)) if op == "layer_norm" else (lambda: fn(x, w, 1e-6))
    _run(benchmark, call if mode == "fwd" else (lambda: call().backward(g)))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", ["adamw_step", "lion_step"])
def test_optimizer_steps(benchmark, backend, op):
    n = 50_000_000 if HAS_CUDA else 100_000
    fn = kernels.get(op, backend)
    p, g, m, v = (torch.randn(n, device=DEVICE) for _ in range(4))
    v.abs_()
    if op == "adamw_step":
        _run(benchmark, lambda: fn(p, g, m, v, 10, 1e-3, (0.9, 0.95), 1e-8, 0.1))
    else:
        _run(benchmark, lambda: fn(p, g, m, 1e-4, (0.9, 0.99), 0.1))
