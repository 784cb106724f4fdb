"""The Workload interface (AlgoPerf's `Workload`, smaller): what is trained, on what, to which target.

A workload owns its model factory, its data (train and validation streams), its training loss, its
evaluation (the metric the target is on), its target and default budget, and its FLOPs accounting.
The train loop calls these methods and never names a model family. Adding a workload is one file in
``benchbed/workloads/`` that builds instances and passes them to `register` (see ``_template.py``).

Defaults a workload states (batch size, learning rate, weight decay, warm-up, clipping, betas) are
the baseline optimizer's: a scenario overrides them per cell.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchbed.workloads.batch import IGNORE_INDEX, Batch
from benchbed.workloads.data.base import DataError, DataSource


class InputMissing(DataError):
    """A cell's input (a pretrained base or an earlier stage's checkpoint) is not there."""


#: name -> Workload; filled by `register` when benchbed.workloads imports its modules
WORKLOADS: dict[str, Workload] = {}


def register(workload: Workload) -> Workload:
    if workload.name in WORKLOADS and WORKLOADS[workload.name] is not workload:
        raise RuntimeError(f"workload name '{workload.name}' registered twice")
    WORKLOADS[workload.name] = workload
    return workload


@dataclass(frozen=True, kw_only=True)
class Workload:
    """Base class: the stated settings, and the hooks a workload overrides."""

    name: str
    description: str
    make_data: Callable[[], DataSource] = field(repr=False, compare=False)
    data_label: str
    batch_size: int  # sequences (examples) per step
    lr: float  # peak learning rate of the baseline optimizer at `batch_size`
    weight_decay: float
    warmup_frac: float  # warm-up as a fraction of the budget, then decay to zero at its end
    budget_tokens: int  # the default budget, in tokens (target positions) trained on
    target_loss: float  # the target on `evaluate`'s metric
    eval_every_tokens: int
    val_sequences: int
    grad_clip: float | None = 1.0
    betas: tuple[float, float] = (0.9, 0.95)
    family: str = ""  # the model family ("gpt", ...): techniques that edit a model check it
    # -- pretrained bases and pipeline stages (docs/workloads.md) --------------------------------
    # a workload whose trained model this one starts from: pretrained once per results directory,
    # keyed by its config and `base_seed`, and never on a fine-tuning cell's clock
    base: Workload | None = field(default=None, repr=False)
    base_seed: int = 0
    # earlier pipeline stages: workloads whose cell (same seed and repeat, in the same scenario)
    # trains a model this workload reads; the runner runs those cells first
    needs: tuple[str, ...] = ()
    saves_checkpoint: bool = False  # a later stage reads this workload's trained model
    # where the base checkpoint and the inputs were found (set by `with_inputs` inside the cell)
    base_path: str | None = None
    input_paths: tuple[tuple[str, str], ...] = ()

    # -- what a subclass provides -------------------------------------------------------------------
    @property
    def seq_len(self) -> int:
        """Target positions per example (the token unit of the budget)."""
        raise NotImplementedError

    def build_model(self) -> nn.Module:
        raise NotImplementedError

    def per_sequence_loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """The loss of each example, [B] (importance sampling scores and reweights these)."""
        raise NotImplementedError

    def output_gradient_norm(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """Per-example norm of the gradient of that example's loss (`per_sequence_loss`) with respect
        to the model's output (the logits), [B], from one forward pass: Katharopoulos & Fleuret's
        (2018) upper bound of the per-example gradient norm, up to a constant. Importance sampling
        scores by it; a workload without it raises NotImplementedError."""
        raise NotImplementedError(f"workload '{self.name}' has no output-gradient norm")

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """The training loss: the mean over examples; with per-example weights their
        self-normalised weighted mean."""
        per_example = self.per_sequence_loss(model, batch)
        if batch.weights is None:
            return per_example.mean()
        return (per_example * batch.weights).sum() / batch.weights.sum()

    @torch.no_grad()
    def evaluate(
        self,
        model: nn.Module,
        val_batches: list[tuple[torch.Tensor, torch.Tensor]],
        device: torch.device,
        autocast: Callable[[], AbstractContextManager] = nullcontext,
    ) -> float:
        """The metric the target is on: mean validation loss per target position. The train loop
        evaluates every cell in float32 (it passes no `autocast`)."""
        was_training = model.training
        model.eval()
        total, count = torch.zeros((), dtype=torch.float64, device=device), 0
        for inputs, targets in val_batches:
            b = Batch(inputs, targets).to(device)
            n = int((targets != IGNORE_INDEX).sum()) if targets.dtype == torch.long else targets.numel()
            with autocast():
                loss = self.loss(model, b)
            total += loss.double() * n
            count += n
        model.train(was_training)
        return float(total / max(count, 1))

    def flops_per_token(self, model: nn.Module) -> float:
        """Training FLOPs per token by the workload's formula; NaN where it has none."""
        return math.nan

    def describe_model(self) -> str:
        return type(self).__name__

    def validate(self, cell: dict) -> None:
        """Refuse a cell that means nothing on this workload (raise ValueError with one line); `cell`
        is what `Technique.validate` sees. Default: every cell is fine."""

    def with_inputs(self, base_path: str | None, inputs: dict[str, str]) -> Workload:
        """This workload bound to its pretrained base checkpoint and its earlier stages'
        checkpoints (workload name -> directory); `build_model` and the losses read them."""
        return dataclasses.replace(self, base_path=base_path, input_paths=tuple(sorted(inputs.items())))

    def input_path(self, name: str) -> Path:
        paths = dict(self.input_paths)
        if name not in paths:
            raise InputMissing(f"{self.name}: the checkpoint of stage '{name}' was not given to this cell")
        return Path(paths[name])

    def result_columns(self, model: nn.Module) -> dict[str, Any]:
        """Workload-specific result columns after training (declared in results/schema.py), from the
        last evaluation; default none."""
        return {}

    def check_data(self, data: dict[str, Any], base_dir: str) -> None:
        """Open and validate the data a scenario's [data] table names, without training on it
        (headers, sizes, vocabulary range): the planner calls this before the first cell starts.
        Raises DataError naming the file. The default accepts only the workload's own data."""
        self.with_data(data, base_dir)

    def with_data(self, data: dict[str, Any], base_dir: str) -> Workload:
        """The workload on local data from a scenario's [data] table; only the synthetic default
        unless the workload overrides this."""
        kind = data.get("kind", "synthetic")
        if kind != "synthetic":
            raise DataError(f"data.kind: workload '{self.name}' reads only its own generated data")
        return self
