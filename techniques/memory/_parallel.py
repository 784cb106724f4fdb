"""What the torch.distributed techniques share: the process group, the layout of ranks, device
meshes, launch checks, gradient clipping over sharded or staged gradients, and the loss every rank
agrees on.

Layout. A cell's ``world_size`` processes are arranged data-parallel-major: ``rank = dp_rank * tp +
tp_rank`` (tensor-parallel ranks of one replica are neighbours, so on a GPU node they share the
fastest links). Tensor- and pipeline-parallel ranks of one replica read the same batch; each
data-parallel rank reads its slice of the global batch. Techniques declare their degree in
``configure`` (``declare``); the layout is recorded in ``run.extra["parallel"]``.
"""

from __future__ import annotations

import functools
import os
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.tensor import Replicate

from benchbed.techniques.base import CATEGORIES, REGISTRY, Technique, TechniqueError

#: norm-free initialisations add scalar gains outside the layers
NORM_FREE = ("rezero", "fixup", "skipinit")

#: what the sharding techniques (fsdp, tensor_parallel) refuse, and why
SHARDED_REFUSALS = {
    "layer_drop": "ranks must run the same blocks in the same order (each block's collectives)",
    "progressive_stacking": "it copies blocks into the model after it was sharded",
    "snip": "its masks are full-size tensors, the parameters are shards",
    "early_bird": "its masks are full-size tensors, the parameters are shards",
    "sam": "it computes the gradient norm from each rank's shards alone",
    "fused_cross_entropy": "its kernel reads the output head's weight outside the model's forward",
}


def require_launched(name: str, option: str, processes: int, cell: dict) -> None:
    """Refuse a cell not launched as `processes` ranks, or a GPU cell without as many GPUs."""
    launched = os.environ.get("WORLD_SIZE")
    if cell.get("launched", True) and launched != str(cell.get("world_size", processes)):
        raise TechniqueError(
            f"techniques.{name}.{option}: the cell needs {cell.get('world_size', processes)} processes "
            f"(torchrun --nproc-per-node={cell.get('world_size', processes)}); this process was launched "
            f"with WORLD_SIZE={launched or 'unset'}"
        )
    if cell.get("device") == "cuda" and torch.cuda.device_count() < processes:
        raise TechniqueError(
            f"techniques.{name}.{option}: {processes} processes need as many GPUs, "
            f"this machine has {torch.cuda.device_count()}"
        )


def refuse_with(name: str, cell: dict, others: dict[str, str]) -> None:
    """Refuse the first technique of `others` present in the cell, with its reason."""
    for other, why in others.items():
        if other in cell.get("techniques", ()):
            raise TechniqueError(f"techniques.{name}: cannot be combined with '{other}' ({why})")


def _lifecycle_key(cls: type[Technique]) -> tuple:
    return (CATEGORIES.index(cls.category), cls.name)


def step_runs_inside(name: str, outer: type[Technique]) -> bool:
    """Technique `name` wraps the training step and comes after `outer` in the lifecycle order, so
    its ``train_step`` would run inside `outer`'s (which, for a pipeline, never calls it)."""
    cls = REGISTRY.get(name)
    return (
        cls is not None
        and cls.train_step is not Technique.train_step
        and _lifecycle_key(cls) > _lifecycle_key(outer)
    )


def init_process_group(run, by: str) -> None:
    """Create the process group the launcher did not (NCCL on CUDA, Gloo on the CPU); pin this
    rank's GPU. Collectives time out after 10 minutes rather than the library's default. The
    process count is recorded as technique `by`'s batch change (the learning rate left alone)."""
    if not dist.is_initialized():
        backend = "nccl" if run.device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=timedelta(minutes=10))
    if run.device.type == "cuda":
        run.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(run.device)
    run.change_batch(by, world_size=dist.get_world_size())
    run.rank = dist.get_rank()


def declare(run, **degrees: int) -> dict[str, int]:
    """Record a technique's degree (tp=, pp=) in the run's layout and re-derive the data-parallel
    size and rank from it; returns the layout so far."""
    layout = run.extra.setdefault(
        "parallel", {"world": run.world_size, "dp": run.world_size, "tp": 1, "pp": 1}
    )
    layout.update(degrees)
    inner = layout["tp"] * layout["pp"]
    if run.world_size % inner:
        raise TechniqueError(
            f"the parallel layout does not fit: tensor x pipeline degree {inner} does not divide "
            f"{run.world_size} processes"
        )
    layout["world"] = run.world_size
    layout["dp"] = run.world_size // inner
    run.data_parallel_size = layout["dp"]
    run.data_parallel_rank = run.rank // inner
    return layout


@functools.cache
def _mesh(device_type: str, dp: int, tp: int):
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(device_type, (dp, tp), mesh_dim_names=("dp", "tp"))


def mesh(run):
    """The (dp, tp) device mesh of this cell's layout (built once per process)."""
    layout = run.extra["parallel"]
    return _mesh(run.device.type, layout["dp"], layout["tp"])


def mean_over(loss: torch.Tensor, group=None) -> torch.Tensor:
    """The mean of `loss` over the ranks of `group` (every rank gets it): the global batch's loss,
    and the same value on every rank, so every rank takes the same decisions (divergence, target).
    Gloo has no AVG reduction, so SUM then divide."""
    out = loss.detach().float().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
    return out / dist.get_world_size(group)


def _groups_to_sum(grad) -> list[Any]:
    """Process groups over which a DTensor gradient's local squared norm must be summed: one per
    mesh dimension on which it is split (any kind of shard, FSDP's strided shards of a tensor-parallel
    shard included); replicated dimensions hold copies, counted once."""
    groups = []
    for dim, placement in enumerate(grad.placements):
        if placement.is_replicate():
            continue
        if placement.is_partial():  # clip_grad_norm reduces these first: a sum of norms would be wrong
            raise RuntimeError(f"gradient with a pending reduction ({grad.placements})")
        groups.append(grad.device_mesh.get_group(dim))
    return groups


@torch.no_grad()
def clip_grad_norm(params, max_norm: float, stage_group=None, skip: tuple = ()) -> torch.Tensor:
    """Clip gradients to a global L2 norm of `max_norm`, as ``torch.nn.utils.clip_grad_norm_``
    (coefficient ``max_norm / (norm + 1e-6)`` capped at 1), for gradients that are plain tensors or
    DTensors of any placements, and across pipeline stages (`stage_group`: each stage's squared
    norm is summed over it; `skip` lists parameters whose gradient another stage already counts).
    One all-reduce per distinct sharding, not one per parameter."""
    params = [p for p in params if p.grad is not None]
    skip_ids = {id(p) for p in skip}
    device = params[0].grad.device if params else torch.device("cpu")
    plain = torch.zeros((), dtype=torch.float32, device=device)
    sharded: dict[tuple, torch.Tensor] = {}
    sharded_groups: dict[tuple, list] = {}
    for p in params:
        if id(p) in skip_ids:
            continue
        g = p.grad
        if hasattr(g, "to_local"):
            if any(pl.is_partial() for pl in g.placements):
                # a pending sum (sequence-parallel norms' gradients): ||sum of parts|| needs the sum
                g = g.redistribute(
                    g.device_mesh, [Replicate() if pl.is_partial() else pl for pl in g.placements]
                )
            groups = _groups_to_sum(g)
            key = tuple(id(x) for x in groups)
            sq = torch.linalg.vector_norm(g.to_local().float()) ** 2
            sharded[key] = sharded.get(key, 0) + sq
            sharded_groups[key] = groups
        else:
            plain += torch.linalg.vector_norm(g.float()) ** 2
    total = plain
    for key, sq in sharded.items():
        sq = sq.clone() if torch.is_tensor(sq) else torch.tensor(float(sq), device=device)
        for group in sharded_groups[key]:
            dist.all_reduce(sq, op=dist.ReduceOp.SUM, group=group)
        total = total + sq
    if stage_group is not None:
        dist.all_reduce(total, op=dist.ReduceOp.SUM, group=stage_group)
    norm = total.sqrt()
    coef = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
    for p in params:
        g = p.grad
        (g.to_local() if hasattr(g, "to_local") else g).mul_(coef.to(g.dtype))
    return norm


def unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """The transformer block inside wrappers that keep it as ``.block`` (checkpointing, offloading)."""
    while hasattr(module, "block") and isinstance(module.block, torch.nn.Module):
        module = module.block
    return module
