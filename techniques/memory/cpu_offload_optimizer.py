"""Optimizer-state offloading to the CPU (Ren et al. 2021, "ZeRO-Offload: Democratizing
Billion-Scale Model Training", USENIX ATC).

What it changes: where the optimizer lives. The model and its gradients stay on the GPU; AdamW's
float32 master copy of the parameters and both moment buffers live in (pinned) CPU memory. Each step
copies the gradients to the CPU, runs the AdamW update there, and copies the updated parameters back,
as ZeRO-Offload's CPU-side optimizer step does (without its delayed-parameter-update overlap).
GPU memory falls by the optimizer state (2x parameters for Adam) at the price of two transfers and
a CPU update per step, both inside the clock.

It is AdamW (same hyper-parameters and decay groups as ``adamw``), so it supplies the optimizer and
cannot share a cell with another optimizer. On a CPU-only cell there is nothing to offload:
``validate`` refuses it rather than running a no-op under this name. With fp16 loss scaling the
scaler would need to see the device gradients, so that combination is refused too.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from benchbed.techniques.base import Technique, TechniqueError, register
from benchbed.techniques.compute._optim import decay_groups, resolve_hyperparameters


class OffloadedAdamW(torch.optim.AdamW):
    """AdamW over CPU master copies of device parameters; ``step`` syncs gradients and parameters."""

    def __init__(self, groups: list[dict], **kwargs):
        self.device_params: list[torch.Tensor] = []
        self.host_params: list[torch.Tensor] = []
        host_groups = []
        for group in groups:
            hosted = []
            for p in group["params"]:
                host = torch.empty(p.shape, dtype=torch.float32, pin_memory=p.is_cuda)
                host.copy_(p.detach())
                host = torch.nn.Parameter(host)
                host.grad = torch.zeros_like(host, pin_memory=p.is_cuda)
                self.device_params.append(p)
                self.host_params.append(host)
                hosted.append(host)
            host_groups.append({**group, "params": hosted})
        super().__init__(host_groups, foreach=True, **kwargs)

    @torch.no_grad()
    def step(self, closure=None):
        grads_present = []
        for dev, host in zip(self.device_params, self.host_params, strict=True):
            if dev.grad is None:
                host.grad = None
            else:
                if host.grad is None:
                    host.grad = torch.zeros_like(host)
                host.grad.copy_(dev.grad, non_blocking=True)
            grads_present.append(dev.grad is not None)
        if self.device_params and self.device_params[0].is_cuda:
            torch.cuda.current_stream().synchronize()  # the host must see the gradients before it updates
        loss = super().step(closure)
        for dev, host, present in zip(self.device_params, self.host_params, grads_present, strict=True):
            if present:
                dev.copy_(host, non_blocking=True)
        return loss

    def zero_grad(self, set_to_none: bool = True):
        for p in self.device_params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()


@dataclass(frozen=True)
class OffloadConfig:
    eps: float = 1e-8


@register
class CPUOffloadOptimizer(Technique):
    """AdamW whose master weights and moments live on the CPU (ZeRO-Offload style)."""

    name = "cpu_offload_optimizer"
    category = "memory/offloading"
    paper = "Ren et al. 2021, ZeRO-Offload: Democratizing Billion-Scale Model Training"
    Config = OffloadConfig
    provides_optimizer = True
    conflicts = ("fp16_autocast",)

    def validate(self, cell):
        if cell.get("device") != "cuda":
            raise TechniqueError(
                "techniques: cpu_offload_optimizer: the cell runs on the CPU, where optimizer state is already in "
                "host memory; run it on a cuda device"
            )

    def build_optimizer(self, params, ctx):
        h = resolve_hyperparameters(self.config, ctx.run)
        return OffloadedAdamW(
            decay_groups(params, h.weight_decay), lr=h.lr, betas=h.betas, eps=self.config.eps
        )
