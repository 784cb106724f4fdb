"""Data parallelism with PyTorch DistributedDataParallel (Li et al. 2020, "PyTorch Distributed:
Experiences on Accelerating Data Parallel Training", VLDB).

What it changes: the model is wrapped in DDP (after every other ``build_model``), which all-reduces
gradients across ``world_size`` processes during backward, overlapping communication with compute
in buckets. Each process trains on its own batch of ``batch_size`` sequences; the global batch is
``world_size * batch_size``.

How it is launched: ``processes()`` returns ``world_size``, so the runner starts the cell with
``torchrun --nproc-per-node=N`` (which sets RANK, LOCAL_RANK, WORLD_SIZE and MASTER_ADDR/PORT); each
rank reads its own data stream and only rank 0 reports. ``validate`` checks the plan when the
scenario is loaded (enough GPUs) and, inside the launched cell, that WORLD_SIZE matches; a cell not
launched that way is refused naming the option. The process group is created here if the launcher
did not create it (NCCL on CUDA, Gloo on the CPU).

Each rank trains on its slice of the global batch (the batches one process reads at
``world_size x batch_size``), and the training loss reported is the global batch's mean,
all-reduced so every rank sees the same value and takes the same decisions (divergence, target).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from benchbed.techniques.base import Technique, TechniqueError, register
from benchbed.techniques.memory._parallel import mean_over


@dataclass(frozen=True)
class DataParallelConfig:
    world_size: int = 2
    # DDP must be told when a step leaves parameters without gradients (layer_drop, progressive_stacking)
    find_unused_parameters: bool = False

    def check(self) -> None:
        if self.world_size < 1:
            raise ValueError(f"world_size: must be >= 1, got {self.world_size}")


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
        run.world_size = self.config.world_size
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

    def train_step(self, ctx, batch, step, inner):
        return mean_over(inner(batch))  # the global batch's loss, the same on every rank
