"""Memory accounting of one process (one rank) of a cell, and the per-rank table of a
multi-process cell: what this rank holds of the parameters, gradients and optimizer state, and the
peak of the activations it keeps for backward.

Everything is read from the tensors this rank actually holds: a sharded parameter (a DTensor under
FSDP or tensor parallelism) counts its local shard, never its global size, so sharding's saving is
visible rank by rank. Nothing is assumed from a formula.

* ``param_bytes``, ``grad_bytes``, ``optimizer_state_bytes``: bytes of the local storage of the
  model's parameters, of their ``.grad`` (read after training, when the last step's gradients are
  still there) and of every tensor in the optimizer's state.
* ``saved_activation_bytes``: the peak of the bytes saved for backward that are alive at once on
  the cell's device, over one training step (``SavedActivations``). Tensors that are parameters (or
  views of them) are not activations and are not counted; a storage saved twice counts once.
  Regions that install their own saved-tensor hooks (activation checkpointing, offloading to the
  host) hide what they save from this count, which is the point: checkpointed blocks keep nothing,
  offloaded tensors are not on the device. A pipeline stage's cached stage inputs and outputs are
  kept outside autograd's saved tensors and are not counted.

Imports nothing else from benchbed (like the rest of ``benchbed.measure``).
"""

from __future__ import annotations

import math
import resource
import sys
import weakref
from typing import Any

import torch

RANK_FIGURES = (
    "param_bytes",
    "grad_bytes",
    "optimizer_state_bytes",
    "saved_activation_bytes",
    "peak_mem_bytes",
    "peak_rss_bytes",
)


def _local(t: torch.Tensor) -> torch.Tensor:
    """The part of `t` this process holds (a DTensor's local shard; `t` itself otherwise)."""
    to_local = getattr(t, "to_local", None)
    return to_local() if callable(to_local) else t


def local_bytes(t: torch.Tensor | None) -> int:
    if t is None:
        return 0
    t = _local(t)
    return t.numel() * t.element_size()


def param_bytes(model: torch.nn.Module) -> int:
    return sum(local_bytes(p) for p in model.parameters())


def grad_bytes(model: torch.nn.Module) -> int:
    return sum(local_bytes(p.grad) for p in model.parameters())


def optimizer_state_bytes(optimizer: torch.optim.Optimizer | None) -> int:
    if optimizer is None:
        return 0
    total = 0
    for state in optimizer.state.values():
        for value in state.values():
            if isinstance(value, torch.Tensor):
                total += local_bytes(value)
    return total


def _is_parameter(t: torch.Tensor) -> bool:
    while t is not None:
        if isinstance(t, torch.nn.Parameter):
            return True
        t = t._base if t._is_view() else None
    return False


class _Held:
    """What the pack hook returns: the saved tensor itself (autograd keeps it alive exactly as it
    would have); when autograd drops it, a finaliser takes its bytes off the live count."""

    __slots__ = ("tensor", "__weakref__")

    def __init__(self, tensor: torch.Tensor):
        self.tensor = tensor


class SavedActivations:
    """Peak bytes saved for backward, alive at once on `device`, while the context is open.

    A ``torch.autograd.graph.saved_tensors_hooks`` pair: pack wraps each saved tensor, counting
    its storage once however often it is saved; autograd frees the wrapper after the node's
    backward, and its finaliser takes the bytes off. Use around one whole training step."""

    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self.live = 0
        self.peak = 0
        self._refs: dict[int, list[int]] = {}  # storage key -> [count, bytes]
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)

    def _on_device(self, t: torch.Tensor) -> bool:
        return t.device.type == self.device.type

    def _pack(self, t: torch.Tensor):
        local = _local(t)
        if _is_parameter(t) or not self._on_device(local) or local.layout != torch.strided:
            return t
        try:
            storage = local.untyped_storage()
            key, size = storage.data_ptr(), storage.nbytes()
        except (RuntimeError, NotImplementedError):  # tensor subclasses without a storage
            key, size = id(local), local.numel() * local.element_size()
        ref = self._refs.get(key)
        if ref is None:
            self._refs[key] = [1, size]
            self.live += size
            self.peak = max(self.peak, self.live)
        else:
            ref[0] += 1
        held = _Held(t)
        weakref.finalize(held, self._release, key)
        return held

    def _release(self, key: int) -> None:
        ref = self._refs.get(key)
        if ref is None:
            return
        ref[0] -= 1
        if ref[0] == 0:
            self.live -= ref[1]
            del self._refs[key]

    @staticmethod
    def _unpack(packed):
        return packed.tensor if isinstance(packed, _Held) else packed

    def __enter__(self) -> SavedActivations:
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)


def _peak_rss_bytes() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return float(rss if sys.platform == "darwin" else rss * 1024)


def rank_figures(
    model: torch.nn.Module | None,
    optimizer: torch.optim.Optimizer | None,
    saved_activation_bytes: float,
    device: torch.device,
    rank: int = 0,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """This rank's memory figures (bytes; NaN where not measured), plus `extra` (a technique's
    per-rank numbers, e.g. a pipeline stage's idle fraction)."""
    nan = math.nan
    peak = nan
    if device.type == "cuda" and torch.cuda.is_available():
        peak = float(torch.cuda.max_memory_allocated(device))
    row: dict[str, Any] = {
        "rank": rank,
        "param_bytes": float(param_bytes(model)) if model is not None else nan,
        "grad_bytes": float(grad_bytes(model)) if model is not None else nan,
        "optimizer_state_bytes": float(optimizer_state_bytes(optimizer)) if optimizer is not None else nan,
        "saved_activation_bytes": float(saved_activation_bytes),
        "peak_mem_bytes": peak,
        "peak_rss_bytes": _peak_rss_bytes(),
    }
    row.update(extra or {})
    return row


def gather(figures: dict[str, Any]) -> list[dict[str, Any]]:
    """Every rank's figures, in rank order, on every rank (a collective: all ranks must call it);
    just this rank's when no process group is running."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [figures]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, figures)
    return out


def table(per_rank: list[dict[str, Any]]) -> str:
    """The per-rank figures as a small fixed-width text table (MiB), for logs and run notes."""
    keys = [k for k in RANK_FIGURES if any(k in r for r in per_rank)]
    extra = sorted({k for r in per_rank for k in r} - set(keys) - {"rank"})
    head = ["rank", *(k.removesuffix("_bytes") + "_MiB" for k in keys), *extra]
    lines = ["  ".join(f"{h:>12}" for h in head)]
    for r in per_rank:
        cells = [f"{r.get('rank', '?'):>12}"]
        for k in keys:
            v = r.get(k, math.nan)
            cells.append(
                f"{v / 2**20:>12.3f}" if isinstance(v, (int, float)) and math.isfinite(v) else f"{'NaN':>12}"
            )
        for k in extra:
            v = r.get(k)
            cells.append(f"{v:>12.4g}" if isinstance(v, (int, float)) else f"{v!s:>12}")
        lines.append("  ".join(cells))
    return "\n".join(lines)
