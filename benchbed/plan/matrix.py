"""A checked `ScenarioSpec` -> the cells it expands to: the product of the matrix axes, fixed and
swept technique options, [[include]] and [[exclude]] entries, one cell per id, each technique's
config built and validated once, and the baseline configuration named.

The number of cells is counted from the axes before any cell is built: more than `MAX_CELLS`
(usually a typo: an extra zero in `repeats`, a long seed list) is refused unless the caller raises
the limit (``benchbed run --max-cells N``).
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from typing import Any

from benchbed.plan import profile as profiling
from benchbed.plan import stages
from benchbed.plan import tuning as tuning_table
from benchbed.plan.cell import Cell, lifecycle_order
from benchbed.plan.check import ScenarioError, _Checker, suggest
from benchbed.plan.scenario import MAX_SEED, ScenarioSpec, check_warmup_frac
from benchbed.techniques import PERMISSION_OPTIONS, REGISTRY, TechniqueError, build_config
from benchbed.workloads import WORKLOADS

DEFAULT_OPTIMIZER = "adamw"
SELECT_KEYS = {"techniques", "seed", "batch_size", "lr", "workload"}
#: cells a scenario may expand to without ``max_cells`` raised
MAX_CELLS = 10_000


@dataclass
class Scenario:
    name: str
    path: str
    text: str
    cells: list[Cell]
    baseline: str
    description: str = ""
    ruleset: str = "defaults"  # external when the scenario's cells are tuning trials


def parse_combo(ck: _Checker, combo, field_name: str) -> tuple[str, ...]:
    if isinstance(combo, str):
        names = [n.strip() for n in combo.split("+")] if combo.strip() else []
    elif isinstance(combo, list) and all(isinstance(n, str) for n in combo):
        names = [n.strip() for n in combo]
    else:
        raise ck.fail(field_name, f"expected a technique name, 'a+b' or a list of names, got {combo!r}")
    if any(not n for n in names) and names:
        raise ck.fail(field_name, f"empty technique name in {combo!r}")
    for n in names:
        if n not in REGISTRY:
            raise ck.fail(field_name, f"unknown technique '{n}'{suggest(n, REGISTRY)}")
    if len(set(names)) != len(names):
        raise ck.fail(field_name, f"technique listed twice in {combo!r}")
    optimizers = [n for n in names if REGISTRY[n].provides_optimizer]
    if len(optimizers) > 1:
        raise ck.fail(field_name, f"two optimizers in one cell: {' and '.join(optimizers)}")
    if not optimizers:
        names.append(DEFAULT_OPTIMIZER)
    for n in names:
        for other in REGISTRY[n].conflicts:
            if other in names:
                raise ck.fail(field_name, f"'{n}' cannot be combined with '{other}'")
    return lifecycle_order(names)


def expand(spec: ScenarioSpec, max_cells: int | None = None) -> Scenario:
    """Every cell of a checked scenario (at most `max_cells`, default `MAX_CELLS`). Raises ScenarioError."""
    ck, path, raw, matrix = spec.checker(), spec.path, spec.raw, spec.matrix
    name, seeds, repeats, workloads = spec.name, spec.seeds, spec.repeats, spec.workloads
    b_tokens, b_steps, b_seconds = spec.budget_tokens, spec.budget_steps, spec.budget_seconds
    target, eval_every = spec.target_loss, spec.eval_every_tokens

    # technique combinations and options ------------------------------------------------------
    known_axes = {"techniques", "batch_size", "lr", "workload", "warmup_frac"}
    for key in matrix:
        if key not in known_axes and "." not in key:
            raise ck.fail(
                f"matrix.{key}",
                f"unknown axis{suggest(key, known_axes)} (techniques, batch_size, lr, workload, warmup_frac, or TECHNIQUE.OPTION)",
            )

    combos = ck.list_of(
        matrix.get("techniques", [DEFAULT_OPTIMIZER]),
        "matrix.techniques",
        lambda v, f: parse_combo(ck, v, f),
    )
    used = {n for c in combos for n in c}

    fixed_options = raw.get("techniques", {})
    ck.typed(fixed_options, dict, "techniques", "a table of technique options")
    for tname, opts in fixed_options.items():
        if tname not in REGISTRY:
            raise ck.fail(f"techniques.{tname}", f"unknown technique '{tname}'{suggest(tname, REGISTRY)}")
        ck.typed(opts, dict, f"techniques.{tname}", "a table of options")

    option_axes: dict[str, dict[str, list]] = {}
    for key, values in matrix.items():
        if "." not in key:
            continue
        tname, opt = key.split(".", 1)
        if tname not in REGISTRY:
            raise ck.fail(f"matrix.{key}", f"unknown technique '{tname}'{suggest(tname, REGISTRY)}")
        if tname not in used:
            raise ck.fail(f"matrix.{key}", f"technique '{tname}' is in no combination of matrix.techniques")
        option_axes.setdefault(tname, {})[opt] = ck.list_of(values, f"matrix.{key}", lambda v, f: v)

    def batch_check(v, f):
        return ck.positive(v, f, integer=True)

    def lr_check(v, f):
        return float(ck.positive(v, f))

    batch_axis = (
        ck.list_of(matrix["batch_size"], "matrix.batch_size", batch_check)
        if "batch_size" in matrix
        else [None]
    )
    lr_axis = ck.list_of(matrix["lr"], "matrix.lr", lr_check) if "lr" in matrix else [None]
    warmup_axis = (
        ck.list_of(matrix["warmup_frac"], "matrix.warmup_frac", lambda v, f: check_warmup_frac(ck, v, f))
        if "warmup_frac" in matrix
        else [None]
    )

    def assignments(combo) -> int:
        count = 1
        for tname in combo:
            for values in option_axes.get(tname, {}).values():
                count *= len(values)
        return count

    def selector(entry, field_name) -> dict:
        ck.typed(entry, dict, field_name, "a table")
        for key in entry:
            if key not in SELECT_KEYS:
                raise ck.fail(f"{field_name}.{key}", f"unknown key{suggest(key, SELECT_KEYS)}")
        sel = dict(entry)
        if "techniques" in sel:
            sel["techniques"] = parse_combo(ck, sel["techniques"], f"{field_name}.techniques")
        if "workload" in sel:
            ck.workload_name(sel["workload"], f"{field_name}.workload")
        if "batch_size" in sel:
            batch_check(sel["batch_size"], f"{field_name}.batch_size")
        if "lr" in sel:
            sel["lr"] = lr_check(sel["lr"], f"{field_name}.lr")
        if "seed" in sel:
            ck.typed(sel["seed"], int, f"{field_name}.seed", "an integer")
            if not 0 <= sel["seed"] <= MAX_SEED:
                raise ck.fail(f"{field_name}.seed", f"must be from 0 to {MAX_SEED}, got {sel['seed']}")
        return sel

    includes = [
        selector(entry, f"include[{i}]")
        for i, entry in enumerate(ck.typed(raw.get("include", []), list, "include", "an array of tables"))
    ]
    excludes = [
        selector(entry, f"exclude[{i}]")
        for i, entry in enumerate(ck.typed(raw.get("exclude", []), list, "exclude", "an array of tables"))
    ]
    limit = MAX_CELLS if max_cells is None else max_cells
    count = len(workloads) * len(batch_axis) * len(lr_axis) * len(seeds) * repeats
    count *= sum(assignments(combo) for combo in combos)
    for sel in includes:
        count += (
            assignments(sel.get("techniques", combos[0])) * (1 if "seed" in sel else len(seeds)) * repeats
        )
    if count > limit:
        raise ck.fail(
            "matrix",
            f"{count:,} cells, more than the limit of {limit:,} (an extra zero in repeats or an axis?); "
            f"pass --max-cells {count} to run them all",
        )

    def options_for(combo) -> list[tuple[dict[str, dict[str, Any]], dict[str, Any]]]:
        """All option assignments of a combination (fixed options times the option axes), each with
        the typed config of every technique: (non-default options, configs)."""
        per_tech = []
        for tname in combo:
            base = dict(fixed_options.get(tname, {}))
            axes = option_axes.get(tname, {})
            keys = sorted(axes)
            choices = []
            for values in itertools.product(*(axes[k] for k in keys)) if keys else [()]:
                opts = {**base, **dict(zip(keys, values, strict=True))}
                try:
                    config = build_config(REGISTRY[tname], opts, f"techniques.{tname}")
                except TechniqueError as exc:
                    raise ScenarioError(f"{path}: {exc}") from None
                choices.append((tname, opts, config))
            per_tech.append(choices)

        def identity(opts: dict[str, Any]) -> dict[str, Any]:
            return {k: v for k, v in opts.items() if k not in PERMISSION_OPTIONS}

        return [
            ({t: identity(o) for t, o, _ in assignment if identity(o)}, {t: c for t, _, c in assignment})
            for assignment in itertools.product(*per_tech)
        ]

    def make_cell(workload, combo, assignment, seed, repeat, bs, lr, warmup=None) -> Cell:
        options, configs = assignment
        wl = WORKLOADS[workload]
        return Cell(
            scenario=name,
            workload=workload,
            techniques=combo,
            options=options,
            seed=seed,
            repeat=repeat,
            batch_size=bs if bs is not None else wl.batch_size,
            lr=lr if lr is not None else wl.lr,
            budget_tokens=b_tokens if (b_tokens or b_steps or b_seconds) else wl.budget_tokens,
            budget_steps=b_steps,
            budget_seconds=b_seconds,
            target_loss=float(target) if target is not None else wl.target_loss,
            eval_every_tokens=int(eval_every) if eval_every is not None else wl.eval_every_tokens,
            stop_at_target=spec.stop_at_target,
            device=spec.device,
            timeout_s=spec.timeout_s,
            threads=spec.threads,
            data=spec.data,
            base_dir=spec.base_dir,
            configs=configs,
            warmup_frac=warmup,
        )

    cells: list[Cell] = []
    for workload, combo, bs, lr, warmup in itertools.product(
        workloads, combos, batch_axis, lr_axis, warmup_axis
    ):
        for assignment in options_for(combo):
            for seed in seeds:
                for repeat in range(repeats):
                    cells.append(make_cell(workload, combo, assignment, seed, repeat, bs, lr, warmup))

    for sel in includes:
        combo = sel.get("techniques", combos[0])
        for assignment in options_for(combo):
            for seed in [sel["seed"]] if "seed" in sel else seeds:
                for repeat in range(repeats):
                    cells.append(
                        make_cell(
                            sel.get("workload", workloads[0]),
                            combo,
                            assignment,
                            seed,
                            repeat,
                            sel.get("batch_size"),
                            sel.get("lr"),
                        )
                    )

    for sel in excludes:

        def matches(c: Cell, sel=sel) -> bool:
            return all(
                (c.techniques == v if k == "techniques" else getattr(c, k if k != "seed" else "seed") == v)
                for k, v in sel.items()
            )

        cells = [c for c in cells if not matches(c)]

    # one cell per id (an include may repeat a matrix cell)
    unique: dict[str, Cell] = {}
    for c in cells:
        unique.setdefault(c.cell_id, c)
    cells = list(unique.values())
    if not cells:
        raise ck.fail("matrix", "no cells: every cell was excluded")
    cells = stages.link(cells, ck.fail)  # later pipeline stages name the cells they read

    tuning = spec.tuning
    if tuning is not None:
        for tname in tuning.technique_spaces:
            if tname not in {n for c in cells for n in c.techniques}:
                raise ck.fail(
                    f"tuning.search_space.{tname}",
                    f"technique '{tname}' is in no combination of matrix.techniques",
                )
    if tuning is not None and tuning.external:
        staged = sorted({c.workload for c in cells if c.inputs or WORKLOADS[c.workload].needs})
        if staged:
            # each stage's trials would need their own producer trial; not supported yet
            raise ck.fail(
                "tuning",
                f"the external ruleset cannot tune pipeline stages yet ({', '.join(staged)} read an "
                'earlier stage\'s model): use ruleset = "defaults" for this scenario',
            )
        cells = tuning_table.expand(ck, cells, tuning, seeds)
        if len(cells) > limit:
            raise ck.fail(
                "tuning",
                f"{len(cells):,} trial cells, more than the limit of {limit:,} (trials x studies x "
                f"configurations); pass --max-cells {len(cells)} to run them all",
            )

    for c in cells:
        cell_view = {**c.view(), "launched": False}
        try:
            WORKLOADS[c.workload].validate(cell_view)
        except ValueError as exc:
            raise ck.fail("workload", str(exc)) from None
        for tname in c.techniques:
            try:
                c.technique(tname).validate(cell_view)
            except TechniqueError as exc:
                msg = str(exc)
                raise ScenarioError(
                    f"{path}: {msg if msg.startswith('techniques') else f'techniques.{tname}: {msg}'}"
                ) from None

    baseline_raw = raw.get("baseline")
    variants = [c.variant for c in cells]
    if baseline_raw is None:
        baseline = variants[0]
    else:
        ck.typed(baseline_raw, str, "baseline", "a combination like 'adamw'")
        combo = parse_combo(ck, baseline_raw, "baseline")
        label = "+".join(sorted(combo))
        if label not in variants and baseline_raw not in variants:
            raise ck.fail(
                "baseline",
                f"'{baseline_raw}' is not a configuration of this scenario{suggest(label, set(variants))}",
            )
        baseline = baseline_raw if baseline_raw in variants else label
    cells = [
        dataclasses.replace(
            c,
            baseline=baseline,
            profile=profiling.for_cell(spec.profile, c.cell_id, c.variant),
            grid_intensity=spec.grid_intensity,
        )
        for c in cells
    ]
    return Scenario(
        name=name,
        path=path,
        text=spec.text,
        cells=cells,
        baseline=baseline,
        description=spec.description,
        ruleset=tuning.ruleset if tuning is not None else "defaults",
    )
