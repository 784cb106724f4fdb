"""Learning-rate scaling rules for large-batch training: the linear rule with gradual warm-up (Goyal
et al. 2017, "Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour") and the square-root rule
(Krizhevsky 2014, "One weird trick for parallelizing convolutional neural networks"; Hoffer et al.
2017 motivate it for adaptive optimizers).

What it changes: the run settings only. With k = global batch / base_batch_size (the cell's batch
over all processes, over the workload's, the batch its learning rate was tuned for):

    linear: lr = k * base_lr        sqrt: lr = sqrt(k) * base_lr

and, if ``warmup_frac`` is given, the warm-up length as a fraction of the budget (Goyal et al. ramp
linearly from a small learning rate over the first 5 epochs; the train loop's warm-up is linear from
~0). Batch size itself is a scenario matrix axis (``[matrix] batch_size = [32, 128, 512]``); the
budget is in tokens, so a larger batch takes proportionally fewer steps. Optimizers whose learning
rate is a multiple of the run's (nesterov, lion, lars) scale with it; an explicit ``lr`` option of an
optimizer is not scaled.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from benchbed.techniques.base import Technique, register


def scaled_lr(base_lr: float, batch_size: int, base_batch_size: int, rule: str) -> float:
    k = batch_size / base_batch_size
    return base_lr * (k if rule == "linear" else math.sqrt(k))


@dataclass(frozen=True)
class LRScalingConfig:
    rule: Literal["linear", "sqrt"] = "linear"
    warmup_frac: float | None = None  # None: the workload's

    def check(self) -> None:
        if self.rule not in ("linear", "sqrt"):
            raise ValueError(f"rule: 'linear' or 'sqrt', got {self.rule!r}")
        if self.warmup_frac is not None and not 0.0 <= self.warmup_frac < 1.0:
            raise ValueError(f"warmup_frac: must be in [0, 1), got {self.warmup_frac}")


@register
class LRScaling(Technique):
    """Scale the learning rate with the batch size (linear or square-root rule) and set warm-up."""

    name = "lr_scaling"
    category = "compute/large_batch"
    paper = "Goyal et al. 2017, Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour"
    Config = LRScalingConfig

    def configure(self, run):
        base_lr = run.lr
        run.lr = scaled_lr(base_lr, run.global_batch_size, run.base_batch_size, self.config.rule)
        run.lr_rule = self.config.rule
        if self.config.warmup_frac is not None:
            run.warmup_frac = self.config.warmup_frac
        run.extra["lr_scaling"] = {"rule": self.config.rule, "base_lr": base_lr, "lr": run.lr}
