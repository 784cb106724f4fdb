"""Data parallelism with PyTorch DistributedDataParallel (Li et al. 2020, "PyTorch Distributed:
Experiences on Accelerating Data Parallel Training", VLDB).

What it changes: the model is wrapped in DDP (after every other ``build_model``), which all-reduces
gradients across ``world_size`` processes during backward, overlapping communication with compute
in buckets. Each process trains on its own batch of ``batch_size`` sequences; the global batch is
``world_size * batch_size`` (recorded as ``global_batch_size``, with ``world_size``).

Budget and learning rate. The token budget counts the global batch, so a 2-process cell takes half
the optimizer steps of a 1-process cell of the same per-process batch, and trains at most the same
tokens. The global batch is ``world_size`` times larger, so the learning rate is a choice, declared
in ``configure`` (``run.change_batch``) and recorded as ``lr_rule``: ``lr_rule = "none"`` (default)
keeps the run's learning rate, so the cell measures data parallelism at the hyperparameters the
baseline was tuned at (what a user gets by just launching more processes); ``"linear"`` (Goyal et
al. 2017) multiplies it by ``world_size`` and ``"sqrt"`` (Krizhevsky 2014) by ``sqrt(world_size)``.
Combined with ``lr_scaling`` (which already scales for the global batch) only ``"none"`` is
accepted, so no batch is scaled for twice.

How it is launched: ``processes()`` returns ``world_size``, so the runner starts the cell with
``torchrun --nproc-per-node=N`` (which sets RANK, LOCAL_RANK, WORLD_SIZE and MASTER_ADDR/PORT); each
rank reads its own data stream and only rank 0 reports. ``validate`` checks the plan when the
scenario is loaded (enough GPUs) and, inside the launched cell, that WORLD_SIZE matches; a cell not
launched that way is refused naming the option. The process group is created here if the launcher
did not create it (NCCL on CUDA, Gloo on the CPU).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from benchbed.techniques.base import Technique, TechniqueError, register
from benchbed.techniques.compute.lr_scaling import scaled_lr


@dataclass(frozen=True)
class DataParallelConfig:
    world_size: int = 2
    # DDP must be told when a step leaves parameters without gradients (layer_drop, progressive_stacking)
    find_unused_parameters: bool = False
    lr_rule: Literal["none", "linear", "sqrt"] = "none"  # learning rate for the world_size-times batch

    def check(self) -> None:
        if self.world_size < 1:
            raise ValueError(f"world_size: must be >= 1, got {self.world_size}")
        if self.lr_rule not in ("none", "linear", "sqrt"):
            raise ValueError(f"lr_rule: 'none', 'linear' or 'sqrt', got {self.lr_rule!r}")


@register
class DataParallel(Technique):
    """DistributedDataParallel over world_size processes (needs a torchrun launch)."""

    name = "data_parallel"
    category = "memory/parallelism"
    paper = "Li et al. 2020, PyTorch Distributed: Experiences on Accelerating Data Parallel Training"
    Config = DataParallelConfig
    wraps_model = True

    def processes(self) -> int:
        return self.config.world_size

    def validate(self, cell):
        launched = os.environ.get("WORLD_SIZE")
        if cell.get("launched", True) and launched != str(self.config.world_size):
            raise TechniqueError(
                f"techniques.data_parallel.world_size: the cell needs {self.config.world_size} processes "
                f"(torchrun --nproc-per-node={self.config.world_size}); this process was launched with "
                f"WORLD_SIZE={launched or 'unset'}"
            )
        if self.config.lr_rule != "none" and "lr_scaling" in cell.get("techniques", ()):
            raise TechniqueError(
                "techniques.data_parallel.lr_rule: lr_scaling already scales the learning rate for the global "
                'batch; set lr_rule = "none" or drop lr_scaling'
            )
        skipping = [n for n in cell.get("techniques", ()) if n in ("layer_drop", "progressive_stacking")]
        if skipping and not self.config.find_unused_parameters:
            raise TechniqueError(
                f"techniques.data_parallel.find_unused_parameters: {skipping[0]} skips blocks, so some steps leave "
                "parameters without gradients; set find_unused_parameters = true"
            )
        if cell.get("device") == "cuda" and torch.cuda.device_count() < self.config.world_size:
            raise TechniqueError(
                f"techniques.data_parallel.world_size: {self.config.world_size} processes need as many GPUs, "
                f"this machine has {torch.cuda.device_count()}"
            )

    def configure(self, run):
        lr_rule = self.config.lr_rule
        if lr_rule != "none":
            n = self.config.world_size
            run.lr = scaled_lr(run.lr, n * run.batch_size, run.batch_size, lr_rule)
        run.change_batch(self.name, world_size=self.config.world_size, lr_rule=lr_rule)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if run.device.type == "cuda" else "gloo")
        if run.device.type == "cuda":
            local_rank = int(os.environ.get("LOCAL_RANK", "0"))
            run.device = torch.device("cuda", local_rank)
            torch.cuda.set_device(run.device)
        run.extra["data_parallel_rank"] = dist.get_rank()

    def build_model(self, model, ctx):
        device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        return DistributedDataParallel(
            model, device_ids=device_ids, find_unused_parameters=self.config.find_unused_parameters
        )
