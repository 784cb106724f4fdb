"""Search-space dimensions: what a technique declares as tunable under the `external` ruleset.

A technique with hyperparameters sets ``search_space`` on its class, one dimension per option of its
config that is worth tuning (docs/tuning.md)::

    search_space = {"lr": LogUniform(1e-4, 1e-2), "beta2": Uniform(0.95, 0.999)}

The tuner (``benchbed.plan.tuning``) draws quasi-random points in the unit cube and maps each
coordinate through `Dimension.value`; values are rounded to 4 significant digits so they read well
in tables and hash the same on every machine. A scenario's ``[tuning.search_space.NAME]`` table
replaces a technique's declared space.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SCALES = ("log", "linear")


def round_sig(value: float, digits: int = 4) -> float:
    """`value` rounded to `digits` significant digits (0 stays 0)."""
    return float(f"{value:.{digits}g}")


@dataclass(frozen=True)
class Dimension:
    """A closed range [low, high] of a float option, sampled on a log or a linear scale."""

    low: float
    high: float
    scale: str = "linear"

    def check(self) -> None:
        """Raise ValueError naming what is wrong (used for declared and scenario-given ranges)."""
        if self.scale not in SCALES:
            raise ValueError(f"scale: 'log' or 'linear', got {self.scale!r}")
        for name in ("low", "high"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name}: expected a finite number, got {value!r}")
        if not self.low < self.high:
            raise ValueError(f"low must be below high, got [{self.low}, {self.high}]")
        if self.scale == "log" and self.low <= 0:
            raise ValueError(f"a log-scale range must be positive, got [{self.low}, {self.high}]")

    def value(self, u: float) -> float:
        """The point at fraction `u` in [0, 1) of the range (on its scale), 4 significant digits."""
        if self.scale == "log":
            raw = math.exp(math.log(self.low) + u * (math.log(self.high) - math.log(self.low)))
        else:
            raw = self.low + u * (self.high - self.low)
        return round_sig(min(max(raw, self.low), self.high))

    def describe(self) -> str:
        return f"{self.scale}[{self.low:g}, {self.high:g}]"


def LogUniform(low: float, high: float) -> Dimension:  # noqa: N802 -- reads as a distribution
    """Log-uniform over [low, high] (learning rates, weight decay, SAM's rho, LARS's eta)."""
    return Dimension(float(low), float(high), "log")


def Uniform(low: float, high: float) -> Dimension:  # noqa: N802
    """Uniform over [low, high] (betas, momentum, warm-up fraction)."""
    return Dimension(float(low), float(high), "linear")
