"""Overparameterise, stop early, compress, train on (the survey's "train large, then compress":
Li et al. 2020, "Train Large, Then Compress: Rethinking Model Size for Efficient Training and
Inference of Transformers", ICML; TinyLlama and Minitron prune or distil a larger model the same way).

What it changes: the model, twice, on one clock. The cell starts from a wider (and optionally
deeper) GPT than the workload's: ``heads_mult`` x the heads (same head size), ``mlp_mult`` x the MLP
width, ``extra_layers`` more blocks. It trains that model until the training loss (an exponential
moving average, checked every ``check_every`` steps; on the synthetic stream it estimates the
validation loss without pausing the clock) reaches ``early_stop_ratio`` x the target, or until
``max_wide_frac`` of the budget is used. Then it compresses it into exactly the workload's
architecture by structured magnitude pruning (`_structured.py`: the most important blocks, heads
per block and MLP channels per block by weight L2 norm), carries the optimizer's moments over for the
surviving weights, and trains the small model on to the target. With ``method = "distill"`` the
pruned student also learns from the frozen wide teacher (Hinton et al. 2015: alpha T^2
KL(teacher_T || student_T) + (1 - alpha) CE) for ``distill_frac`` of the budget; the teacher's
forward passes are on the clock.

Fairness: the budget is the workload's, in tokens, shared by both phases; the wide phase's slower
steps, the pruning and the distillation are all timed. The baseline is the workload's own model
trained directly for the same budget (plain ``adamw``); `compress.toml` runs the pair. The row's
``params`` and ``flops_per_token`` are the compressed model's; ``run_extra`` records the wide
model's and the step of the compression.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from benchbed.techniques.base import Technique, register
from benchbed.techniques.compute._finetune import refuse_model_rebuilders, require_gpt
from benchbed.techniques.compute._structured import carry_optimizer_state, prune, uniform_plan


@dataclass(frozen=True)
class OverparameterizeCompressConfig:
    heads_mult: int = 2  # the wide model's heads per block, x the workload's (head size kept)
    mlp_mult: int = 2  # its MLP width, x the workload's
    extra_layers: int = 0  # blocks beyond the workload's (pruned away by block importance)
    early_stop_ratio: float = 1.5  # compress once the training loss is <= this x the target
    max_wide_frac: float = 0.5  # ... or at this fraction of the budget at the latest
    check_every: int = 10  # steps between loss checks (each a host sync on a GPU)
    ema: float = 0.9  # smoothing of the training loss that is checked
    method: Literal["prune", "distill"] = "prune"
    distill_frac: float = 0.1  # of the budget, student trained against the wide teacher (distill)
    distill_alpha: float = 0.5
    temperature: float = 2.0

    def check(self) -> None:
        if self.heads_mult < 1 or self.mlp_mult < 1 or self.extra_layers < 0:
            raise ValueError("heads_mult, mlp_mult: must be >= 1; extra_layers: >= 0")
        if self.heads_mult == 1 and self.mlp_mult == 1 and self.extra_layers == 0:
            raise ValueError(
                "heads_mult, mlp_mult, extra_layers: the wide model must be larger than the workload's"
            )
        if self.early_stop_ratio < 1.0:
            raise ValueError(
                f"early_stop_ratio: must be >= 1 (a multiple of the target), got {self.early_stop_ratio}"
            )
        if not 0.0 < self.max_wide_frac < 1.0:
            raise ValueError(f"max_wide_frac: must be in (0, 1), got {self.max_wide_frac}")
        if self.check_every < 1 or not 0.0 <= self.ema < 1.0:
            raise ValueError("check_every: must be >= 1; ema: in [0, 1)")
        if self.method not in ("prune", "distill"):
            raise ValueError(f"method: 'prune' or 'distill', got {self.method!r}")
        if not 0.0 < self.distill_frac < 1.0 or not 0.0 <= self.distill_alpha <= 1.0 or self.temperature <= 0:
            raise ValueError("distill_frac: in (0, 1); distill_alpha: in [0, 1]; temperature: positive")


def distillation_loss(
    student_logits, teacher_logits, targets, alpha: float, temperature: float, ignore_index=-100
):
    """alpha T^2 KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) CE(s, targets), over non-ignored positions."""
    V = student_logits.size(-1)
    s, t = student_logits.view(-1, V).float(), teacher_logits.view(-1, V).float()
    y = targets.view(-1)
    keep = y != ignore_index
    ce = F.cross_entropy(s, y, ignore_index=ignore_index)
    log_p_s = F.log_softmax(s[keep] / temperature, dim=-1)
    log_p_t = F.log_softmax(t[keep] / temperature, dim=-1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1).mean()
    return alpha * temperature**2 * kl + (1.0 - alpha) * ce


@register
class OverparameterizeCompress(Technique):
    """Train a wider model, stop early, prune (or distil) it into the workload's model, train on."""

    name = "overparameterize_compress"
    category = "compute/overparameterization"
    paper = "Li et al. 2020, Train Large, Then Compress: Rethinking Model Size for Efficient Training and Inference of Transformers"
    Config = OverparameterizeCompressConfig

    def __init__(self, config=None):
        super().__init__(config)
        self.small_cfg = None
        self.ema_loss: torch.Tensor | None = None
        self.compressed_at: int | None = None
        self.teacher = None
        self.distill_until = 0.0

    def validate(self, cell):
        require_gpt(self.name, cell, pretrained=False)
        refuse_model_rebuilders(self.name, cell)

    def build_model(self, model, ctx):
        c = self.config
        small = model.cfg
        self.small_cfg = small
        wide = dataclasses.replace(
            small,
            n_head=small.n_head * c.heads_mult,
            attn_width=small.n_head * c.heads_mult * small.head_dim,
            mlp_ratio=small.mlp_ratio * c.mlp_mult,
            n_layer=small.n_layer + c.extra_layers,
        )
        torch.manual_seed(ctx.run.seed)
        wide_model = type(model)(wide).to(ctx.device)
        ctx.run.extra.update(
            compress_wide_params=sum(p.numel() for p in wide_model.parameters()),
            compress_wide_flops_per_token=wide_model.flops_per_token(),
        )
        return wide_model

    def train_step(self, ctx, batch, step, inner):
        loss = inner(batch)
        if self.compressed_at is None:
            d = loss.detach().float()
            self.ema_loss = (
                d if self.ema_loss is None else self.config.ema * self.ema_loss + (1 - self.config.ema) * d
            )
        return loss

    def after_step(self, ctx):
        c = self.config
        if self.teacher is not None and ctx.progress() >= self.distill_until:
            self.teacher = None  # distillation over: the student trains on the task loss alone
            ctx.loss_fn = ctx.workload.loss
        if self.compressed_at is not None:
            return
        due = ctx.progress() >= c.max_wide_frac
        if not due and ctx.step % c.check_every == 0 and self.ema_loss is not None:
            due = float(self.ema_loss) <= c.early_stop_ratio * ctx.run.target_loss  # host sync here only
        if due:
            self.compress(ctx)

    @torch.no_grad()
    def compress(self, ctx) -> None:
        c, small = self.config, self.small_cfg
        model = ctx.model
        if c.method == "distill":
            import copy

            self.teacher = copy.deepcopy(model).eval()
            for p in self.teacher.parameters():
                p.requires_grad_(False)
            self.distill_until = ctx.progress() + c.distill_frac
            ctx.loss_fn = self.distill_loss
        plan = uniform_plan(model, small.n_layer, small.n_head, small.mlp_ratio * small.d_model)
        mapping = prune(model, plan)
        model.cfg = small
        old = ctx.replace_model(model)
        carry_optimizer_state(old, ctx.optimizer, mapping)
        self.compressed_at = ctx.step + 1  # after_step runs before the loop counts this step
        ema = float(self.ema_loss) if self.ema_loss is not None else math.nan
        ctx.run.extra.update(
            compress_step=self.compressed_at,
            compress_tokens=ctx.tokens + ctx.run.tokens_per_step * ctx.run.world_size,
            compress_train_loss=ema,
            compress_small_params=sum(p.numel() for p in model.parameters()),
            compress_small_flops_per_token=model.flops_per_token(),
        )

    def distill_loss(self, model, batch):
        student = model(batch.inputs)
        with torch.no_grad():
            teacher = self.teacher(batch.inputs)
        return distillation_loss(
            student, teacher, batch.targets, self.config.distill_alpha, self.config.temperature
        )
