"""Training memory measured on every device, by what holds it: activations saved for backward,
parameters, gradients and optimizer state.

``SavedTensorMeter`` measures the peak bytes held for backward during one step, through
``torch.autograd.graph.saved_tensors_hooks``: every tensor autograd saves is counted by its storage
(views and re-saves of one storage count once) from when it is saved until the saved copy is
released (after backward has used it), and the meter keeps the peak of the running sum. Storages of
the model's parameters and buffers are excluded (they are ``param_bytes``); what autocast saves
(reduced-precision copies of weights) is included, since it exists only for backward.
Rematerialisation hides its tensors from these hooks, so a technique reports them: the inputs a
checkpoint keeps (`hold`) and, inside a recomputation (`recompute_scope`), every tensor the
recomputation creates while it lives (the checkpoint keeps those backward needs until it uses
them).

The meter is active only while the worker measures a sampled step (see ``benchbed.measure.flops``
for which steps); elsewhere `hold` and `recompute_scope` do nothing. CUDA allocator peaks
(``peak_mem_bytes``) are measured apart, by the telemetry sensors, on GPUs.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


def _key(tensor: torch.Tensor) -> tuple[str, int]:
    return (str(tensor.device), tensor.untyped_storage().data_ptr())


def storage_bytes(tensors: Iterable[torch.Tensor | None]) -> int:
    """Bytes of the distinct storages behind `tensors` (a flat buffer and its views count once)."""
    seen: dict[tuple[str, int], int] = {}
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.untyped_storage().nbytes() > 0:
            seen[_key(t)] = t.untyped_storage().nbytes()
    return sum(seen.values())


def optimizer_state_tensors(optimizer: torch.optim.Optimizer | None) -> Iterator[torch.Tensor]:
    if optimizer is None:
        return
    for state in optimizer.state.values():
        for value in state.values():
            if isinstance(value, torch.Tensor):
                yield value


class SavedTensorMeter:
    """Running and peak bytes of distinct storages saved for backward (see the module docstring)."""

    def __init__(self, exclude: Iterable[torch.Tensor] = ()):
        self.excluded = {_key(t) for t in exclude}
        self.live: dict[tuple[str, int], list[int]] = {}  # key -> [bytes, live holders]
        self.current = 0
        self.peak = 0

    def add(self, tensor: torch.Tensor) -> None:
        """Count `tensor`'s storage while this tensor object is alive."""
        if not isinstance(tensor, torch.Tensor) or tensor.is_sparse:
            return
        key = _key(tensor)
        nbytes = tensor.untyped_storage().nbytes()
        if key in self.excluded or nbytes == 0:
            return
        entry = self.live.get(key)
        if entry is None:
            entry = self.live[key] = [nbytes, 0]
            self.current += nbytes
            self.peak = max(self.peak, self.current)
        entry[1] += 1
        weakref.finalize(tensor, self._release, key)

    def _release(self, key: tuple[str, int]) -> None:
        entry = self.live.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            del self.live[key]
            self.current -= entry[0]

    # saved-tensor hooks: pack a detached alias (no reference cycle through grad_fn), count it
    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        alias = tensor.detach()
        self.add(alias)
        return alias

    @staticmethod
    def _unpack(alias: torch.Tensor) -> torch.Tensor:
        return alias


_METER: SavedTensorMeter | None = None


@contextmanager
def measuring_saved(exclude: Iterable[torch.Tensor] = ()) -> Iterator[SavedTensorMeter]:
    """Measure the bytes saved for backward inside (one step); `exclude`: parameters, buffers."""
    global _METER
    meter, previous = SavedTensorMeter(exclude), _METER
    _METER = meter
    try:
        with torch.autograd.graph.saved_tensors_hooks(meter._pack, meter._unpack):
            yield meter
    finally:
        _METER = previous


def hold(tensor: torch.Tensor) -> None:
    """A tensor kept alive for backward outside autograd's saved tensors (a checkpoint's input)."""
    if _METER is not None:
        _METER.add(tensor)


class _CountOutputs(TorchDispatchMode):
    def __init__(self, meter: SavedTensorMeter):
        super().__init__()
        self.meter = meter

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor):
                self.meter.add(leaf)
        return out


@contextmanager
def recompute_scope() -> Iterator[None]:
    """Inside a recomputation: count every tensor it creates while that tensor lives."""
    meter = _METER
    if meter is None:
        yield
        return
    with _CountOutputs(meter):
        yield
