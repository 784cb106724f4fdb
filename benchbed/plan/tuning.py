"""Tuning rulesets (AlgoPerf: Dahl et al. 2023, arXiv:2306.07179): a scenario's ``[tuning]`` table
read and checked, and each configuration's cells expanded into trials.

- ``defaults``: one run per seed at the techniques' paper defaults (every scenario without a
  ``[tuning]`` table, or with ``ruleset = "defaults"``).
- ``external``: per configuration, ``studies`` independent studies of ``trials`` trials each. Study
  k trains every one of its trials with the scenario's k-th seed; its trial points are the first
  ``trials`` points of a scrambled Halton sequence (`scipy.stats.qmc.Halton`) seeded by that seed,
  mapped through the configuration's search space: the union of its techniques' declared spaces
  (``Technique.search_space``), a technique's table in ``[tuning.search_space]`` replacing its
  declared one, plus the run-level settings named there (``warmup_frac``). Options a scenario fixes
  (``[techniques.X]``, a matrix axis) are not tuned. A configuration with nothing to tune runs one
  trial per study. Each trial is an ordinary cell with its own ``cell_id`` and ``config_key``;
  ``tuning_key`` (the configuration without the tuned values) groups its trials and studies.

    [tuning]
    ruleset = "external"        # or "defaults" (the table is then ignored)
    trials = 4                  # per study
    studies = 3                 # one seed each: the scenario's `seeds` (as many) or 0, 1, 2, ...
    [tuning.search_space]
    warmup_frac = [0.0, 0.2]    # run-level: tuned for every configuration
    [tuning.search_space.lion]  # replaces lion's declared space: only these are tuned
    lr = [1e-4, 1e-2]           # the declared scale of `lr` (log), else linear
    beta2 = { low = 0.95, high = 0.999, scale = "linear" }

The ranking side (best trial per study by time-to-target, median over studies, tuning cost) is in
``benchbed.analyse.tuning``.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from benchbed.plan.check import _Checker, suggest
from benchbed.techniques import REGISTRY, TechniqueError, build_config
from benchbed.techniques.search_space import SCALES, Dimension, Uniform

if TYPE_CHECKING:  # pragma: no cover
    from benchbed.plan.cell import Cell

RULESETS = ("external", "defaults")
TUNING_KEYS = {"ruleset", "trials", "studies", "search_space"}
DEFAULT_STUDIES = 3
#: run-level settings the tuner can set, with the range a scenario's range must stay inside; tuned
#: only when named in [tuning.search_space]
RUN_DIMENSIONS: dict[str, Dimension] = {"warmup_frac": Uniform(0.0, 0.9)}
RUN = "run"  # the owner of run-level dimensions


@dataclass(frozen=True)
class Tuning:
    """A checked ``[tuning]`` table."""

    ruleset: str
    trials: int
    studies: int
    technique_spaces: dict[str, dict[str, Dimension]]  # technique -> its replacement space
    run_space: dict[str, Dimension]

    @property
    def external(self) -> bool:
        return self.ruleset == "external"


def _float_option(cls, option: str) -> bool:
    hint = typing.get_type_hints(cls.Config).get(option)
    args = typing.get_args(hint) or (hint,)
    return float in args


def _dimension(ck: _Checker, value, field_name: str, declared: Dimension | None) -> Dimension:
    if isinstance(value, list):
        if len(value) != 2:
            raise ck.fail(field_name, f"expected [low, high], got {value!r}")
        low, high, scale = value[0], value[1], declared.scale if declared else "linear"
    elif isinstance(value, dict):
        unknown = set(value) - {"low", "high", "scale"}
        if unknown:
            raise ck.fail(f"{field_name}.{sorted(unknown)[0]}", "unknown key (low, high, scale)")
        if "low" not in value or "high" not in value:
            raise ck.fail(field_name, "give low and high")
        low, high = value["low"], value["high"]
        scale = value.get("scale", declared.scale if declared else "linear")
        if scale not in SCALES:
            raise ck.fail(f"{field_name}.scale", f"'log' or 'linear', got {scale!r}")
    else:
        raise ck.fail(field_name, f"expected [low, high] or {{low, high, scale}}, got {value!r}")
    for bound in (low, high):
        if isinstance(bound, bool) or not isinstance(bound, (int, float)):
            raise ck.fail(field_name, f"bounds must be numbers, got {bound!r}")
    dimension = Dimension(float(low), float(high), scale)
    try:
        dimension.check()
    except ValueError as exc:
        raise ck.fail(field_name, str(exc)) from None
    return dimension


def read(ck: _Checker, raw: dict, seeds: list[int], seeds_given: bool, repeats: int, ruleset_override):
    """The checked ``[tuning]`` table and the seeds (one per study), or (None, seeds) without one."""
    table = raw.get("tuning")
    if table is None:
        if ruleset_override == "external":
            raise ck.fail("tuning", "--ruleset external needs a [tuning] table (trials, studies)")
        return None, seeds
    ck.typed(table, dict, "tuning", "a table")
    for key in table:
        if key not in TUNING_KEYS:
            raise ck.fail(
                f"tuning.{key}",
                f"unknown key{suggest(key, TUNING_KEYS)} (ruleset, trials, studies, search_space)",
            )
    ruleset = ck.typed(table.get("ruleset", "external"), str, "tuning.ruleset", "a string")
    if ruleset not in RULESETS:
        raise ck.fail("tuning.ruleset", f"'external' or 'defaults', got {ruleset!r}")
    if "trials" not in table:
        raise ck.fail("tuning.trials", "missing: how many trials per study")
    trials = ck.positive(table["trials"], "tuning.trials", integer=True)
    studies = ck.positive(
        table.get("studies", len(seeds) if seeds_given else DEFAULT_STUDIES), "tuning.studies", integer=True
    )
    space = table.get("search_space", {})
    ck.typed(space, dict, "tuning.search_space", "a table")
    technique_spaces: dict[str, dict[str, Dimension]] = {}
    run_space: dict[str, Dimension] = {}
    for name, value in space.items():
        where = f"tuning.search_space.{name}"
        if isinstance(value, dict) and name in REGISTRY:
            cls = REGISTRY[name]
            options = {f.name for f in dataclasses.fields(cls.Config)}
            dims = {}
            for option, given in value.items():
                if option not in options:
                    raise ck.fail(
                        f"{where}.{option}",
                        f"not an option of technique '{name}'{suggest(option, options)}",
                    )
                if not _float_option(cls, option):
                    raise ck.fail(f"{where}.{option}", "only float options can be tuned")
                dims[option] = _dimension(ck, given, f"{where}.{option}", cls.search_space.get(option))
                for bound in (dims[option].low, dims[option].high):
                    try:
                        build_config(cls, {option: bound}, where)
                    except TechniqueError as exc:
                        raise ck.fail(
                            f"{where}.{option}", f"{bound:g} is not a valid value ({exc})"
                        ) from None
            technique_spaces[name] = dims
        elif name in RUN_DIMENSIONS:
            dimension = _dimension(ck, value, where, RUN_DIMENSIONS[name])
            limit = RUN_DIMENSIONS[name]
            if dimension.low < limit.low or dimension.high > limit.high:
                raise ck.fail(where, f"must stay inside [{limit.low:g}, {limit.high:g}]")
            run_space[name] = dimension
        else:
            known = set(REGISTRY) | set(RUN_DIMENSIONS)
            raise ck.fail(
                where,
                f"not a technique or a run setting{suggest(name, known)} "
                f"(a technique's table, or one of: {', '.join(RUN_DIMENSIONS)})",
            )
    tuning = Tuning(ruleset, trials, studies, technique_spaces, run_space)
    if ruleset_override is not None:
        tuning = dataclasses.replace(tuning, ruleset=ruleset_override)
    if not seeds_given:
        seeds = list(range(studies))  # under either ruleset, so both run the same seeds
    if not tuning.external:
        return tuning, seeds
    if repeats > 1:
        raise ck.fail("repeats", "a tuned scenario runs each trial once (its studies are its repeats)")
    if len(seeds) != studies:
        raise ck.fail(
            "seeds",
            f"a tuned scenario trains study k with the k-th seed: give {studies} seeds "
            f"(tuning.studies) or none, got {len(seeds)}",
        )
    return tuning, seeds


# -- expansion ----------------------------------------------------------------------------------


def halton_points(dims: int, n: int, seed: int) -> np.ndarray:
    """`n` points of a scrambled Halton sequence in [0, 1)^dims, seeded by `seed`."""
    from scipy.stats import qmc

    rng = np.random.default_rng(seed)
    try:
        sampler = qmc.Halton(d=dims, scramble=True, rng=rng)
    except TypeError:  # scipy < 1.15 names it seed
        sampler = qmc.Halton(d=dims, scramble=True, seed=rng)
    return sampler.random(n)


def cell_space(ck: _Checker, cell: Cell, tuning: Tuning) -> list[tuple[str, str, Dimension]]:
    """(owner, option, dimension) of everything tuned for this cell's configuration, in a fixed
    order: techniques by name, their options by name, then run-level settings."""
    dims = []
    for name in sorted(cell.techniques):
        fixed = cell.options.get(name, {})
        if name in tuning.technique_spaces:
            space = tuning.technique_spaces[name]
            for option in space:
                if option in fixed:
                    raise ck.fail(
                        f"tuning.search_space.{name}.{option}",
                        "also fixed by the scenario (techniques table or matrix axis): tune it or fix it",
                    )
        else:
            space = {
                o: d for o, d in REGISTRY[name].declared_space(cell.configs[name]).items() if o not in fixed
            }
        dims += [(name, option, space[option]) for option in sorted(space)]
    for name in sorted(tuning.run_space):
        if name == "warmup_frac" and cell.warmup_frac is not None:
            raise ck.fail("tuning.search_space.warmup_frac", "also a matrix axis (matrix.warmup_frac)")
        if name == "warmup_frac" and cell.options.get("lr_scaling", {}).get("warmup_frac") is not None:
            raise ck.fail(
                "tuning.search_space.warmup_frac",
                "lr_scaling sets warmup_frac itself (techniques.lr_scaling.warmup_frac): tune one of them",
            )
        dims.append((RUN, name, tuning.run_space[name]))
    return dims


def _label(owner: str, option: str) -> str:
    return option if owner == RUN else f"{owner}.{option}"


def trials(ck: _Checker, cell: Cell, tuning: Tuning, study: int) -> list[Cell]:
    """The trial cells of study `study` of `cell`'s configuration (`cell.seed` is the study's)."""
    dims = cell_space(ck, cell, tuning)
    description = {
        "trials": tuning.trials,
        "space": {_label(owner, option): dim.describe() for owner, option, dim in dims},
    }
    if dims:
        unit = halton_points(len(dims), tuning.trials, cell.seed)
        points = [
            {(owner, option): dim.value(float(u)) for (owner, option, dim), u in zip(dims, row, strict=True)}
            for row in unit
        ]
    else:
        points = [{}]  # nothing to tune: one trial
    out = []
    for index, point in enumerate(points):
        options = {name: dict(opts) for name, opts in cell.options.items()}
        for (owner, option), value in point.items():
            if owner != RUN:
                options.setdefault(owner, {})[option] = value
        configs = dict(cell.configs)
        for name in {owner for owner, _ in point if owner != RUN}:
            try:
                configs[name] = build_config(REGISTRY[name], options[name], f"tuning.search_space.{name}")
            except TechniqueError as exc:
                raise ck.fail(
                    f"tuning.search_space.{name}", f"trial {index} of study {study}: {exc}"
                ) from None
        out.append(
            dataclasses.replace(
                cell,
                options=options,
                configs=configs,
                warmup_frac=point.get((RUN, "warmup_frac"), cell.warmup_frac),
                ruleset="external",
                study=study,
                trial=index,
                tuned={_label(owner, option): value for (owner, option), value in point.items()},
                tuning=description,
            )
        )
    return out


def expand(ck: _Checker, cells: list[Cell], tuning: Tuning, seeds: list[int]) -> list[Cell]:
    """Every cell of an external-ruleset scenario replaced by its study's trials."""
    out = []
    for cell in cells:
        if cell.seed not in seeds:
            raise ck.fail("include", f"seed {cell.seed}: a tuned scenario's seeds are its studies ({seeds})")
        out += trials(ck, cell, tuning, seeds.index(cell.seed))
    return out
