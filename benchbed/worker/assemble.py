"""Assemble a cell's training: device, run settings from the cell and its workload, the techniques
(validated, configured), and the model and optimizer through the technique lifecycle.

Tests use `run_settings` and `build_context` to train through the same path as a cell.
"""

from __future__ import annotations

import torch

from benchbed.techniques.base import Technique, TechniqueError
from benchbed.worker.context import RunSettings, TrainContext
from benchbed.workloads import Workload


def default_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def run_settings(workload: Workload, device: torch.device, **overrides) -> RunSettings:
    """The run settings of `workload` at its defaults (budget: its token budget), then `overrides`."""
    settings = dict(
        device=device,
        seed=0,
        batch_size=workload.batch_size,
        base_batch_size=workload.batch_size,
        seq_len=workload.seq_len,
        lr=workload.lr,
        weight_decay=workload.weight_decay,
        betas=workload.betas,
        warmup_frac=workload.warmup_frac,
        grad_clip=workload.grad_clip,
        budget_tokens=workload.budget_tokens,
        budget_steps=None,
        budget_seconds=None,
        eval_every_tokens=workload.eval_every_tokens,
        target_loss=workload.target_loss,
    )
    settings.update(overrides)
    return RunSettings(**settings)


def configure(techniques: list[Technique], run: RunSettings) -> None:
    """Each technique's `configure`, in order; a technique that changed the batch (per-process
    batch, process count, pool) without declaring it through `run.change_batch` is refused, so every
    batch change and its learning-rate rule is on the record."""
    for t in techniques:
        before, declared = run.batch_shape(), len(run.batch_changes)
        t.configure(run)
        if run.batch_shape() != before and not any(
            change["by"] == t.name for change in run.batch_changes[declared:]
        ):
            raise TechniqueError(
                f"techniques.{t.name}: configure changed the batch {before} -> {run.batch_shape()} "
                "without run.change_batch(...) (which records it and its learning-rate rule)"
            )


def build(ctx: TrainContext) -> None:
    """Model and optimizer through the technique lifecycle (wrappers last)."""
    run = ctx.run
    torch.manual_seed(run.seed)
    model: torch.nn.Module = ctx.workload.build_model().to(run.device)
    ctx.model = model
    ordered = [t for t in ctx.techniques if not t.wraps_model] + [t for t in ctx.techniques if t.wraps_model]
    for t in ordered:
        ctx.model = t.build_model(ctx.model, ctx)
    ctx.make_optimizer()
    if run.grad_scaling:
        ctx.scaler = torch.amp.GradScaler(run.device.type)


def build_context(
    workload: Workload, techniques: list[Technique], run: RunSettings, cell_view: dict | None = None
) -> TrainContext:
    """Validate (when `cell_view` is given) and configure the techniques, then build the model and
    optimizer: everything a cell does before its first step."""
    if cell_view is not None:
        for t in techniques:
            t.validate(cell_view)
    configure(techniques, run)
    ctx = TrainContext(run, workload, techniques)
    build(ctx)
    return ctx
