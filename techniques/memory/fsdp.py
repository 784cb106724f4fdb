"""Fully sharded data parallelism with FSDP2, ``torch.distributed.fsdp.fully_shard`` (Zhao et al.
2023, "PyTorch FSDP: Experiences on Scaling Fully Sharded Data Parallel"; the ZeRO stages of
Rajbhandari et al. 2020).

What it changes: every transformer block, then the whole model, becomes an FSDP unit whose
parameters are DTensors sharded along dim 0 over the data-parallel ranks. Each rank keeps 1/N of
the parameters, gradients and optimizer state; a unit's parameters are all-gathered just before its
forward (and again before its backward when they were freed), and gradients are reduce-scattered
after its backward. Each rank trains on its slice of the global batch (``batch_size`` sequences per
rank, ``world_size x batch_size`` per step); the training loss reported is the global batch's mean
(all-reduced, on every rank, so every rank takes the same decisions).

Options:

* ``strategy``: ``full_shard`` (ZeRO-3: parameters freed after forward, ``reshard_after_forward =
  True``), ``shard_grad_op`` (ZeRO-2: parameters stay gathered from forward to backward, so one
  all-gather per step instead of two, at the cost of the whole unsharded model between them),
  ``hybrid_shard`` (HSDP: shard within groups of ``world_size / replicate`` ranks, replicate across
  ``replicate`` groups; gradients all-reduced across the groups).
* ``param_dtype`` / ``reduce_dtype``: FSDP2's ``MixedPrecisionPolicy``; the sharded master weights
  stay fp32, the all-gathered compute copy is ``param_dtype``, gradients are reduced in
  ``reduce_dtype``. Default fp32/fp32 (no mixed precision: bf16 matmuls are tens of times slower on
  CPUs without native bf16).

With ``tensor_parallel`` (2-D parallelism): ``world_size`` is the number of processes, the tensor
parallel degree divides it, and FSDP shards over the ``world_size / degree`` data-parallel ranks
of the (dp, tp) mesh; tensor parallelism is applied first (``wrap_order``).

What the measurement shows: per-rank parameter, gradient and optimizer-state bytes of about 1/N of
a replica's (``memory_per_rank_json``), and the communication's cost in time; gradient clipping is
over the global norm. Not shown: overlap tuning (prefetch depth), CPU offloading of shards.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from benchbed.techniques.base import Technique, TechniqueError, register
from benchbed.techniques.memory import _parallel

STRATEGIES = ("full_shard", "shard_grad_op", "hybrid_shard")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class FSDPConfig:
    world_size: int = 2  # processes of the cell
    strategy: str = "full_shard"
    replicate: int = 1  # hybrid_shard: replica groups (each shards over world_size / replicate ranks)
    param_dtype: str = "float32"
    reduce_dtype: str = "float32"

    def check(self) -> None:
        if self.world_size < 1:
            raise ValueError(f"world_size: must be >= 1, got {self.world_size}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy: must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        for name in ("param_dtype", "reduce_dtype"):
            if getattr(self, name) not in DTYPES:
                raise ValueError(f"{name}: must be one of {', '.join(DTYPES)}, got {getattr(self, name)!r}")
        if self.replicate < 1 or self.world_size % self.replicate:
            raise ValueError(f"replicate: must divide world_size ({self.world_size}), got {self.replicate}")
        if self.replicate > 1 and self.strategy != "hybrid_shard":
            raise ValueError("replicate: only with strategy = 'hybrid_shard'")
        if self.strategy == "hybrid_shard" and self.replicate == 1:
            raise ValueError("replicate: hybrid_shard needs replicate >= 2 replica groups")


@register
class FSDP(Technique):
    """Fully sharded data parallelism (FSDP2 fully_shard): parameters, gradients, optimizer state sharded."""

    name = "fsdp"
    category = "memory/parallelism"
    paper = "Zhao et al. 2023, PyTorch FSDP: Experiences on Scaling Fully Sharded Data Parallel"
    Config = FSDPConfig
    wraps_model = True
    splits_model = True
    wrap_order = 20  # after tensor parallelism has sharded the layers
    conflicts = ("data_parallel", "pipeline_parallel", "cpu_offload_optimizer")

    def processes(self) -> int:
        return self.config.world_size

    def validate(self, cell):
        _parallel.require_launched(self.name, "world_size", self.config.world_size, cell)
        _parallel.refuse_with(self.name, cell, _parallel.SHARDED_REFUSALS)
        if self.config.strategy == "hybrid_shard" and "tensor_parallel" in cell.get("techniques", ()):
            raise TechniqueError(
                "techniques.fsdp.strategy: hybrid_shard with tensor_parallel (3-D) is not supported"
            )

    def configure(self, run):
        _parallel.init_process_group(run, self.name)
        _parallel.declare(run)

    def _mesh(self, ctx):
        layout = ctx.run.extra["parallel"]
        if self.config.strategy == "hybrid_shard":
            from torch.distributed.device_mesh import init_device_mesh

            r = self.config.replicate
            return init_device_mesh(
                ctx.device.type, (r, layout["dp"] // r), mesh_dim_names=("replicate", "shard")
            )
        return _parallel.mesh(ctx.run)["dp"]

    def build_model(self, model, ctx):
        c = self.config
        mesh = self._mesh(ctx)
        self._dp_group = None if c.strategy == "hybrid_shard" else mesh.get_group()
        kwargs = dict(
            mesh=mesh,
            reshard_after_forward=c.strategy != "shard_grad_op",
            mp_policy=MixedPrecisionPolicy(
                param_dtype=DTYPES[c.param_dtype], reduce_dtype=DTYPES[c.reduce_dtype]
            ),
        )
        for block in model.blocks:
            fully_shard(block, **kwargs)
        fully_shard(model, **kwargs)
        ctx.clip_grads = lambda max_norm: _parallel.clip_grad_norm(model.parameters(), max_norm)
        ctx.run.extra["fsdp"] = {
            "strategy": c.strategy,
            "mesh": str(tuple(mesh.shape)),
            "units": len(model.blocks) + 1,
        }
        return model

    def train_step(self, ctx, batch, step, inner):
        loss = inner(batch)
        return _parallel.mean_over(loss, self._dp_group)  # hybrid: the whole world is data parallel
