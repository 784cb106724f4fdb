"""Launching Triton kernels on a GPU or under the interpreter, and describing them for AOT compiles.

A kernel module decorates its kernels with ``@triton.jit`` as usual. ``launcher(kernel, device)``
returns what to launch: the compiled ``JITFunction`` for CUDA tensors, and for CPU tensors Triton's
interpreter (``InterpretedFunction``, the machinery ``TRITON_INTERPRET=1`` selects) built from the
same Python function. Choosing per call instead of through the environment means importing this
package never changes how other code runs, and a GPU process can still check a kernel on the CPU.

Every kernel module also lists the configurations it can launch with as ``AotConfig`` rows, so
``benchbed kernels report`` and tests/test_aot.py compile each of them ahead of time for sm_90 and
sm_80 with the ``ptxas`` Triton ships, without a GPU.
"""

from __future__ import annotations

import contextlib
import functools
import os
from dataclasses import dataclass, field
from typing import Any

import torch

# Triton 3.9 warns once per process unless this is set; fusion (FMA contraction) stays on, as in 3.9.
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

try:  # Triton is a Linux dependency; the references work without it
    import triton
    import triton.language as tl  # noqa: F401  (re-exported for kernel modules)

    HAS_TRITON = True
except ImportError:  # pragma: no cover
    triton = None
    HAS_TRITON = False

#: torch dtype -> Triton signature type of a pointer to it
POINTER_TYPES = {torch.float32: "*fp32", torch.bfloat16: "*bf16", torch.float16: "*fp16"}
DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16", torch.float64: "fp64"}


class TritonUnavailable(RuntimeError):
    """The Triton backend was asked for where it cannot run."""


@functools.cache
def _interpreted(python_fn):
    from triton.runtime.interpreter import InterpretedFunction

    return InterpretedFunction(python_fn)


@functools.cache
def _jitted(python_fn):
    from triton.runtime.jit import JITFunction

    return JITFunction(python_fn)


def python_function(kernel):
    """The undecorated function behind a ``@triton.jit`` kernel (JITFunction or InterpretedFunction)."""
    return kernel.fn


def _call_interpreted(jit_function, *args, **kwargs):
    """A device-function call inside an interpreted kernel, with the language patches undone after."""
    from triton.runtime.interpreter import _patch_lang

    scope = _patch_lang(jit_function.fn)
    try:
        return _interpreted(jit_function.fn).rewrite()(*args, **kwargs)
    finally:
        scope.restore()


class _InterpretedLaunch:
    """``kernel[grid](...)`` under the interpreter. Triton's own library functions (``tl.sum``,
    ``tl.max``, ...) are ``JITFunction`` objects when TRITON_INTERPRET was unset at import, and a
    JITFunction refuses to be called outside a compiled kernel; while our interpreted kernel runs,
    such calls are routed to their interpreted form, exactly what TRITON_INTERPRET=1 would have built."""

    def __init__(self, python_fn):
        self.interpreted = _interpreted(python_fn)

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            from triton.runtime.jit import JITFunction

            kwargs.pop("num_warps", None)
            kwargs.pop("num_stages", None)
            original = JITFunction.__call__
            JITFunction.__call__ = _call_interpreted
            try:
                return self.interpreted[grid](*args, **kwargs)
            finally:
                JITFunction.__call__ = original

        return launch


def launcher(kernel, device: torch.device):
    """What to launch for tensors on ``device``: compiled on CUDA, interpreted on the CPU."""
    if not HAS_TRITON:
        raise TritonUnavailable("triton is not installed")
    if device.type == "cuda":
        return _jitted(python_function(kernel))
    if device.type == "cpu":
        return _InterpretedLaunch(python_function(kernel))
    raise TritonUnavailable(f"no Triton launch path for device '{device.type}'")


def compilable(kernel):
    """A JITFunction for ahead-of-time compiles, whatever TRITON_INTERPRET said at import time."""
    return _jitted(python_function(kernel))


@dataclass(frozen=True)
class AotConfig:
    """One launch configuration of one kernel: everything ``triton.compile`` needs."""

    op: str
    kernel: Any  # the @triton.jit function
    label: str  # e.g. "D=64 bf16 causal"
    signature: dict[str, str]  # argument name -> Triton type ("*bf16", "i32", "fp32", "constexpr")
    constexprs: dict[str, Any] = field(default_factory=dict)
    num_warps: int = 4
    num_stages: int = 3
    #: which integer arguments carry Triton's divisibility-by-16 hint: "pointers" (what the runtime
    #: compiles for torch allocations with odd sizes) or "all" (sizes and strides multiples of 16 too)
    hints: str = "pointers"
    archs: tuple[int, ...] | None = None  # None: every arch; else only these (fp8 needs sm_89+)

    @property
    def kernel_name(self) -> str:
        return python_function(self.kernel).__name__

    def attrs(self) -> dict[tuple[int, ...], list]:
        """``ASTSource`` attributes: the divisibility hints Triton's launcher adds at run time for a
        16-byte aligned pointer (always, for torch allocations) and an integer that is a multiple of 16."""
        hinted = ("*",) if self.hints == "pointers" else ("*", "i32", "i64")
        return {
            (i,): [["tt.divisibility", 16]]
            for i, kind in enumerate(self.signature.values())
            if kind.startswith(hinted)
        }

    def variants(self) -> list[AotConfig]:
        """This configuration under both hint sets the runtime can compile it with."""
        import dataclasses

        return [dataclasses.replace(self, hints=h) for h in ("pointers", "all")]


def signature_of(kernel, types: dict[str, str], constexprs: dict[str, Any]) -> dict[str, str]:
    """Full signature in argument order: pointer/scalar types from ``types``, the rest constexpr."""
    import inspect

    names = list(inspect.signature(python_function(kernel)).parameters)
    signature = {}
    for name in names:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name in types:
            signature[name] = types[name]
        else:
            raise KeyError(f"{python_function(kernel).__name__}: no type for argument '{name}'")
    return signature


_poison_outputs = False


@contextlib.contextmanager
def poisoned_outputs():
    """Within this block every buffer a kernel wrapper allocates for the kernel to fill starts as NaN
    (integers as -1), so a kernel that forgets to write an element is caught by the tests."""
    global _poison_outputs
    previous, _poison_outputs = _poison_outputs, True
    try:
        yield
    finally:
        _poison_outputs = previous


def new_empty(shape, *, device, dtype) -> torch.Tensor:
    """``torch.empty`` for kernel outputs (NaN-filled inside ``poisoned_outputs()``)."""
    out = torch.empty(shape, device=device, dtype=dtype)
    if _poison_outputs:
        out.fill_(float("nan") if out.is_floating_point() else -1)
    return out


def new_empty_like(t: torch.Tensor) -> torch.Tensor:
    return new_empty(t.shape, device=t.device, dtype=t.dtype)


def next_power_of_2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())
