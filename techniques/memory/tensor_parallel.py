"""Tensor (intra-layer model) parallelism with DTensor ``parallelize_module`` (Shoeybi et al. 2019,
"Megatron-LM: Training Multi-Billion Parameter Language Models Using Model Parallelism"; sequence
parallelism: Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer
Models").

What it changes: in every block, the attention's query, key and value projections and the MLP's
``fc`` are split column-wise (each rank computes ``n_head / degree`` heads and ``1/degree`` of the
hidden units) and both output projections (attention ``proj``, MLP ``proj``) row-wise, so each
block costs one all-reduce in forward and one in backward per sublayer, exactly Megatron-LM's split.
All ranks of a tensor-parallel group train on the same batch.

The fused ``qkv``: the GPT computes q, k and v with one ``Linear(d, 3d)`` whose rows are [q; k; v].
Sharding that weight column-wise in contiguous chunks would give rank 0 all of q and half of k, and
the local ``split(d)`` would mix them. So each attention is rebuilt as three ``Linear(d, d)`` (q, k,
v) holding exactly the fused weight's three row blocks (same values, so the model computes the same
function; AdamW is element-wise, so its updates are the same too), and each is sharded
column-wise: rank r holds heads ``r * n_head/degree ...``, with q, k and v of the same heads. The
attention then runs on the local heads; ``n_head`` must be divisible by ``degree``.

Everything else (embeddings, the tied output head, the norms, the final norm) is replicated: its
parameters become replicated DTensors (every parameter is a DTensor, which PyTorch's foreach
optimizers and the clipping need), computed identically on every rank.

``sequence_parallel = true``: the norms and the residual stream between blocks are sharded along
the sequence dimension (the norms' activations shrink by ``degree``); the column-wise layers
all-gather their input and the row-wise layers reduce-scatter their output instead of all-reducing
it. Sequences of a length not divisible by ``degree`` are sharded unevenly (DTensor pads).

With ``fsdp``: 2-D parallelism on a (dp, tp) mesh (``fsdp.world_size`` processes, ``degree``
dividing it); tensor parallelism is applied first.

What the measurement shows: per-rank parameter bytes of the split layers at 1/degree (the
replicated embeddings and norms do not shrink), the time of the collectives on this interconnect
(Gloo over loopback on a CPU: tensor parallelism is not expected to pay there).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.distributed.tensor import DTensor, Replicate, Shard
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    PrepareModuleInput,
    PrepareModuleOutput,
    RowwiseParallel,
    SequenceParallel,
    parallelize_module,
)

from benchbed.techniques.base import Technique, TechniqueError, register
from benchbed.techniques.memory import _parallel


@dataclass(frozen=True)
class TensorParallelConfig:
    degree: int = 2  # ranks a layer is split over (the cell's processes unless fsdp sets more)
    sequence_parallel: bool = False

    def check(self) -> None:
        if self.degree < 1:
            raise ValueError(f"degree: must be >= 1, got {self.degree}")


class SplitQKVAttention(nn.Module):
    """The GPT's causal self-attention with its fused ``qkv`` split into ``q``, ``k``, ``v`` (the
    fused weight's row blocks, copied) so that each can be sharded by heads. Same function."""

    def __init__(self, attn: nn.Module):
        super().__init__()
        fused = attn.qkv
        if type(fused) is not nn.Linear:
            raise TechniqueError(
                f"techniques.tensor_parallel: attention 'qkv' is a {type(fused).__name__}, not a Linear "
                "(another technique replaced it); cannot split it"
            )
        d = fused.in_features
        self.n_head = attn.n_head
        self.head_dim = d // attn.n_head
        self.attn_fn = attn.attn_fn
        self.proj = attn.proj
        for i, name in enumerate("qkv"):
            lin = nn.Linear(
                d, d, bias=fused.bias is not None, device=fused.weight.device, dtype=fused.weight.dtype
            )
            with torch.no_grad():
                lin.weight.copy_(fused.weight[i * d : (i + 1) * d])
                if fused.bias is not None:
                    lin.bias.copy_(fused.bias[i * d : (i + 1) * d])
            setattr(self, name, lin)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T = x.shape[0], x.shape[1]
        # under tensor parallelism q, k, v are this rank's heads: [B, T, local heads * head_dim]
        q, k, v = (t.view(B, T, -1, self.head_dim).transpose(1, 2) for t in (self.q(x), self.k(x), self.v(x)))
        y = self.attn_fn(q, k, v, causal=True)
        return self.proj(y.transpose(1, 2).reshape(B, T, -1))


def _block_plan(sequence_parallel: bool) -> dict:
    if not sequence_parallel:
        return {
            "attn.q": ColwiseParallel(),
            "attn.k": ColwiseParallel(),
            "attn.v": ColwiseParallel(),
            "attn.proj": RowwiseParallel(),
            "mlp.fc": ColwiseParallel(),
            "mlp.proj": RowwiseParallel(),
        }
    gather = dict(input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),))
    return {
        "norm1": SequenceParallel(),
        "attn": PrepareModuleInput(**gather),
        "attn.q": ColwiseParallel(),
        "attn.k": ColwiseParallel(),
        "attn.v": ColwiseParallel(),
        "attn.proj": RowwiseParallel(output_layouts=Shard(1), use_local_output=False),
        "norm2": SequenceParallel(),
        "mlp": PrepareModuleInput(**gather),
        "mlp.fc": ColwiseParallel(),
        "mlp.proj": RowwiseParallel(output_layouts=Shard(1), use_local_output=False),
    }


def replicate_rest(model: nn.Module, mesh) -> int:
    """Every parameter not yet a DTensor becomes a replicated DTensor (ties kept: a parameter shared
    by two modules stays one parameter); the modules that own them take plain tensors in and give
    plain tensors out. Returns how many parameters were replicated."""
    converted: dict[int, nn.Parameter] = {}

    def to_dtensor(module, inputs, _mesh=mesh):
        return tuple(
            DTensor.from_local(t, _mesh, [Replicate()], run_check=False)
            if isinstance(t, torch.Tensor) and not isinstance(t, DTensor)
            else t
            for t in inputs
        )

    def to_local(module, inputs, output):
        return output.to_local() if isinstance(output, DTensor) else output

    for name, module in model.named_modules():
        own = {k: p for k, p in module._parameters.items() if p is not None and not isinstance(p, DTensor)}
        if not own:
            continue
        if any(True for _ in module.children()):
            raise TechniqueError(
                f"techniques.tensor_parallel: module '{name}' holds parameters outside its layers "
                f"({', '.join(own)}), which tensor parallelism cannot place"
            )
        for key, p in own.items():
            if id(p) not in converted:
                local = p.data
                converted[id(p)] = nn.Parameter(
                    DTensor.from_local(local, mesh, [Replicate()], run_check=False),
                    requires_grad=p.requires_grad,
                )
            module._parameters[key] = converted[id(p)]
        module.register_forward_pre_hook(to_dtensor)
        module.register_forward_hook(to_local)
    return len(converted)


@register
class TensorParallel(Technique):
    """Megatron-LM tensor parallelism (DTensor): column-wise q/k/v and fc, row-wise projections."""

    name = "tensor_parallel"
    category = "memory/parallelism"
    paper = "Shoeybi et al. 2019, Megatron-LM: Training Multi-Billion Parameter Language Models Using Model Parallelism"
    Config = TensorParallelConfig
    wraps_model = True
    splits_model = True
    wrap_order = 10  # innermost: before fsdp shards what is left
    conflicts = ("data_parallel", "pipeline_parallel", "lora", "cpu_offload_optimizer")

    def processes(self) -> int:
        return self.config.degree

    def validate(self, cell):
        _parallel.require_launched(self.name, "degree", self.config.degree, cell)
        world = cell.get("world_size", self.config.degree)
        if world % self.config.degree:
            raise TechniqueError(
                f"techniques.tensor_parallel.degree: {self.config.degree} does not divide the cell's {world} processes"
            )
        if world != self.config.degree and "fsdp" not in cell.get("techniques", ()):
            raise TechniqueError(
                f"techniques.tensor_parallel.degree: {world} processes with degree {self.config.degree} needs "
                "fsdp for the data-parallel dimension"
            )
        _parallel.refuse_with(
            self.name,
            cell,
            {
                **{n: "its scalar gains sit outside the layers" for n in _parallel.NORM_FREE},
                **_parallel.SHARDED_REFUSALS,
            },
        )
        n_head = _workload_heads(cell.get("workload"))
        if n_head is not None and n_head % self.config.degree:
            raise TechniqueError(
                f"techniques.tensor_parallel.degree: {self.config.degree} does not divide the model's {n_head} heads"
            )

    def configure(self, run):
        _parallel.init_process_group(run, self.name)
        _parallel.declare(run, tp=self.config.degree)

    def build_model(self, model, ctx):
        c = self.config
        mesh = _parallel.mesh(ctx.run)["tp"]
        for wrapper in model.blocks:
            block = _parallel.unwrap(wrapper)
            if block.attn.n_head % c.degree:
                raise TechniqueError(
                    f"techniques.tensor_parallel.degree: {c.degree} does not divide the model's {block.attn.n_head} heads"
                )
            block.attn = SplitQKVAttention(block.attn)
            parallelize_module(block, mesh, _block_plan(c.sequence_parallel))
        if c.sequence_parallel:  # the residual stream between blocks is sharded along the sequence
            parallelize_module(
                model.blocks[0],
                mesh,
                PrepareModuleInput(
                    input_layouts=(Replicate(),), desired_input_layouts=(Shard(1),), use_local_output=False
                ),
            )
            parallelize_module(
                model.blocks[-1],
                mesh,
                PrepareModuleOutput(
                    output_layouts=(Shard(1),), desired_output_layouts=(Replicate(),), use_local_output=True
                ),
            )
        replicated = replicate_rest(model, mesh)
        ctx.clip_grads = lambda max_norm: _parallel.clip_grad_norm(model.parameters(), max_norm)
        ctx.run.extra["tensor_parallel"] = {
            "degree": c.degree,
            "sequence_parallel": c.sequence_parallel,
            "qkv": "split into q, k, v Linear layers, each sharded column-wise by heads",
            "replicated_params": replicated,
        }
        return model


def _workload_heads(name: str | None) -> int | None:
    from benchbed.workloads import WORKLOADS

    model = getattr(WORKLOADS.get(name), "model", None)
    return getattr(model, "n_head", None)
