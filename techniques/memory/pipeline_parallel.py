"""Pipeline (inter-layer model) parallelism with ``torch.distributed.pipelining``: GPipe (Huang et
al. 2019, "GPipe: Efficient Training of Giant Neural Networks using Pipeline Parallelism") and 1F1B
(Narayanan et al. 2019, "PipeDream: Generalized Pipeline Parallelism for DNN Training"; the
non-interleaved 1F1B of Narayanan et al. 2021, Megatron-LM).

What it changes: the GPT is cut into ``stages`` consecutive pieces, one per process: the first
holds the embeddings and its share of the blocks, the last its blocks, the final norm and the
output head, the others blocks only (blocks are spread as evenly as possible). Each step splits the
batch into ``microbatches`` and runs them through the stages; activations travel forward and their
gradients backward by point-to-point sends. GPipe runs every microbatch's forward, then every
backward (activations of all microbatches alive at once); 1F1B alternates one forward and one
backward once the pipeline is full, so a stage keeps at most ``stages`` microbatches' activations.
Both have the same idle time: the bubble fraction ``(p - 1) / (m + p - 1)`` for ``p`` stages and
``m`` microbatches, recorded as ``pipeline_bubble``; ``pipeline_idle_frac`` is measured (the share
of the schedule's time a stage did no compute, bubble and communication together, mean over
stages), and each stage's own in ``memory_per_rank_json``.

Gradients are the mean over microbatches (the schedule scales them), i.e. the batch's mean loss as
in a single process when microbatches hold equally many target tokens. The training loss reported
is the mean of the microbatch losses, sent from the last stage to every rank.

The tied input/output embedding: the first stage holds the embedding, the last a copy of it as the
output head (same initial values). After each backward the two copies' gradients are summed over a
process group of the two stages, so both receive the gradient the tied weight gets in one process
and their optimizer steps keep them equal (Megatron-LM's treatment of the shared embedding).
Gradient clipping uses the global norm: each stage's squared norm, summed over all stages (the
copy counted once). Evaluation runs the stages forward only and sends the metric from the last
stage.

Composition: replaces the whole step, so a technique that changes the step itself (SAM,
importance sampling, fp16 loss scaling) is refused, as are the other parallel wrappers; it composes
with techniques that change the blocks (checkpointing, offloading, LoRA) and with bf16 autocast.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from benchbed.techniques.base import Technique, TechniqueError, register
from benchbed.techniques.memory import _parallel
from benchbed.workloads import Batch

SCHEDULES = ("gpipe", "1f1b")


@dataclass(frozen=True)
class PipelineParallelConfig:
    stages: int = 2  # processes, one stage each
    schedule: str = "1f1b"
    microbatches: int = 4  # must divide the batch size

    def check(self) -> None:
        if self.stages < 2:
            raise ValueError(f"stages: must be >= 2, got {self.stages}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule: must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.microbatches < 1:
            raise ValueError(f"microbatches: must be >= 1, got {self.microbatches}")


def split_blocks(n_blocks: int, stages: int) -> list[range]:
    """Consecutive block ranges, one per stage, sizes differing by at most one (earlier stages
    take the remainder's extra blocks)."""
    base, extra = divmod(n_blocks, stages)
    out, start = [], 0
    for s in range(stages):
        size = base + (1 if s < extra else 0)
        out.append(range(start, start + size))
        start += size
    return out


class Stage(nn.Module):
    """One stage of the GPT: [embeddings] + blocks[lo:hi] + [final norm, output head]."""

    def __init__(self, model: nn.Module, blocks: range, first: bool, last: bool):
        super().__init__()
        self.first, self.last = first, last
        if first:
            self.tok_emb, self.pos_emb = model.tok_emb, model.pos_emb
        self.blocks = nn.ModuleList(model.blocks[i] for i in blocks)
        if last:
            self.norm_f = model.norm_f
            head = model.lm_head
            self.lm_head = nn.Linear(head.in_features, head.out_features, bias=head.bias is not None)
            with torch.no_grad():  # a copy: the first stage keeps the embedding it is tied to
                self.lm_head.weight = nn.Parameter(head.weight.detach().clone())
                if head.bias is not None:
                    self.lm_head.bias = nn.Parameter(head.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.first:
            pos = torch.arange(x.shape[1], device=x.device)
            x = self.tok_emb(x) + self.pos_emb(pos)
        for block in self.blocks:
            x = block(x)
        if self.last:
            x = self.lm_head(self.norm_f(x))
        return x


class PipelineModel(nn.Module):
    """What the train loop sees on each rank: this rank's stage (its parameters are what the
    optimizer steps), and the whole model's size for the row."""

    def __init__(self, stage: Stage, whole: nn.Module, blocks: range):
        super().__init__()
        self.stage = stage
        self.whole_model_params = (
            sum(p.numel() for p in whole.parameters()),
            sum(p.numel() for p in whole.parameters() if p.requires_grad),
        )
        fn = getattr(whole, "flops_per_token", None)
        self._flops = float(fn()) if fn is not None else math.nan
        self.block_range = blocks

    def flops_per_token(self) -> float:
        return self._flops

    def forward(self, x):  # pragma: no cover - the schedules call the stage
        raise RuntimeError("a pipeline stage runs through its schedule, not model(inputs)")


class _LastStageView(nn.Module):
    """model(inputs) for the workload's evaluation on the last stage: runs the forward-only
    schedule (inputs arrive from the previous stage) and returns the batch's logits."""

    def __init__(self, schedule):
        super().__init__()
        self.schedule = schedule

    def forward(self, inputs):
        return self.schedule.step()


class _Timer:
    """Busy time of a stage's compute (forward and backward chunks) against the schedule's time,
    over the steps after the first; CUDA events on a GPU (no extra synchronisation)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.on = False
        self.busy: list = []  # (start, end) pairs
        self.spans: list = []

    def stamp(self):
        if self.cuda:
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            return e
        return time.perf_counter()

    @staticmethod
    def _seconds(a, b) -> float:
        return a.elapsed_time(b) / 1e3 if hasattr(a, "elapsed_time") else b - a

    def wrap(self, fn):
        def timed(*args, **kwargs):
            if not self.on:
                return fn(*args, **kwargs)
            t0 = self.stamp()
            out = fn(*args, **kwargs)
            self.busy.append((t0, self.stamp()))
            return out

        return timed

    def idle_fraction(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        total = sum(self._seconds(a, b) for a, b in self.spans)
        busy = sum(self._seconds(a, b) for a, b in self.busy)
        return 1.0 - busy / total if total > 0 else math.nan


@register
class PipelineParallel(Technique):
    """Pipeline parallelism (torch.distributed.pipelining): GPipe or 1F1B over microbatches."""

    name = "pipeline_parallel"
    category = "memory/parallelism"
    paper = "Huang et al. 2019, GPipe; Narayanan et al. 2019, PipeDream (1F1B)"
    Config = PipelineParallelConfig
    wraps_model = True
    splits_model = True
    wrap_order = 15
    conflicts = ("data_parallel", "fsdp", "tensor_parallel", "cpu_offload_optimizer")

    def processes(self) -> int:
        return self.config.stages

    def validate(self, cell):
        c = self.config
        _parallel.require_launched(self.name, "stages", c.stages, cell)
        _parallel.refuse_with(
            self.name,
            cell,
            {
                "fp16_autocast": "loss scaling is not applied per microbatch",
                "sam": "it runs forward and backward itself, outside the schedule",
                "grad_norm_sampling": "its per-sequence weights are not split into microbatches",
                "layer_drop": "it changes the blocks while the stages are fixed",
                "progressive_stacking": "it grows the model after the split",
                "snip": "it computes gradients through model(inputs), which a stage cannot",
                "early_bird": "its masks span the whole model, a stage holds part of it",
            },
        )
        for other in cell.get("techniques", ()):
            if _parallel.step_runs_inside(other, type(self)):
                raise TechniqueError(
                    f"techniques.{self.name}: cannot be combined with '{other}' (its training-step wrapper "
                    "would run inside the pipeline schedule, which replaces the step)"
                )
        batch = cell.get("batch_size")
        if batch is not None and batch % c.microbatches:
            raise TechniqueError(
                f"techniques.pipeline_parallel.microbatches: {c.microbatches} does not divide the batch size {batch}"
            )
        n_layer = _workload_layers(cell.get("workload"))
        if n_layer is not None and n_layer < c.stages:
            raise TechniqueError(
                f"techniques.pipeline_parallel.stages: {c.stages} stages for {n_layer} blocks"
            )

    def configure(self, run):
        _parallel.init_process_group(run, self.name)
        _parallel.declare(run, pp=self.config.stages)
        p, m = self.config.stages, self.config.microbatches
        run.columns["pipeline_bubble"] = (p - 1) / (m + p - 1)

    def build_model(self, model, ctx):
        from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

        c, run = self.config, ctx.run
        if not all(hasattr(model, a) for a in ("tok_emb", "pos_emb", "blocks", "norm_f", "lm_head")):
            raise TechniqueError(
                "techniques.pipeline_parallel: the model is not the benchbed GPT; cannot cut it"
            )
        rank, last_rank = run.rank, c.stages - 1
        ranges = split_blocks(len(model.blocks), c.stages)
        stage_mod = Stage(model, ranges[rank], first=rank == 0, last=rank == last_rank)
        self.first, self.last, self.last_rank = rank == 0, rank == last_rank, last_rank
        self.tied = model.lm_head.weight is model.tok_emb.weight
        wrapped = PipelineModel(stage_mod, model, ranges[rank])
        del model  # this rank keeps its stage only
        stage = PipelineStage(stage_mod, rank, c.stages, ctx.device)
        self.timer = _Timer(ctx.device)
        stage.forward_one_chunk = self.timer.wrap(stage.forward_one_chunk)
        stage.backward_one_chunk = self.timer.wrap(stage.backward_one_chunk)

        def loss_fn(output, target):
            return ctx.loss_fn(lambda _inputs: output, Batch(target, target))

        cls = ScheduleGPipe if c.schedule == "gpipe" else Schedule1F1B
        self.schedule = cls(stage, n_microbatches=c.microbatches, loss_fn=loss_fn)
        self.eval_schedule = ScheduleGPipe(stage, n_microbatches=c.microbatches)  # forward only
        self.stage_mod = stage_mod
        r = ranges[rank]
        self.block_label = f"{r.start}-{r.stop - 1}" if len(r) else "none"
        # the two copies of the tied embedding sum their gradients over this group (all ranks create it)
        self.tied_group = dist.new_group([0, last_rank]) if self.tied else None
        self.tied_param = (
            stage_mod.tok_emb.weight if self.first else stage_mod.lm_head.weight if self.last else None
        )
        skip = (stage_mod.lm_head.weight,) if self.last and self.tied else ()  # counted once, on stage 0
        ctx.clip_grads = lambda max_norm: _parallel.clip_grad_norm(
            stage_mod.parameters(), max_norm, stage_group=dist.group.WORLD, skip=skip
        )
        ctx.evaluate_fn = self._evaluate
        ctx.warm_up_step = lambda batch: self.train_step(ctx, batch, 0, None)  # through the schedule
        self.workload_evaluate = ctx.workload.evaluate
        run.extra["pipeline_parallel"] = {
            "schedule": c.schedule,
            "stages": c.stages,
            "microbatches": c.microbatches,
            "blocks_per_stage": [len(r) for r in ranges],
            "tied_embedding": "copied to the last stage, gradients summed" if self.tied else "untied",
        }
        run.extra["per_rank"] = self._per_rank
        return wrapped

    def _per_rank(self) -> dict:
        """This stage's figures for the per-rank table (called once, after training)."""
        return {"stage_blocks": self.block_label, "pipeline_idle_frac": self.timer.idle_fraction()}

    def train_step(self, ctx, batch, step, inner):
        ctx.zero_grad()
        self.timer.on = step > 0  # the first step pays for shape inference and buffer set-up
        t0 = self.timer.stamp()
        losses: list[torch.Tensor] = []
        with ctx.autocast():
            if self.first:
                self.schedule.step(batch.inputs)
            elif self.last:
                self.schedule.step(target=batch.targets, losses=losses)
            else:
                self.schedule.step()
        if self.timer.on:
            self.timer.spans.append((t0, self.timer.stamp()))
        self.timer.on = False
        if self.tied_param is not None:
            grad = self.tied_param.grad
            dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=self.tied_group)
        ctx.optimizer_step()
        loss = (
            torch.stack([x.detach().float() for x in losses]).mean()
            if self.last
            else torch.zeros((), dtype=torch.float32, device=ctx.device)
        )
        dist.broadcast(loss, src=self.last_rank)
        return loss

    @torch.no_grad()
    def _evaluate(self, model, val_batches, device, autocast=nullcontext) -> float:
        was = self.stage_mod.training
        self.stage_mod.eval()
        try:
            if self.last:
                value = self.workload_evaluate(
                    _LastStageView(self.eval_schedule), val_batches, device, autocast
                )
            else:
                for inputs, _targets in val_batches:
                    with autocast():
                        if self.first:
                            self.eval_schedule.step(inputs.to(device))
                        else:
                            self.eval_schedule.step()
                value = math.nan
        finally:
            self.stage_mod.train(was)
        out = torch.tensor([value], dtype=torch.float64, device=device)
        dist.broadcast(out, src=self.last_rank)
        return float(out)


def _workload_layers(name: str | None) -> int | None:
    from benchbed.workloads import WORKLOADS

    model = getattr(WORKLOADS.get(name), "model", None)
    return getattr(model, "n_layer", None)
