"""Run under torchrun by test_parallel.py: one training step of each parallel configuration against
the same step in one process (float64-free but same float32 data and weights), compared tensor by
tensor. Rank 0 writes {config: {"loss": |d|, "grad": max |d|, "norm": relative |d|}} as JSON.

    torchrun --nproc-per-node=2 tests/parallel_step_check.py OUT.json

Each configuration builds its model and optimizer through the worker's assembly path
(`build_context`, the technique lifecycle) and takes one step through the composed step
(`compose_step`: FSDP's loss averaging, the pipeline schedule); gradients are compared after it
(unclipped: the run's clip is off), each rank's shard gathered to the full tensor and mapped to the
single-process parameter it came from (q/k/v to the fused qkv's row blocks, a pipeline stage's
blocks to their global index, the last stage's head copy to the tied embedding). Then the gradient
norm each technique's clipping computes (a collective) is compared with torch's on one process.
"""

from __future__ import annotations

import json
import re
import sys

import torch
import torch.distributed as dist

from benchbed.techniques import REGISTRY, build_config
from benchbed.worker.assemble import build_context, run_settings
from benchbed.worker.context import compose_step
from benchbed.workloads import WORKLOADS, Batch

GLOBAL_BATCH = 16

CONFIGS = {
    2: {
        "data_parallel": {},
        "fsdp": {},
        "fsdp+activation_checkpointing": {"activation_checkpointing": {"every": 2}},
        "tensor_parallel": {},
        "tensor_parallel+sp": {"tensor_parallel": {"sequence_parallel": True}},
        "pipeline_parallel+gpipe": {"pipeline_parallel": {"schedule": "gpipe"}},
        "pipeline_parallel+1f1b": {"pipeline_parallel": {"schedule": "1f1b"}},
    },
    4: {
        "fsdp": {"fsdp": {"world_size": 4}},
        "fsdp+tensor_parallel": {"fsdp": {"world_size": 4}},
        "fsdp+tensor_parallel+sp": {
            "fsdp": {"world_size": 4},
            "tensor_parallel": {"sequence_parallel": True},
        },
        "fsdp+hybrid": {"fsdp": {"world_size": 4, "strategy": "hybrid_shard", "replicate": 2}},
    },
}


def technique(name: str, options: dict):
    return REGISTRY[name](build_config(REGISTRY[name], options.get(name, {}), name))


def context(names: list[str], options: dict, batch_size: int, world: int, rank: int):
    workload = WORKLOADS["lm-tiny"]
    run = run_settings(
        workload, torch.device("cpu"), batch_size=batch_size, world_size=world, rank=rank, grad_clip=None
    )
    techniques = [technique(n, options) for n in names] + [technique("adamw", {})]
    return build_context(workload, techniques, run)


def reference_name(name: str, model) -> tuple[str, slice | None]:
    """The single-process parameter (and row block) a parallel model's parameter comes from."""
    name = name.replace("._checkpoint_wrapped_module", "").replace(".block.", ".")
    rows = None
    m = re.search(r"\.attn\.([qkv])\.", name)
    if m:
        d = WORKLOADS["lm-tiny"].model.d_model
        i = "qkv".index(m.group(1))
        rows = slice(i * d, (i + 1) * d)
        name = name.replace(f".attn.{m.group(1)}.", ".attn.qkv.")
    if name.startswith("stage."):  # a pipeline stage: local block index -> global
        name = name[len("stage.") :]
        m = re.match(r"blocks\.(\d+)\.(.*)", name)
        if m:
            name = f"blocks.{model.block_range.start + int(m.group(1))}.{m.group(2)}"
        if name == "lm_head.weight":
            name = "tok_emb.weight"  # the head's copy of the tied embedding
    return name, rows


def check(names, options, world, rank, inputs, targets) -> dict:
    # data-parallel ranks: none in a pipeline, world / degree (2) with tensor parallelism
    dp = 1 if "pipeline_parallel" in names else world // (2 if "tensor_parallel" in names else 1)
    b = GLOBAL_BATCH // dp
    ctx = context(names, options, b, world, rank)
    shard = ctx.run.dp_rank
    batch = Batch(inputs[shard * b : (shard + 1) * b], targets[shard * b : (shard + 1) * b])
    ctx.model.train()
    loss = compose_step(ctx)(batch, 0)

    ref = context([], {}, GLOBAL_BATCH, 1, 0)
    ref.model.train()
    ref_loss = compose_step(ref)(Batch(inputs, targets), 0)
    ref_params = dict(ref.model.named_parameters())

    worst = 0.0
    for name, p in ctx.model.named_parameters():
        g = p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad
        key, rows = reference_name(name.removeprefix("module."), ctx.model)
        rg = ref_params[key].grad
        rg = rg[rows] if rows is not None else rg
        worst = max(worst, float((g - rg).abs().max()))
    # pipeline stages hold different parameters: the worst difference over all stages
    worst_t = torch.tensor(worst)
    dist.all_reduce(worst_t, op=dist.ReduceOp.MAX)
    norm = float(ctx.clip_grads(1e9))
    ref_norm = float(torch.nn.utils.clip_grad_norm_(ref.model.parameters(), 1e9))
    return {
        "loss": abs(float(loss) - float(ref_loss)),
        "grad": float(worst_t),
        "norm": abs(norm - ref_norm) / ref_norm,
    }


def main() -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    world, rank = dist.get_world_size(), dist.get_rank()
    data = WORKLOADS["lm-tiny"].make_data()
    inputs, targets = next(data.train_batches(GLOBAL_BATCH, WORKLOADS["lm-tiny"].seq_len, 0))
    results = {}
    for label, options in CONFIGS[world].items():
        names = [n for n in label.split("+") if n in REGISTRY]
        results[label] = check(names, options, world, rank, inputs, targets)
    if rank == 0:
        with open(sys.argv[1], "w") as f:
            json.dump(results, f, indent=1)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
