"""The technique interface: a typed config plus lifecycle hooks, each a no-op by default.

Lifecycle, applied in this order by the train loop (techniques compose by this order, never by
knowing each other):

    validate(cell) -> configure(run) -> build_model(model, ctx) -> build_optimizer(params, ctx)
    -> per step: select_batch(batch, ctx) -> train_step(ctx, batch, step, inner)
                 [inside the step, before clipping: on_gradients(ctx)] -> after_step(ctx)

A technique that wraps the model (parallel wrappers) sets ``wraps_model = True`` so it is applied
after every other ``build_model``; wrappers nest by ``wrap_order``, innermost first (tensor
parallelism shards the layers before sharded data parallelism shards what is left). Every hook runs
inside the training clock where it is called per step, so a technique is charged for all of its own
work, the first step's included (the excluded warm-up step is the same for every cell and runs no
technique hook; a technique that replaces the whole step, a pipeline schedule, supplies the warm-up
step through ``ctx.warm_up_step``).

Fairness duties: a technique that changes the batch (per-process batch, process count, a pool it
selects from) does it in `configure` through ``run.change_batch(...)``, naming the learning-rate
rule it applies; work that is not the model's forward and backward of the step runs under
``ctx.extra_work()`` (rematerialisation under ``ctx.recompute()``), so FLOPs counted on the step
split into model and hardware FLOPs (see ``benchbed.measure.flops``).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from benchbed.techniques.search_space import Dimension
from benchbed.workloads import WORKLOADS

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from benchbed.worker.context import RunSettings, TrainContext
    from benchbed.workloads import Batch

#: the survey's taxonomy, used by `benchbed list techniques` and the dashboard filters
CATEGORIES = (
    "compute/optimizer",
    "compute/initialization",
    "compute/sparse",
    "compute/large_batch",
    "compute/incremental",
    "compute/overparameterization",
    "compute/fine_tuning",
    "compute/rlhf",
    "data/token_masking",
    "data/importance_sampling",
    "memory/precision",
    "memory/rematerialization",
    "memory/offloading",
    "memory/parameter_efficient",
    "memory/parallelism",
    "hardware/kernels",
    "hardware/sparse_matmul",
    "hardware/low_precision",
    "hardware/efficient_attention",
)


#: name -> Technique subclass; filled by @register when benchbed.techniques imports every module
REGISTRY: dict[str, type[Technique]] = {}


def register(cls: type[Technique]) -> type[Technique]:
    if cls.name in REGISTRY and REGISTRY[cls.name] is not cls:
        raise RuntimeError(f"technique name '{cls.name}' registered twice")
    if cls.category not in CATEGORIES:
        raise RuntimeError(f"technique '{cls.name}': unknown category '{cls.category}'")
    fields = {f.name for f in dataclasses.fields(cls.Config)}
    for option, dimension in cls.search_space.items():
        if option not in fields:
            raise RuntimeError(f"technique '{cls.name}': search_space.{option}: not an option of its config")
        try:
            dimension.check()
        except ValueError as exc:
            raise RuntimeError(f"technique '{cls.name}': search_space.{option}: {exc}") from None
    REGISTRY[cls.name] = cls
    return cls


class TechniqueError(ValueError):
    """A technique's config or combination is invalid; the message names the field."""


def require_family(technique: Technique, cell: dict) -> None:
    """Refuse, in one line, a workload whose model family the technique does not know how to edit
    (``technique.families``; empty = any model). Techniques that edit a model call this first in
    `validate`."""
    families = technique.families
    if not families:
        return
    workload = WORKLOADS.get(cell.get("workload", ""))
    if workload is not None and workload.family not in families:
        raise TechniqueError(
            f"techniques.{technique.name}: edits {' or '.join(families)} models; workload "
            f"'{workload.name}' is a {workload.family or 'unnamed'} model"
        )


@dataclasses.dataclass(frozen=True)
class NoOptions:
    """Config of a technique that takes no options."""


#: options that permit a cell to run rather than change what it computes: kept out of the cell's
#: identity (variant, config_key), so a cell allowed to run emulated matches the same cell elsewhere
PERMISSION_OPTIONS = ("allow_emulated",)


@dataclasses.dataclass(frozen=True)
class PrecisionConfig:
    """Config of a reduced-precision technique (one with a `precision`): on a CPU that only emulates
    that precision the scenario is refused unless `allow_emulated` is set; the cell then runs and
    its row says so (`emulated_precision`). Subclass it to add options."""

    allow_emulated: bool = False


class Technique:
    """Base class. Subclasses set the class attributes and override the hooks they need."""

    name: ClassVar[str]
    category: ClassVar[str]
    paper: ClassVar[str]  # "Authors year, Title" -- what a reader checks the implementation against
    Config: ClassVar[type] = NoOptions
    provides_optimizer: ClassVar[bool] = False
    wraps_model: ClassVar[bool] = False
    wrap_order: ClassVar[int] = 100  # wrappers are applied in this order (lowest = innermost)
    # the model is split over processes (sharded or staged): the worker's off-clock replica of a step
    # cannot run, so FLOPs are not counted and memory is read per rank
    splits_model: ClassVar[bool] = False
    conflicts: ClassVar[tuple[str, ...]] = ()  # names this technique refuses to share a cell with
    #: the reduced precision the technique computes in ("bf16", "fp16", "int8", "fp8"), checked
    #: against what the CPU computes natively (`measure.machine.cpu_capability`); give such a
    #: technique a `PrecisionConfig` (its `allow_emulated` option)
    precision: ClassVar[str | None] = None
    #: option -> range the `external` ruleset tunes (docs/tuning.md); empty: nothing to tune
    search_space: ClassVar[dict[str, Dimension]] = {}
    # the step's FLOPs vary at random from step to step (layer drop): the FLOP counter samples more steps
    stochastic_flops: ClassVar[bool] = False
    # model families (Workload.family) whose seams the technique edits; empty = any model. validate()
    # refuses the others through require_family.
    families: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: Any = None):
        self.config = config if config is not None else self.Config()

    def processes(self) -> int:
        """Processes the cell must be launched as (the runner uses torchrun when > 1)."""
        return 1

    # -- lifecycle hooks (all optional) -------------------------------------------------------
    def validate(self, cell: dict) -> None:
        """Refuse meaningless settings before anything runs (raise TechniqueError).

        `cell` has keys device, techniques, batch_size, workload, world_size (processes the cell
        is launched as) and launched (False when the scenario is checked, True inside the cell)."""

    def configure(self, run: RunSettings) -> None:
        """Adjust run settings: precision, batch size, learning rate, process count. A batch change
        goes through ``run.change_batch(self.name, ..., lr_rule=...)``; any other is refused."""

    def build_model(self, model: torch.nn.Module, ctx: TrainContext) -> torch.nn.Module:
        return model

    def build_optimizer(self, params: list, ctx: TrainContext) -> torch.optim.Optimizer | None:
        return None

    def select_batch(self, batch: Batch, ctx: TrainContext) -> Batch:
        return batch

    def train_step(
        self, ctx: TrainContext, batch: Batch, step: int, inner: Callable[[Batch], torch.Tensor]
    ) -> torch.Tensor:
        """Wrap or replace one optimisation step; return the detached training loss (0-dim tensor).

        Returning a tensor, not a float, keeps the step free of a host sync on a GPU."""
        return inner(batch)

    def on_gradients(self, ctx: TrainContext) -> None:
        """Edit the step's gradients before clipping (fp16: after unscaling), e.g. zero the pruned
        weights' gradients so clipping and the optimizer see only the trained weights."""

    def after_step(self, ctx: TrainContext) -> None:
        """Schedules that act between steps (growth, layer drop, pruning)."""

    @classmethod
    def declared_space(cls, config: Any) -> dict[str, Dimension]:
        """The search space for a cell with `config` (a technique whose space depends on an option,
        such as the fused optimizer's algorithm, overrides this); `search_space` by default."""
        return dict(cls.search_space)

    @classmethod
    def describe(cls) -> str:
        return (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""


def build_config(cls: type[Technique], options: dict[str, Any], where: str) -> Any:
    """Typed, validated config from a TOML table: unknown keys and wrong types are refused."""
    fields = {f.name: f for f in dataclasses.fields(cls.Config)}
    for key in options:
        if key not in fields:
            known = ", ".join(sorted(fields)) or "none"
            raise TechniqueError(
                f"{where}.{key}: unknown option of technique '{cls.name}' (options: {known})"
            )
    hints = typing.get_type_hints(cls.Config)
    values = {}
    for key, value in options.items():
        allowed = _allowed_types(hints.get(key))
        if float in allowed and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if tuple in allowed and isinstance(value, list):
            value = tuple(value)
        if allowed and not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
            names = " or ".join(t.__name__ for t in allowed if t is not type(None))
            raise TechniqueError(f"{where}.{key}: expected {names}, got {type(value).__name__} ({value!r})")
        for item in value if isinstance(value, tuple) else (value,):
            if isinstance(item, float) and not math.isfinite(item):
                raise TechniqueError(f"{where}.{key}: must be a finite number, got {item!r}")
        values[key] = value
    try:
        config = cls.Config(**values)
    except TechniqueError:
        raise
    except (TypeError, ValueError) as exc:
        raise TechniqueError(f"{where}: {exc}") from None
    check = getattr(config, "check", None)
    if check is not None:
        try:
            check()
        except (TypeError, ValueError) as exc:
            raise TechniqueError(f"{where}: {exc}") from None
    return config


def _allowed_types(hint: Any) -> tuple[type, ...]:
    """Concrete runtime types a TOML value may have for a config field annotation."""
    if hint is None:
        return ()
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return tuple(t for arg in typing.get_args(hint) for t in _allowed_types(arg))
    if origin is typing.Literal:
        return tuple({type(a) for a in typing.get_args(hint)})
    if origin is not None:
        return (origin,)
    return (hint,) if isinstance(hint, type) else ()
