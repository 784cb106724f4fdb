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
    if chosen == "cuda" and device.type != "cuda":
        raise TechniqueError(f"{technique}: backend 'cuda' (a CUDA C++ extension) needs a CUDA device")
    ctx.run.extra[f"kernel_backend.{op}"] = chosen
    if chosen != "triton":
        print(
            f"{technique}: {op} runs the PyTorch reference on {device.type} (Triton needs CUDA)",
            file=sys.stderr,
        )
    return kernels.get(op, chosen, device)


def swap_linears(model, make: Callable, technique: str) -> int:
    """Replace every nn.Linear inside the model's transformer blocks (not the tied output head) by
    ``make(linear)``, a module holding the *same* weight and bias parameters. Returns the count."""
    from torch import nn

    blocks = getattr(model, "blocks", None)
    if blocks is None:
        raise TechniqueError(f"{technique}: the model has no 'blocks' to find linear layers in")
    swapped = 0
    for block in blocks:
        for name, module in list(block.named_modules()):
            if isinstance(module, nn.Linear):
                parent_name, _, attr = name.rpartition(".")
                parent = block.get_submodule(parent_name) if parent_name else block
                setattr(parent, attr, make(module))
                swapped += 1
    if not swapped:
        raise TechniqueError(f"{technique}: no nn.Linear in the model's blocks")
    return swapped


def require_cuda_unless_reference(technique: str, cell: dict, backend: str, what: str) -> None:
    """Low-precision techniques on a cell without CUDA: only ``backend = "reference"``, which
    emulates the numerics and saves nothing (one line at scenario load)."""
    if cell.get("device") != "cuda" and backend != "reference":
        raise TechniqueError(
            f"{technique}: {what} needs a CUDA GPU; on '{cell.get('device')}' set backend = \"reference\" "
            "to emulate its numerics (no time saved)"
        )
