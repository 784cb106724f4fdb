"""The technique interface: a typed config plus lifecycle hooks, each a no-op by default.

Lifecycle, applied in this order by the train loop (techniques compose by this order, never by
knowing each other):

    validate(cell) -> configure(run) -> build_model(model, ctx) -> build_optimizer(params, ctx)
    -> per step: select_batch(batch, ctx) -> train_step(ctx, batch, step, inner) -> after_step(ctx)

A technique that wraps the model (parallel wrappers) sets ``wraps_model = True`` so it is applied
after every other ``build_model``. Every hook runs inside the training clock where it is called
per step, so a technique is charged for all of its own work.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from benchbed.techniques.search_space import Dimension

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


@dataclasses.dataclass(frozen=True)
class NoOptions:
    """Config of a technique that takes no options."""


class Technique:
    """Base class. Subclasses set the class attributes and override the hooks they need."""

    name: ClassVar[str]
    category: ClassVar[str]
    paper: ClassVar[str]  # "Authors year, Title" -- what a reader checks the implementation against
    Config: ClassVar[type] = NoOptions
    provides_optimizer: ClassVar[bool] = False
    wraps_model: ClassVar[bool] = False
    conflicts: ClassVar[tuple[str, ...]] = ()  # names this technique refuses to share a cell with
    #: option -> range the `external` ruleset tunes (docs/tuning.md); empty: nothing to tune
    search_space: ClassVar[dict[str, Dimension]] = {}

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
        """Adjust run settings: precision, batch size, learning rate, process count."""

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
