"""FLOPs counted on real steps, peak FLOP/s of a device, MFU and HFU.

Counting. ``counting()`` runs a step under ``torch.utils.flop_counter.FlopCounterMode`` (matrix
multiplies, convolutions and attention; elementwise work, norms and the loss are not counted, as in
the usual 6N accounting). Inside it, ``extra_work()`` marks regions whose FLOPs are hardware work
but not the model's useful forward and backward of the step: a rematerialisation (activation
checkpointing's recompute), SAM's ascent pass, SNIP's scoring pass, importance sampling's scoring
forward over its pool. A counted step therefore gives

    hardware FLOPs = everything the step executed
    model FLOPs    = hardware FLOPs - the extra regions (forward + backward of the model the step
                     trains: dropped layers, skipped blocks and frozen weights do less)

A fused attention backward recomputes the score matrix its forward did not keep: torch's formula
counts that recomputation, and it is tallied as extra work too (hardware, not model, FLOPs).

Attention is counted over the full T x T score matrix (causal masking not discounted), as the
12 * L * d * T term of the hand formula does; the CPU's fused attention kernel, which torch's table
lacks, gets the same formula as the GPU kernels. A Triton kernel launched outside the dispatcher is
invisible to the mode: the technique that uses it reports its FLOPs by torch's formula for the
equivalent operator (`add_opaque`; the flash_attention technique does).

Which steps. Counting is slow (a Python dispatch mode over every operator), so `FlopSampler` counts
a few steps only: the first step (0), the second (1, so a one-off cost of the first step is charged
to that step alone), the first step at or after each quarter of the budget (progress 1/4, 1/2,
3/4), and the first step after a technique reports that the model changed (progressive stacking's
growth). A technique whose step FLOPs are drawn at random (layer drop) gets sixteenths instead of
quarters. The worker counts a step on an exact replica of the train context (a deep copy, same
batch, same random generators), off the clock, before the timed step does the same work. Per-token
figures weight each counted step by the steps it stands for (until the next counted step), so a
schedule that changes the model is followed; a stochastic one (layer drop) is estimated from the
counted steps' draws.

Utilisation. MFU = model FLOPs per token x tokens/s over the devices' dense bf16 peak (times the
process count); HFU the same with hardware FLOPs. Devices not in the table, and every CPU, have no
peak here: their MFU and HFU are NaN, never 0.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

PEAK_FLOPS_BF16 = {  # dense tensor-core peaks, for MFU; unknown devices give NaN
    "H200": 989e12,
    "H100": 989e12,
    "A100": 312e12,
    "L4": 121e12,
    "A10": 125e12,
}


def peak_flops(device: torch.device) -> float:
    if device.type != "cuda":
        return math.nan
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_FLOPS_BF16.items():
        if key in name:
            return value
    return math.nan


def utilisation(
    flops_per_token: float, tokens_per_s: float, device: torch.device, world_size: int = 1
) -> float:
    """Achieved FLOP/s over the peak of `world_size` such devices; NaN where the peak is unknown."""
    return flops_per_token * tokens_per_s / (peak_flops(device) * world_size)


def mfu(flops_per_token: float, tokens_per_s: float, device: torch.device, world_size: int = 1) -> float:
    """Model FLOPs utilisation (give it model FLOPs per token; hardware FLOPs give HFU)."""
    return utilisation(flops_per_token, tokens_per_s, device, world_size)


# -- counting -------------------------------------------------------------------------------------
def _cpu_sdpa_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _sdpa_backward_flop(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):
    """torch's formula for a fused attention backward; its first term, the recomputation of the
    score matrix the forward did not keep, is hardware work, so it is also tallied as extra."""
    total = sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)
    b, h, s_q, d = query_shape
    s_k = key_shape[2]
    tally = _ACTIVE
    if tally is not None and tally.depth == 0:  # inside an extra region the whole region is extra
        tally.extra += 2 * b * h * s_q * d * s_k
    return total


def _custom_mapping() -> dict:
    aten = torch.ops.aten
    forward = ["_scaled_dot_product_flash_attention_for_cpu"]
    backward = [
        "_scaled_dot_product_flash_attention_for_cpu_backward",
        "_scaled_dot_product_flash_attention_backward",
        "_scaled_dot_product_efficient_attention_backward",
        "_scaled_dot_product_cudnn_attention_backward",
    ]
    mapping = {getattr(aten, name): _cpu_sdpa_flop for name in forward if hasattr(aten, name)}
    mapping.update({getattr(aten, name): _sdpa_backward_flop for name in backward if hasattr(aten, name)})
    return mapping


@dataclass
class Tally:
    """FLOPs of one counted region: `hardware` (all) and the `extra` part of it."""

    mode: FlopCounterMode
    extra: float = 0.0
    opaque: float = 0.0  # FLOPs of kernels the dispatch mode cannot see, reported by `add_opaque`
    depth: int = 0

    @property
    def hardware(self) -> float:
        return float(self.mode.get_total_flops()) + self.opaque

    @property
    def model(self) -> float:
        return self.hardware - self.extra


_ACTIVE: Tally | None = None


@contextmanager
def counting() -> Iterator[Tally]:
    """Count every FLOP inside (one step); `extra_work()` regions inside are tallied apart."""
    global _ACTIVE
    mode = FlopCounterMode(display=False, custom_mapping=_custom_mapping())
    tally, previous = Tally(mode), _ACTIVE
    _ACTIVE = tally
    try:
        with mode:
            yield tally
    finally:
        _ACTIVE = previous


@contextmanager
def extra_work() -> Iterator[None]:
    """Mark hardware work that is not the model's useful forward and backward; a no-op when nothing
    is being counted. Nested regions count once (the outermost)."""
    tally = _ACTIVE
    if tally is None:
        yield
        return
    tally.depth += 1
    before = tally.hardware if tally.depth == 1 else 0.0
    try:
        yield
    finally:
        tally.depth -= 1
        if tally.depth == 0:
            tally.extra += tally.hardware - before


def add_opaque(n: float, extra: float = 0.0) -> None:
    """FLOPs of a kernel invisible to the dispatch mode (a Triton launch): its caller reports them by
    torch's formula for the equivalent operator, `extra` of them hardware-only work (a
    recomputation); a no-op when nothing is being counted."""
    tally = _ACTIVE
    if tally is not None:
        tally.opaque += float(n)
        if tally.depth == 0:
            tally.extra += float(extra)


def count(fn) -> Tally:
    """Run `fn()` under the counter and return its tally (tests, scripts)."""
    with counting() as tally:
        fn()
    return tally


# -- which steps, and the per-token figures -------------------------------------------------------
@dataclass(frozen=True)
class StepCount:
    step: int
    hardware: float  # FLOPs the step executed (one process)
    extra: float  # of which outside the model's forward and backward
    tokens: int  # tokens the step trained on (one process)

    @property
    def model(self) -> float:
        return self.hardware - self.extra


@dataclass
class FlopSampler:
    """Chooses the counted steps (see the module docstring) and turns their counts into per-token
    figures, each counted step standing for the steps until the next one."""

    fractions: int = 4  # count at progress 1/fractions, 2/fractions, ...
    counts: list[StepCount] = field(default_factory=list)
    _next_fraction: int = 1
    _changed: bool = False

    def model_changed(self) -> None:
        self._changed = True

    def due(self, step: int, progress: float) -> bool:
        """Whether the step about to run (at budget fraction `progress`) is counted."""
        if step < 2 or self._changed:
            return True
        return self._next_fraction < self.fractions and progress >= self._next_fraction / self.fractions

    def add(self, count: StepCount, progress: float) -> None:
        self.counts.append(count)
        self._changed = False
        while self._next_fraction < self.fractions and progress >= self._next_fraction / self.fractions:
            self._next_fraction += 1

    @property
    def steps(self) -> list[int]:
        return [c.step for c in self.counts]

    def per_token(self, steps_taken: int) -> tuple[float, float]:
        """(model, hardware) FLOPs per trained token over the steps taken; NaN without counts."""
        counts = sorted(self.counts, key=lambda c: c.step)
        if not counts or steps_taken <= 0:
            return math.nan, math.nan
        model = hardware = tokens = 0.0
        for i, c in enumerate(counts):
            end = counts[i + 1].step if i + 1 < len(counts) else max(steps_taken, c.step + 1)
            span = end - c.step
            model += c.model * span
            hardware += c.hardware * span
            tokens += c.tokens * span
        if tokens <= 0:
            return math.nan, math.nan
        return model / tokens, hardware / tokens
