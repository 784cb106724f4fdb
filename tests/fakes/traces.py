"""Device traces in the shape NVML reports them (hand-built so the expected energies are exact).

Volta-and-newer boards update the energy counter about every 100 ms, so a read sees the energy at the
last 100 ms tick: ``counter_steps_every_100ms`` reproduces that quantisation.
"""

from __future__ import annotations

import math
from collections.abc import Callable


def constant_power(power_w: float) -> Callable[[float], float]:
    return lambda t_s: power_w


def power_step(step_at_s: float, before_w: float, after_w: float) -> Callable[[float], float]:
    """Board power that jumps from ``before_w`` to ``after_w`` at ``step_at_s`` (a kernel launch)."""
    return lambda t_s: before_w if t_s < step_at_s else after_w


def counter_steps_every_100ms(power_w: float, offset_mj: int = 0) -> Callable[[float], int]:
    """Energy counter (mJ since driver load) of a board drawing ``power_w``, updated every 100 ms."""
    step_mj = round(power_w * 0.1 * 1000)
    # round() first: 0.3 * 10 is 3.0000000000000004 and 0.7 * 10 is 7.000000000000001 in binary
    return lambda t_s: offset_mj + step_mj * math.floor(round(t_s * 10, 9))
