"""Fused optimizer step: AdamW (Loshchilov & Hutter 2019) or Lion (Chen et al. 2023, "Symbolic
Discovery of Optimization Algorithms") as one kernel launch per parameter group, as in Apex's
FusedAdam and multi-tensor-apply designs.

What it changes: the optimizer. At construction every group's parameters are copied into one flat
buffer and each parameter becomes a view into it, so one launch reads and writes all parameters
and their float32 states; per step the gradients are gathered into one flat buffer (one copy).
The update is exactly torch.optim.AdamW's (or the Lion paper's Algorithm 2), with the same decay
groups as the baseline ``adamw`` and, for Lion, the same defaults as the ``lion`` technique
(lr = lr_ratio * run.lr, weight decay = run.weight_decay / lr_ratio, betas 0.9/0.99). One
difference: a parameter without a gradient in some step is stepped with a zero gradient (AdamW
would skip it); every trainable parameter of the models here gets a gradient each step.
Without CUDA ``auto`` runs the PyTorch reference step on the same flat buffers and says so.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from benchbed.techniques.base import Technique, register
from benchbed.techniques.compute.adamw import decay_groups
from benchbed.techniques.hardware import check_backend, use_kernel

ALGORITHMS = ("adamw", "lion")


class _FlatBucket:
    """Parameters of one group, dtype and device, living as views of one flat buffer."""

    def __init__(self, params: list[torch.nn.Parameter]):
        self.params = params
        with torch.no_grad():
            self.flat = torch.cat([p.detach().reshape(-1) for p in params])
            offset = 0
            for p in params:
                p.data = self.flat[offset : offset + p.numel()].view_as(p)
                offset += p.numel()
        self.exp_avg = torch.zeros(self.flat.numel(), device=self.flat.device, dtype=torch.float32)
        self.exp_avg_sq: torch.Tensor | None = None
        self.step = 0

    def gather_grads(self) -> torch.Tensor:
        return torch.cat(
            [
                (p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).to(self.flat.dtype)
                for p in self.params
            ]
        )


class FusedStepOptimizer(torch.optim.Optimizer):
    """AdamW or Lion over flat per-group buffers, one fused step launch per bucket."""

    def __init__(
        self, params, *, algorithm: str, step_fn: Callable, lr: float, betas, eps: float, weight_decay: float
    ):
        if algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm: expected one of {', '.join(ALGORITHMS)}, got '{algorithm}'")
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay})
        self.algorithm = algorithm
        self.step_fn = step_fn
        self.buckets: list[list[_FlatBucket]] = []
        for group in self.param_groups:
            by_kind: dict[tuple, list] = {}
            for p in group["params"]:
                by_kind.setdefault((p.dtype, p.device), []).append(p)
            buckets = [_FlatBucket(ps) for ps in by_kind.values()]
            for bucket in buckets:
                if algorithm == "adamw":
                    bucket.exp_avg_sq = torch.zeros_like(bucket.exp_avg)
                self._point_state_at(bucket)
            self.buckets.append(buckets)

    def _point_state_at(self, bucket: _FlatBucket) -> None:
        """Per-parameter views of the flat states, so state_dict() and inspection see them."""
        offset = 0
        for p in bucket.params:
            view = slice(offset, offset + p.numel())
            state = self.state[p]
            state["step"] = float(bucket.step)
            state["exp_avg"] = bucket.exp_avg[view].view(p.shape)
            if bucket.exp_avg_sq is not None:
                state["exp_avg_sq"] = bucket.exp_avg_sq[view].view(p.shape)
            offset += p.numel()

    def load_state_dict(self, state_dict: dict) -> None:
        """torch's loader installs copies of the saved states; write them into the flat buffers the
        kernel updates and point the per-parameter entries back at those buffers."""
        super().load_state_dict(state_dict)
        with torch.no_grad():
            for buckets in self.buckets:
                for bucket in buckets:
                    offset = 0
                    for p in bucket.params:
                        view = slice(offset, offset + p.numel())
                        loaded = self.state[p]
                        bucket.exp_avg[view].copy_(loaded["exp_avg"].reshape(-1))
                        if bucket.exp_avg_sq is not None:
                            bucket.exp_avg_sq[view].copy_(loaded["exp_avg_sq"].reshape(-1))
                        bucket.step = int(loaded.get("step", bucket.step))
                        offset += p.numel()
                    self._point_state_at(bucket)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group, buckets in zip(self.param_groups, self.buckets, strict=True):
            lr, betas, wd = group["lr"], group["betas"], group["weight_decay"]
            for bucket in buckets:
                if bucket.flat.numel() == 0:
                    continue
                bucket.step += 1
                for p in bucket.params:
                    self.state[p]["step"] = float(bucket.step)
                grads = bucket.gather_grads()
                if self.algorithm == "adamw":
                    self.step_fn(
                        bucket.flat,
                        grads,
                        bucket.exp_avg,
                        bucket.exp_avg_sq,
                        bucket.step,
                        lr,
                        betas,
                        group["eps"],
                        wd,
                    )
                else:
                    self.step_fn(bucket.flat, grads, bucket.exp_avg, lr, betas, wd)
        return loss


@dataclass(frozen=True)
class FusedOptimizerConfig:
    algorithm: str = "adamw"  # adamw | lion
    lr: float | None = None  # None: run.lr (adamw) or lr_ratio * run.lr (lion)
    lr_ratio: float = 0.1  # lion only, as the lion technique
    beta1: float | None = None  # None: run.betas (adamw) or 0.9 (lion)
    beta2: float | None = None  # None: run.betas (adamw) or 0.99 (lion)
    eps: float = 1e-8  # adamw only
    weight_decay: float | None = None  # None: run.weight_decay (adamw) or run.weight_decay / lr_ratio (lion)
    backend: str = "auto"  # auto | reference | triton

    def check(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm: expected one of {', '.join(ALGORITHMS)}, got '{self.algorithm}'")
        for name in ("beta1", "beta2"):
            v = getattr(self, name)
            if v is not None and not 0.0 <= v < 1.0:
                raise ValueError(f"{name}: must be in [0, 1), got {v}")
        if self.lr is not None and self.lr <= 0:
            raise ValueError(f"lr: must be positive, got {self.lr}")
        if self.lr_ratio <= 0:
            raise ValueError(f"lr_ratio: must be positive, got {self.lr_ratio}")
        if self.eps <= 0:
            raise ValueError(f"eps: must be positive, got {self.eps}")
        if self.weight_decay is not None and self.weight_decay < 0:
            raise ValueError(f"weight_decay: must be >= 0, got {self.weight_decay}")
        check_backend(self.backend)


@register
class FusedOptimizer(Technique):
    """AdamW or Lion as one fused kernel launch over flat parameter/state buffers."""

    name = "fused_optimizer"
    category = "hardware/kernels"
    paper = "Chen et al. 2023, Symbolic Discovery of Optimization Algorithms (Lion); Loshchilov & Hutter 2019 (AdamW)"
    Config = FusedOptimizerConfig
    provides_optimizer = True

    def build_optimizer(self, params, ctx):
        c, run = self.config, ctx.run
        step_fn = use_kernel(ctx, self.name, f"{c.algorithm}_step", c.backend)
        if c.algorithm == "adamw":
            lr = c.lr if c.lr is not None else run.lr
            default_betas = run.betas
            wd = c.weight_decay if c.weight_decay is not None else run.weight_decay
        else:
            lr = c.lr if c.lr is not None else c.lr_ratio * run.lr
            default_betas = (0.9, 0.99)
            wd = c.weight_decay if c.weight_decay is not None else run.weight_decay / c.lr_ratio
        betas = (
            c.beta1 if c.beta1 is not None else default_betas[0],
            c.beta2 if c.beta2 is not None else default_betas[1],
        )
        return FusedStepOptimizer(
            decay_groups(params, wd),
            algorithm=c.algorithm,
            step_fn=step_fn,
            lr=lr,
            betas=betas,
            eps=c.eps,
            weight_decay=wd,
        )
