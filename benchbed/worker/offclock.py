"""Work the worker does outside the clock, on the cell's own objects: the warm-up step, and the
measurement of sampled steps (FLOPs, saved activations, gradient and optimizer-state bytes).

Warm-up (`warm_up`). Lazy initialisation and compilation (allocator pools, kernel selection, JIT
compilation of kernels, an optimizer's first-step set-up, DDP's first bucketing) happen the first
time a step runs. Every cell pays for them in one warm-up step that is the same for every cell: a
forward, backward and optimizer step of the model as built, on a throwaway batch of the trained
shape, outside every technique's step hooks; afterwards the model's parameters and buffers, the
optimizer's parameters and state, the loss scaler and the random generators are restored exactly, so
training starts from the same point as without it. Its time is `warmup_time_s`. A technique's
own one-off work (SNIP's scoring pass) is therefore in its first timed step, on its clock.

Measurement (`measure_step`). A sampled step is first run on an exact replica of the train context
(a deep copy: model, optimizer, techniques with their generators and masks; the same batch; the
global random state forked and restored), under the FLOP counter and the saved-tensor meter, off the
clock; then the timed loop runs the same step on the real objects. A data-parallel model is
replicated without its DDP wrapper (the replica does no communication; DDP adds no FLOPs).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from benchbed.measure import flops, memory
from benchbed.worker.context import TrainContext, run_step
from benchbed.workloads import Batch


def _devices(ctx: TrainContext) -> list[int]:
    return [ctx.device.index or 0] if ctx.device.type == "cuda" else []


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """Tensors the optimizer updates (its groups' parameters: the model's, or its own masters)."""
    return [p for group in optimizer.param_groups for p in group["params"]]


def warm_up(ctx: TrainContext, batch: Batch) -> None:
    """One untimed step of the model as built, then everything it changed restored (see above)."""
    model_state = {k: v.detach().clone() for k, v in ctx.model.state_dict().items()}
    owned = _optimizer_tensors(ctx.optimizer)
    owned_saved = [p.detach().clone() for p in owned]
    optimizer_state = copy.deepcopy(ctx.optimizer.state_dict())
    scaler_state = copy.deepcopy(ctx.scaler.state_dict()) if ctx.scaler is not None else None
    lrs = [group["lr"] for group in ctx.optimizer.param_groups]
    with torch.random.fork_rng(devices=_devices(ctx)):
        ctx.zero_grad()
        ctx.forward_backward(batch)
        ctx.optimizer_step()
        ctx.zero_grad()
    with torch.no_grad():
        ctx.model.load_state_dict(model_state)
        for p, saved in zip(owned, owned_saved, strict=True):
            p.copy_(saved)
    ctx.optimizer.load_state_dict(optimizer_state)
    for group, lr in zip(ctx.optimizer.param_groups, lrs, strict=True):
        group["lr"] = lr
    if ctx.scaler is not None:
        ctx.scaler.load_state_dict(scaler_state)


@dataclass(frozen=True)
class StepMeasurement:
    count: flops.StepCount
    saved_activation_bytes: int
    grad_bytes: int
    optimizer_state_bytes: int


def replicate(ctx: TrainContext) -> TrainContext:
    """A deep copy of the train context sharing only the workload (and unwrapping DDP).

    The optimizer is copied attribute by attribute: ``torch.optim.Optimizer`` pickles only its
    defaults, state and groups, which would drop what a subclass keeps beside them (flat buffers,
    host copies)."""
    memo: dict[int, object] = {id(ctx.workload): ctx.workload}
    inner = getattr(ctx.model, "module", None)
    if isinstance(ctx.model, torch.nn.parallel.DistributedDataParallel) and inner is not None:
        memo[id(ctx.model)] = copy.deepcopy(inner, memo)
    else:
        copy.deepcopy(ctx.model, memo)  # the parameters first, so the optimizer's copy shares them
    if ctx.optimizer is not None:
        twin = object.__new__(type(ctx.optimizer))
        memo[id(ctx.optimizer)] = twin
        twin.__dict__.update(copy.deepcopy(ctx.optimizer.__dict__, memo))
    return copy.deepcopy(ctx, memo)


def measure_step(ctx: TrainContext, batch: Batch) -> StepMeasurement:
    """Run the step the loop is about to run on a replica, counting FLOPs and saved bytes."""
    replica = replicate(ctx)
    model = replica.model
    resident = [*model.parameters(), *model.buffers(), *_optimizer_tensors(replica.optimizer)]
    with (
        torch.random.fork_rng(devices=_devices(ctx)),
        flops.counting() as tally,
        memory.measuring_saved(exclude=resident) as meter,
    ):
        _, tokens = run_step(replica, batch)
    count = flops.StepCount(step=ctx.step, hardware=tally.hardware, extra=tally.extra, tokens=tokens)
    return StepMeasurement(
        count=count,
        saved_activation_bytes=meter.peak,
        grad_bytes=memory.storage_bytes(p.grad for p in model.parameters()),
        optimizer_state_bytes=memory.storage_bytes(memory.optimizer_state_tensors(replica.optimizer)),
    )
