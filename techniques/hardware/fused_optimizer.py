"""Fused optimizer step: AdamW (Loshchilov & Hutter 2019) or Lion (Chen et al. 2023, "Symbolic
Discovery of Optimization Algorithms") as one kernel launch per parameter group, as in Apex's
FusedAdam and multi-tensor-apply designs (the optimizer class is
benchbed.kernels.optimizer_steps.FusedStepOptimizer).

What it changes: the optimizer. At construction every group's parameters are copied into one flat
buffer and each parameter becomes a view into it, so one launch reads and writes all parameters
and their float32 states; per step the gradients are gathered into one flat buffer (one copy).
The update is exactly torch.optim.AdamW's (or the Lion paper's Algorithm 2), with the same decay
groups as the baseline ``adamw`` and, for Lion, the same defaults as the ``lion`` technique
(lr = lr_ratio * run.lr, weight decay = run.weight_decay / lr_ratio, betas 0.9/0.99). One
difference: a parameter without a gradient in some step is stepped with a zero gradient (AdamW
would skip it); every trainable parameter of the models here gets a gradient each step.
Without CUDA ``auto`` runs the PyTorch reference step on the same flat buffers and says so.
``backend = "cuda"`` (Lion only) runs the step written in CUDA C++ (benchbed.kernels.cuda_lion),
compiled at first use where nvcc exists; elsewhere the cell is refused with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass

from benchbed.techniques.base import Technique, TechniqueError, register
from benchbed.techniques.compute._optim import check_optimizer_options, decay_groups, resolve_hyperparameters
from benchbed.techniques.compute.lion import LION_LR_RATIO
from benchbed.techniques.hardware import check_backend, use_kernel

ALGORITHMS = ("adamw", "lion")


@dataclass(frozen=True)
class FusedOptimizerConfig:
    algorithm: str = "adamw"  # adamw | lion
    lr: float | None = None  # None: run.lr (adamw) or lr_ratio * run.lr (lion)
    lr_ratio: float = LION_LR_RATIO  # lion only: the lion technique's default, one constant
    beta1: float | None = None  # None: run.betas (adamw) or 0.9 (lion)
    beta2: float | None = None  # None: run.betas (adamw) or 0.99 (lion)
    eps: float = 1e-8  # adamw only
    weight_decay: float | None = None  # None: run.weight_decay (adamw) or run.weight_decay / lr_ratio (lion)
    backend: str = "auto"  # auto | reference | triton | cuda (lion only: the CUDA C++ extension)

    def check(self) -> None:
        check_optimizer_options(self)
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm: expected one of {', '.join(ALGORITHMS)}, got '{self.algorithm}'")
        if self.backend == "cuda":
            if self.algorithm != "lion":
                raise ValueError("backend: 'cuda' (the CUDA C++ extension) exists for algorithm 'lion' only")
        else:
            check_backend(self.backend)


@register
class FusedOptimizer(Technique):
    """AdamW or Lion as one fused kernel launch over flat parameter/state buffers."""

    name = "fused_optimizer"
    category = "hardware/kernels"
    paper = (
        "Chen et al. 2023, Symbolic Discovery of Optimization Algorithms (Lion); "
        "Loshchilov & Hutter 2019, Decoupled Weight Decay Regularization (AdamW)"
    )
    Config = FusedOptimizerConfig
    provides_optimizer = True

    @classmethod
    def declared_space(cls, config):
        """The space of the optimizer it fuses (the `adamw` or the `lion` technique's)."""
        from benchbed.techniques.base import REGISTRY

        return dict(REGISTRY[config.algorithm].search_space)

    def validate(self, cell):
        if self.config.backend != "cuda":
            return
        if cell.get("device") != "cuda":
            raise TechniqueError(
                f"{self.name}: backend 'cuda' needs a CUDA device, not '{cell.get('device')}'"
            )
        if cell.get("launched"):
            from benchbed.kernels.cuda_lion import cuda_extension_status

            ok, why = cuda_extension_status()
            if not ok:
                raise TechniqueError(f"{self.name}: backend 'cuda' cannot be built here: {why}")

    def build_optimizer(self, params, ctx):
        c, run = self.config, ctx.run
        step_fn = use_kernel(ctx, self.name, f"{c.algorithm}_step", c.backend)
        if c.algorithm == "adamw":
            h = resolve_hyperparameters(c, run)
        else:  # Lion: its own betas, lr scaled down and weight decay up by lr_ratio (same lr * wd)
            h = resolve_hyperparameters(
                c, run, lr_ratio=c.lr_ratio, decay_over_ratio=True, default_betas=(0.9, 0.99)
            )
        from benchbed.kernels.optimizer_steps import FusedStepOptimizer  # imports triton: only when used

        return FusedStepOptimizer(
            decay_groups(params, h.weight_decay),
            algorithm=c.algorithm,
            step_fn=step_fn,
            lr=h.lr,
            betas=h.betas,
            eps=c.eps,
            weight_decay=h.weight_decay,
        )
