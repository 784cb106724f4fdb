"""What every optimizer technique shares: the decay groups, the range checks of its options, and the
one rule that resolves its hyperparameters from its config and the run.

The rule (`resolve_hyperparameters`): an option the technique's config sets wins; an option it
leaves as None comes from the run -- the learning rate times the technique's ``lr_ratio`` (how far
its paper puts its learning rate from AdamW's), the weight decay (divided by ``lr_ratio`` where the
paper keeps lr * weight decay constant, as Lion does), and the betas (or the technique's own
defaults). The optimizer's first parameter group then records what was used (the cell's
``effective_lr``, ``effective_weight_decay``, ``effective_betas``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


def decay_groups(params: list[torch.nn.Parameter], weight_decay: float) -> list[dict]:
    """Split parameters into a decayed group (matrices) and a non-decayed one (vectors, scalars)."""
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def check_optimizer_options(config: Any) -> None:
    """The range checks every optimizer config shares, for the fields it has (None = inherited
    from the run, not checked): betas and momentum in [0, 1), lr, lr_ratio and eps positive,
    weight decay non-negative."""

    def value(name):
        return getattr(config, name, None)

    for name in ("beta1", "beta2", "momentum"):
        v = value(name)
        if v is not None and not 0.0 <= v < 1.0:
            raise ValueError(f"{name}: must be in [0, 1), got {v}")
    for name in ("lr", "lr_ratio", "eps"):
        v = value(name)
        if v is not None and v <= 0:
            raise ValueError(f"{name}: must be positive, got {v}")
    v = value("weight_decay")
    if v is not None and v < 0:
        raise ValueError(f"weight_decay: must be >= 0, got {v}")


@dataclass(frozen=True)
class Hyperparameters:
    lr: float
    weight_decay: float
    betas: tuple[float, float]


def resolve_hyperparameters(
    config: Any,
    run: Any,
    *,
    lr_ratio: float = 1.0,
    decay_over_ratio: bool = False,
    default_betas: tuple[float, float] | None = None,
) -> Hyperparameters:
    """The effective lr, weight decay and betas of an optimizer (see the module docstring).

    `config` may lack any of the fields (``lr``, ``weight_decay``, ``beta1``, ``beta2``); a missing
    field counts as None."""
    lr = getattr(config, "lr", None)
    weight_decay = getattr(config, "weight_decay", None)
    beta1, beta2 = getattr(config, "beta1", None), getattr(config, "beta2", None)
    betas = default_betas if default_betas is not None else run.betas
    return Hyperparameters(
        lr=lr if lr is not None else lr_ratio * run.lr,
        weight_decay=weight_decay
        if weight_decay is not None
        else (run.weight_decay / lr_ratio if decay_over_ratio else run.weight_decay),
        betas=(beta1 if beta1 is not None else betas[0], beta2 if beta2 is not None else betas[1]),
    )
