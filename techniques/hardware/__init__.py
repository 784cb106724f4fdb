"""Hardware/algorithm co-design: models switched onto the kernels in benchbed.kernels.

Each technique picks a kernel backend (``auto``: Triton on a CUDA device, the PyTorch reference
elsewhere) and records the choice in ``run.extra`` (``kernel_backend.<op>``), which lands in the
results, so a cell that ran the reference on a CPU never passes for one that ran Triton.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from benchbed.techniques.base import TechniqueError

KERNEL_BACKENDS = ("auto", "reference", "triton")


def check_backend(backend: str) -> None:
    if backend not in KERNEL_BACKENDS:
        raise ValueError(f"backend: expected one of {', '.join(KERNEL_BACKENDS)}, got '{backend}'")


def use_kernel(ctx, technique: str, op: str, backend: str) -> Callable:
    """The kernel callable for ``op`` on the cell's device, with the backend recorded and, when it is
    not Triton, said once on stderr."""
    from benchbed import kernels

    device = ctx.run.device
    chosen = kernels.resolve_backend(backend, device)
    if chosen == "triton" and device.type != "cuda":
        raise TechniqueError(
            f"{technique}: backend 'triton' on device '{device.type}' would run Triton's interpreter "
            "(thousands of times slower); use backend 'auto' or 'reference' off CUDA"
        )
    ctx.run.extra[f"kernel_backend.{op}"] = chosen
    if chosen != "triton":
        print(
            f"{technique}: {op} runs the PyTorch reference on {device.type} (Triton needs CUDA)",
            file=sys.stderr,
        )
    return kernels.get(op, chosen, device)
