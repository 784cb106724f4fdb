"""Scenario files (TOML) -> a validated `Scenario` -> the list of cells it expands to.

Every mistake in a scenario is reported as one line ``FILE: field: what is wrong`` (a
`ScenarioError`) before anything runs; unknown names come with the closest known name.

    name = "quick"                  # optional; defaults to the file name
    workload = "lm-tiny"            # or a list: a matrix axis
    device = "auto"                 # cpu | cuda | auto
    seeds = [0, 1]
    repeats = 1                     # runs of each (config, seed); > 1 for noisy-metric statistics
    baseline = "adamw"              # the combination speedups are measured against
    target_loss = 0.70              # optional; the workload's otherwise
    stop_at_target = true
    timeout_s = 600                 # per cell
    eval_every_tokens = 129024      # optional; the workload's otherwise

    [budget]                        # any of tokens / steps / seconds; the workload's otherwise
    tokens = 2_000_000

    [data]                          # optional: local data instead of the synthetic corpus
    kind = "text"                   # text | shards
    path = "corpus/*.txt"           # relative to the scenario file

    [matrix]                        # the product of the listed axes
    techniques = ["adamw", "adamw+bf16_autocast", ["activation_checkpointing"]]
    batch_size = [32, 64]
    lr = [3e-3, 1e-2]
    "lion.lr" = [1e-4, 3e-4]        # a technique option as an axis (cells that use lion)

    [techniques.lion]               # fixed options of a technique
    beta2 = 0.98

    [[include]]                     # extra cells (fields: techniques, seed, batch_size, lr, workload)
    [[exclude]]                     # drop cells matching every given field
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import importlib.resources
import itertools
import json
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any

import tomllib

from benchbed.techniques import CATEGORIES, REGISTRY, TechniqueError, build_config
from benchbed.workloads import WORKLOADS

DEFAULT_OPTIMIZER = "adamw"
DEVICES = ("cpu", "cuda", "auto")
TOP_LEVEL_KEYS = {
    "name",
    "description",
    "workload",
    "device",
    "seeds",
    "repeats",
    "baseline",
    "target_loss",
    "stop_at_target",
    "timeout_s",
    "eval_every_tokens",
    "budget",
    "data",
    "matrix",
    "techniques",
    "include",
    "exclude",
}
BUDGET_KEYS = {"tokens", "steps", "seconds"}
DATA_KEYS = {"kind", "path"}
SELECT_KEYS = {"techniques", "seed", "batch_size", "lr", "workload"}


class ScenarioError(ValueError):
    """A bad scenario: str(error) is the one line `FILE: field: what is wrong`."""


def suggest(name: str, known) -> str:
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""


@dataclass(frozen=True)
class Cell:
    """One training run: a configuration, a seed and a repeat index. Serialised as the cell spec."""

    scenario: str
    workload: str
    techniques: tuple[str, ...]  # in lifecycle order
    options: dict[str, dict[str, Any]]  # technique -> non-default options
    seed: int
    repeat: int
    batch_size: int
    lr: float
    budget_tokens: int | None
    budget_steps: int | None
    budget_seconds: float | None
    target_loss: float
    eval_every_tokens: int
    stop_at_target: bool
    device: str
    timeout_s: float
    data: dict[str, Any] = field(default_factory=dict)
    base_dir: str = "."
    baseline: str = ""

    def config(self) -> dict[str, Any]:
        """Everything that defines the configuration, without seed and repeat."""
        return {
            "workload": self.workload,
            "data": self.data,
            "techniques": list(self.techniques),
            "options": self.options,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "budget": {
                "tokens": self.budget_tokens,
                "steps": self.budget_steps,
                "seconds": self.budget_seconds,
            },
            "target_loss": self.target_loss,
            "eval_every_tokens": self.eval_every_tokens,
            "stop_at_target": self.stop_at_target,
            "device": self.device,
        }

    @property
    def world_size(self) -> int:
        """Processes this cell is launched as (the largest any of its techniques needs)."""
        return max(
            REGISTRY[n](build_config(REGISTRY[n], self.options.get(n, {}), f"techniques.{n}")).processes()
            for n in self.techniques
        )

    def view(self) -> dict[str, Any]:
        """What `Technique.validate(cell)` sees."""
        return {
            "device": self.device,
            "techniques": list(self.techniques),
            "batch_size": self.batch_size,
            "workload": self.workload,
            "world_size": self.world_size,
        }

    @property
    def config_key(self) -> str:
        blob = json.dumps(self.config(), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    @property
    def techniques_label(self) -> str:
        return "+".join(sorted(self.techniques))

    @property
    def variant(self) -> str:
        """Readable label of the configuration (what differs between cells of one scenario)."""
        parts = []
        for name in sorted(self.techniques):
            opts = self.options.get(name)
            parts.append(
                name + ("[" + ",".join(f"{k}={v}" for k, v in sorted(opts.items())) + "]" if opts else "")
            )
        label = "+".join(parts)
        wl = WORKLOADS.get(self.workload)
        if wl is not None and self.batch_size != wl.batch_size:
            label += f" bs={self.batch_size}"
        if wl is not None and not math.isclose(self.lr, wl.lr):
            label += f" lr={self.lr:g}"
        return label

    @property
    def is_baseline(self) -> bool:
        return self.variant == self.baseline

    @property
    def cell_id(self) -> str:
        slug = re.sub(r"[^A-Za-z0-9]+", "_", self.variant).strip("_")[:60]
        rep = f"-r{self.repeat}" if self.repeat else ""
        return f"{self.workload}-{slug}-s{self.seed}{rep}-{self.config_key[:8]}"

    def to_spec(self) -> dict[str, Any]:
        spec = dataclasses.asdict(self)
        spec.update(
            techniques=list(self.techniques),
            cell_id=self.cell_id,
            config_key=self.config_key,
            variant=self.variant,
            techniques_label=self.techniques_label,
            is_baseline=self.is_baseline,
            world_size=self.world_size,
        )
        return spec

    @staticmethod
    def from_spec(spec: dict[str, Any]) -> Cell:
        names = {f.name for f in dataclasses.fields(Cell)}
        kwargs = {k: v for k, v in spec.items() if k in names}
        kwargs["techniques"] = tuple(kwargs["techniques"])
        return Cell(**kwargs)


@dataclass
class Scenario:
    name: str
    path: str
    text: str
    cells: list[Cell]
    baseline: str
    description: str = ""


def default_scenario_path() -> str:
    return str(importlib.resources.files("benchbed.scenarios") / "quick.toml")


def resolve_scenario_path(name: str | None) -> str:
    """A path, or the name of a scenario shipped with benchbed (`quick`, `optimizers`, ...)."""
    if name is None:
        return default_scenario_path()
    if os.path.exists(name):
        return name
    shipped = importlib.resources.files("benchbed.scenarios") / (
        name if name.endswith(".toml") else name + ".toml"
    )
    if shipped.is_file():
        return str(shipped)
    return name  # load() reports it missing


def lifecycle_order(names) -> tuple[str, ...]:
    return tuple(sorted(names, key=lambda n: (CATEGORIES.index(REGISTRY[n].category), n)))


class _Checker:
    def __init__(self, path: str):
        self.path = path

    def fail(self, field_name: str, message: str) -> ScenarioError:
        return ScenarioError(f"{self.path}: {field_name}: {message}")

    def typed(self, value, types, field_name, what):
        if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
            raise self.fail(field_name, f"expected {what}, got {value!r}")
        if not isinstance(value, types):
            raise self.fail(field_name, f"expected {what}, got {type(value).__name__} {value!r}")
        return value

    def positive(self, value, field_name, integer=False):
        kinds = int if integer else (int, float)
        self.typed(value, kinds, field_name, "an integer" if integer else "a number")
        if not value > 0 or (isinstance(value, float) and not math.isfinite(value)):
            raise self.fail(field_name, f"must be positive, got {value!r}")
        return value

    def list_of(self, value, field_name, check):
        if not isinstance(value, list):
            value = [value]
        if not value:
            raise self.fail(field_name, "empty list: the matrix would have no cells")
        return [check(v, f"{field_name}[{i}]") for i, v in enumerate(value)]


def _parse_combo(ck: _Checker, combo, field_name: str) -> tuple[str, ...]:
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


def load(path: str, device_override: str | None = None, repeats_override: int | None = None) -> Scenario:
    """Read, validate and expand a scenario file. Raises ScenarioError."""
    ck = _Checker(path)
    try:
        with open(path, "rb") as f:
            raw_bytes = f.read()
    except FileNotFoundError:
        raise ScenarioError(f"{path}: file: not found") from None
    except OSError as exc:
        raise ScenarioError(f"{path}: file: {exc.strerror}") from None
    text = raw_bytes.decode("utf-8", errors="replace")
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{path}: toml: {exc}") from None

    for key in raw:
        if key not in TOP_LEVEL_KEYS:
            raise ck.fail(key, f"unknown key{suggest(key, TOP_LEVEL_KEYS)}")

    name = ck.typed(raw.get("name", os.path.splitext(os.path.basename(path))[0]), str, "name", "a string")
    description = ck.typed(raw.get("description", ""), str, "description", "a string")
    device = device_override or ck.typed(raw.get("device", "auto"), str, "device", "a string")
    if device not in DEVICES:
        raise ck.fail("device", f"unknown device '{device}' (cpu, cuda, auto){suggest(device, DEVICES)}")
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"

    def int_check(v, f):
        ck.typed(v, int, f, "an integer")
        if v < 0:
            raise ck.fail(f, f"must be >= 0, got {v}")
        return v

    seeds = ck.list_of(raw.get("seeds", [0]), "seeds", int_check)
    if len(set(seeds)) != len(seeds):
        raise ck.fail("seeds", f"seed listed twice in {seeds}")
    repeats = ck.positive(raw.get("repeats", 1), "repeats", integer=True)
    if repeats_override is not None:
        repeats = ck.positive(repeats_override, "--repeat", integer=True)
    stop_at_target = ck.typed(raw.get("stop_at_target", True), bool, "stop_at_target", "true or false")
    timeout_s = ck.positive(raw.get("timeout_s", 1800), "timeout_s")

    matrix = raw.get("matrix", {})
    ck.typed(matrix, dict, "matrix", "a table")

    def workload_check(v, f):
        ck.typed(v, str, f, "a workload name")
        if v not in WORKLOADS:
            raise ck.fail(f, f"unknown workload '{v}'{suggest(v, WORKLOADS)}")
        return v

    if "workload" in raw and "workload" in matrix:
        raise ck.fail("matrix.workload", "workload given both at top level and as a matrix axis")
    workloads = ck.list_of(matrix.get("workload", raw.get("workload", "lm-tiny")), "workload", workload_check)

    budget = raw.get("budget", {})
    ck.typed(budget, dict, "budget", "a table")
    for key in budget:
        if key not in BUDGET_KEYS:
            raise ck.fail(f"budget.{key}", f"unknown key{suggest(key, BUDGET_KEYS)} (tokens, steps, seconds)")
    if "budget" in raw and not budget:
        raise ck.fail("budget", "empty table: give tokens, steps and/or seconds")
    b_tokens = ck.positive(budget["tokens"], "budget.tokens", integer=True) if "tokens" in budget else None
    b_steps = ck.positive(budget["steps"], "budget.steps", integer=True) if "steps" in budget else None
    b_seconds = ck.positive(budget["seconds"], "budget.seconds") if "seconds" in budget else None

    target = raw.get("target_loss")
    if target is not None:
        ck.positive(target, "target_loss")
    eval_every = raw.get("eval_every_tokens")
    if eval_every is not None:
        ck.positive(eval_every, "eval_every_tokens", integer=True)

    data = raw.get("data", {})
    ck.typed(data, dict, "data", "a table")
    for key in data:
        if key not in DATA_KEYS:
            raise ck.fail(f"data.{key}", f"unknown key{suggest(key, DATA_KEYS)} (kind, path)")
    if data:
        kind = data.get("kind")
        if kind not in ("synthetic", "text", "shards"):
            raise ck.fail("data.kind", f"expected synthetic, text or shards, got {kind!r}")
        if kind != "synthetic":
            p = data.get("path")
            if not isinstance(p, str) or not p:
                raise ck.fail("data.path", "a file or glob pattern is required")
    base_dir = os.path.dirname(os.path.abspath(path))

    # technique combinations and options ------------------------------------------------------
    known_axes = {"techniques", "batch_size", "lr", "workload"}
    for key in matrix:
        if key not in known_axes and "." not in key:
            raise ck.fail(
                f"matrix.{key}",
                f"unknown axis{suggest(key, known_axes)} (techniques, batch_size, lr, workload, or TECHNIQUE.OPTION)",
            )
    combos = ck.list_of(
        matrix.get("techniques", [DEFAULT_OPTIMIZER]),
        "matrix.techniques",
        lambda v, f: _parse_combo(ck, v, f),
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

    def options_for(combo) -> list[dict[str, dict[str, Any]]]:
        """All option assignments of a combination: fixed options times the option axes."""
        per_tech = []
        for tname in combo:
            base = dict(fixed_options.get(tname, {}))
            axes = option_axes.get(tname, {})
            keys = sorted(axes)
            choices = []
            for values in itertools.product(*(axes[k] for k in keys)) if keys else [()]:
                opts = {**base, **dict(zip(keys, values, strict=True))}
                try:
                    build_config(REGISTRY[tname], opts, f"techniques.{tname}")
                except TechniqueError as exc:
                    raise ScenarioError(f"{path}: {exc}") from None
                choices.append((tname, opts))
            per_tech.append(choices)
        return [{t: o for t, o in assignment if o} for assignment in itertools.product(*per_tech)]

    def make_cell(workload, combo, options, seed, repeat, bs, lr) -> Cell:
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
            stop_at_target=stop_at_target,
            device=device,
            timeout_s=float(timeout_s),
            data=data,
            base_dir=base_dir,
        )

    cells: list[Cell] = []
    for workload, combo, bs, lr in itertools.product(workloads, combos, batch_axis, lr_axis):
        for options in options_for(combo):
            for seed in seeds:
                for repeat in range(repeats):
                    cells.append(make_cell(workload, combo, options, seed, repeat, bs, lr))

    def selector(entry, field_name) -> dict:
        ck.typed(entry, dict, field_name, "a table")
        for key in entry:
            if key not in SELECT_KEYS:
                raise ck.fail(f"{field_name}.{key}", f"unknown key{suggest(key, SELECT_KEYS)}")
        sel = dict(entry)
        if "techniques" in sel:
            sel["techniques"] = _parse_combo(ck, sel["techniques"], f"{field_name}.techniques")
        if "workload" in sel:
            workload_check(sel["workload"], f"{field_name}.workload")
        return sel

    for i, entry in enumerate(ck.typed(raw.get("include", []), list, "include", "an array of tables")):
        sel = selector(entry, f"include[{i}]")
        combo = sel.get("techniques", combos[0])
        for options in options_for(combo):
            for seed in [sel["seed"]] if "seed" in sel else seeds:
                for repeat in range(repeats):
                    cells.append(
                        make_cell(
                            sel.get("workload", workloads[0]),
                            combo,
                            options,
                            seed,
                            repeat,
                            sel.get("batch_size"),
                            sel.get("lr"),
                        )
                    )

    for i, entry in enumerate(ck.typed(raw.get("exclude", []), list, "exclude", "an array of tables")):
        sel = selector(entry, f"exclude[{i}]")

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

    for c in cells:
        cell_view = {**c.view(), "launched": False}
        for tname in c.techniques:
            cfg = build_config(REGISTRY[tname], c.options.get(tname, {}), f"techniques.{tname}")
            try:
                REGISTRY[tname](cfg).validate(cell_view)
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
        combo = _parse_combo(ck, baseline_raw, "baseline")
        label = "+".join(sorted(combo))
        if label not in variants and baseline_raw not in variants:
            raise ck.fail(
                "baseline",
                f"'{baseline_raw}' is not a configuration of this scenario{suggest(label, set(variants))}",
            )
        baseline = baseline_raw if baseline_raw in variants else label
    cells = [dataclasses.replace(c, baseline=baseline) for c in cells]
    return Scenario(name=name, path=path, text=text, cells=cells, baseline=baseline, description=description)
