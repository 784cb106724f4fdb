"""Scenario files (TOML) -> a `ScenarioSpec` whose every field is checked (matrix.py expands it).

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
    threads = 1                     # optional: torch threads per CPU cell (torch's default: one per core)
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
    warmup_frac = [0.05, 0.2]       # the run's warm-up fraction of the budget (the workload's otherwise)

    [techniques.lion]               # fixed options of a technique
    beta2 = 0.98

    grid_intensity_g_per_kwh = 480  # optional: for the co2_kg estimate (docs/carbon.md)
    [profile]                       # optional: a profiler trace of each cell, outside the clock
    steps = 5                       # (plan/profile.py)

    [[include]]                     # extra cells (fields: techniques, seed, batch_size, lr, workload)
    [[exclude]]                     # drop cells matching every given field

    [tuning]                        # the external tuning ruleset (plan/tuning.py, docs/tuning.md)
    trials = 4                      # per study; each study uses one seed
    studies = 3
    [tuning.search_space.lion]      # replaces lion's declared search space
    lr = [1e-4, 1e-2]

Limits, each refused with the reason: the file is read only up to `MAX_SCENARIO_BYTES` (a scenario
is a short text; ``/dev/zero`` is not one); integers must fit TOML's 64 bits and seeds 32 bits (the
RNGs derive per-rank streams from them); `timeout_s` is at most `MAX_TIMEOUT_S`; no string holds a
control character; ``device = "cuda"`` needs a CUDA device on this machine. The `name` becomes one
directory under ``results/`` through `slug`.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import math
import os
import re
from dataclasses import dataclass
from typing import Any

import tomllib

from benchbed.plan import tuning as tuning_table
from benchbed.plan.check import ScenarioError, _Checker, suggest
from benchbed.plan.profile import read_profile
from benchbed.text import control_characters
from benchbed.workloads.data import KINDS

#: a scenario file is read up to this size and refused above it
MAX_SCENARIO_BYTES = 1 << 20
#: seeds are at most 2**32 - 1: data streams are seeded with seed * 1_000_003 + rank offsets,
#: which must stay inside torch's 64-bit generator seed
MAX_SEED = 2**32 - 1
#: 7 days: a cell is a benchmark run, not a training job; far larger values overflow the timer
#: (threading's TIMEOUT_MAX, about 292 years, and 1e10 s is past it) and silently disable it
MAX_TIMEOUT_S = 7 * 24 * 3600
INT64 = (-(2**63), 2**63 - 1)
#: the directory name of a scenario: letters, digits, '.', '_' and '-', at most this long
MAX_SLUG = 80

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
    "threads",
    "eval_every_tokens",
    "budget",
    "data",
    "matrix",
    "techniques",
    "include",
    "exclude",
    "tuning",
    "profile",
    "grid_intensity_g_per_kwh",
}
BUDGET_KEYS = {"tokens", "steps", "seconds"}
DATA_KEYS = {"kind", "path"}
SELECT_KEYS = {"techniques", "seed", "batch_size", "lr", "workload"}


def slug(name: str) -> str:
    """`name` as one directory name under results/: runs of other characters become '_', and
    leading dots and underscores go (no '..', no hidden directory); '' if nothing is left."""
    text = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._-")
    return text[:MAX_SLUG].rstrip("._-")


def default_scenario_path(cuda: bool | None = None) -> str:
    """The scenario `benchbed run` runs when given none: quick-gpu.toml where CUDA is available
    (`cuda` None: ask torch), else quick.toml, whose combinations mean the same on every x86 CPU."""
    if cuda is None:
        import torch

        cuda = torch.cuda.is_available()
    return str(importlib.resources.files("benchbed.scenarios") / ("quick-gpu.toml" if cuda else "quick.toml"))


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


@dataclass
class ScenarioSpec:
    """A scenario file read and checked field by field; `matrix.expand` turns it into cells."""

    path: str
    text: str
    raw: dict[str, Any]  # the parsed TOML (for the tables matrix.py checks itself)
    name: str
    description: str
    device: str
    seeds: list[int]
    repeats: int
    stop_at_target: bool
    timeout_s: float
    threads: int | None
    workloads: list[str]
    budget_tokens: int | None
    budget_steps: int | None
    budget_seconds: float | None
    target_loss: float | None
    eval_every_tokens: int | None
    data: dict[str, Any]
    matrix: dict[str, Any]
    base_dir: str
    tuning: tuning_table.Tuning | None = None  # None: no [tuning] table (the defaults ruleset)
    profile: dict[str, Any] = dataclasses.field(default_factory=dict)  # plan/profile.py
    grid_intensity: float | None = None  # gCO2e/kWh for the co2_kg estimate (measure/carbon.py)

    def checker(self) -> _Checker:
        return _Checker(self.path)


def _read_bounded(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_SCENARIO_BYTES + 1)
    except FileNotFoundError:
        raise ScenarioError(f"{path}: file: not found") from None
    except OSError as exc:
        raise ScenarioError(f"{path}: file: {exc.strerror or exc}") from None
    if len(raw) > MAX_SCENARIO_BYTES:
        raise ScenarioError(
            f"{path}: file: larger than {MAX_SCENARIO_BYTES >> 20} MiB, which no scenario needs "
            "(is it the right file?)"
        )
    return raw


def _check_values(ck: _Checker, value: Any, where: str) -> None:
    """Every key and string of the parsed file free of control characters, every integer 64-bit."""
    if isinstance(value, dict):
        for key, item in value.items():
            inner = f"{where}.{key}" if where else str(key)
            if control_characters(str(key)):
                raise ck.fail(repr(inner), "key contains a control character")
            _check_values(ck, item, inner)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_values(ck, item, f"{where}[{i}]")
    elif isinstance(value, str):
        bad = control_characters(
            value.replace("\n", "").replace("\t", "") if where == "description" else value
        )
        if bad:
            raise ck.fail(where, f"contains the control character {bad[0]!r}")
    elif isinstance(value, int) and not isinstance(value, bool) and not INT64[0] <= value <= INT64[1]:
        raise ck.fail(where, f"integer {_short(value)} does not fit in 64 bits")


def _short(value: int) -> str:
    text = str(value)
    return text if len(text) <= 24 else f"{text[:6]}...({len(text)} digits)"


def read(
    path: str,
    device_override: str | None = None,
    repeats_override: int | None = None,
    ruleset_override: str | None = None,
) -> ScenarioSpec:
    """Read a scenario file and check its top-level fields. Raises ScenarioError.

    `ruleset_override` (``benchbed run --ruleset``) replaces the [tuning] table's ruleset; when it
    changes the file's ruleset the scenario's name gets ``-<ruleset>`` so its results do not mix
    with the file's."""
    ck = _Checker(path)
    text = _read_bounded(path).decode("utf-8", errors="replace")
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{path}: toml: {exc}") from None
    except ValueError as exc:  # an integer literal past Python's 4300-digit conversion limit
        raise ScenarioError(f"{path}: toml: {str(exc).split(';')[0]}") from None
    except RecursionError:
        raise ScenarioError(f"{path}: toml: arrays or tables nested too deeply") from None
    _check_values(ck, raw, "")

    for key in raw:
        if key not in TOP_LEVEL_KEYS:
            raise ck.fail(key, f"unknown key{suggest(key, TOP_LEVEL_KEYS)}")
    if not set(raw) - {"name", "description"}:
        what = "has no keys (empty or comments only)" if not raw else "gives only a name"
        raise ck.fail(
            "file",
            f"nothing to run: the scenario {what}; give at least a workload or [matrix] techniques, "
            'e.g. workload = "lm-tiny" and [matrix] techniques = ["adamw", "lion"]',
        )

    name = ck.typed(raw.get("name", os.path.splitext(os.path.basename(path))[0]), str, "name", "a string")
    if not name.strip():
        raise ck.fail("name", "empty: the name is the results directory under results/")
    if not slug(name):
        raise ck.fail("name", f"{name!r} has no letter or digit to name its results directory with")
    description = ck.typed(raw.get("description", ""), str, "description", "a string")
    device = device_override or ck.typed(raw.get("device", "auto"), str, "device", "a string")
    if device not in DEVICES:
        raise ck.fail("device", f"unknown device '{device}' (cpu, cuda, auto){suggest(device, DEVICES)}")
    if device in ("auto", "cuda"):
        import torch

        has_cuda = torch.cuda.is_available()
        if device == "cuda" and not has_cuda:
            where = "--device" if device_override else "device"
            why = (
                "torch was built without CUDA" if torch.version.cuda is None else "no CUDA device is visible"
            )
            raise ck.fail(where, f'\'cuda\', but this machine cannot run it ({why}); use "auto" or "cpu"')
        device = "cuda" if has_cuda else "cpu"

    def int_check(v, f):
        ck.typed(v, int, f, "an integer")
        if not 0 <= v <= MAX_SEED:
            raise ck.fail(f, f"must be from 0 to {MAX_SEED} (2**32 - 1), got {_short(v)}")
        return v

    seeds = ck.list_of(raw.get("seeds", [0]), "seeds", int_check)
    if len(set(seeds)) != len(seeds):
        raise ck.fail("seeds", f"seed listed twice in {seeds}")
    repeats = ck.positive(raw.get("repeats", 1), "repeats", integer=True)
    if repeats_override is not None:
        repeats = ck.positive(repeats_override, "--repeat", integer=True)
    stop_at_target = ck.typed(raw.get("stop_at_target", True), bool, "stop_at_target", "true or false")
    timeout_s = ck.positive(raw.get("timeout_s", 1800), "timeout_s")
    if timeout_s > MAX_TIMEOUT_S:
        raise ck.fail(
            "timeout_s",
            f"at most {MAX_TIMEOUT_S} (7 days), got {timeout_s:g}: far larger values overflow the "
            "timer and would silently disable the timeout",
        )
    threads = ck.positive(raw["threads"], "threads", integer=True) if "threads" in raw else None

    matrix = raw.get("matrix", {})
    ck.typed(matrix, dict, "matrix", "a table")

    if "workload" in raw and "workload" in matrix:
        raise ck.fail("matrix.workload", "workload given both at top level and as a matrix axis")
    workloads = ck.list_of(
        matrix.get("workload", raw.get("workload", "lm-tiny")), "workload", ck.workload_name
    )

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

    if ruleset_override is not None and ruleset_override not in tuning_table.RULESETS:
        raise ck.fail("--ruleset", f"'external' or 'defaults', got {ruleset_override!r}")
    tuning, seeds = tuning_table.read(ck, raw, seeds, "seeds" in raw, repeats, ruleset_override)
    file_ruleset = (
        raw["tuning"].get("ruleset", "external") if isinstance(raw.get("tuning"), dict) else "defaults"
    )
    if ruleset_override is not None and ruleset_override != file_ruleset:
        name = f"{name}-{ruleset_override}"

    data = raw.get("data", {})
    ck.typed(data, dict, "data", "a table")
    for key in data:
        if key not in DATA_KEYS:
            raise ck.fail(f"data.{key}", f"unknown key{suggest(key, DATA_KEYS)} (kind, path)")
    if data:
        kind = data.get("kind")
        if kind not in KINDS:
            raise ck.fail("data.kind", f"expected synthetic, text or shards, got {kind!r}")
        if kind != "synthetic":
            p = data.get("path")
            if not isinstance(p, str) or not p:
                raise ck.fail("data.path", "a file or glob pattern is required")
    grid = raw.get("grid_intensity_g_per_kwh")
    if grid is not None:
        ck.typed(grid, (int, float), "grid_intensity_g_per_kwh", "gCO2e per kWh as a number")
        if not (math.isfinite(grid) and grid >= 0):
            raise ck.fail("grid_intensity_g_per_kwh", f"must be a finite number >= 0, got {grid!r}")
    return ScenarioSpec(
        profile=read_profile(ck, raw.get("profile")),
        grid_intensity=float(grid) if grid is not None else None,
        path=path,
        text=text,
        raw=raw,
        name=name,
        description=description,
        device=device,
        seeds=seeds,
        repeats=repeats,
        stop_at_target=stop_at_target,
        timeout_s=float(timeout_s),
        threads=threads,
        workloads=workloads,
        budget_tokens=b_tokens,
        budget_steps=b_steps,
        budget_seconds=b_seconds,
        target_loss=float(target) if target is not None else None,
        eval_every_tokens=int(eval_every) if eval_every is not None else None,
        data=data,
        matrix=matrix,
        base_dir=os.path.dirname(os.path.abspath(path)),
        tuning=tuning,
    )


def check_warmup_frac(ck: _Checker, value, field_name: str) -> float:
    ck.typed(value, (int, float), field_name, "a number in [0, 1)")
    if not 0.0 <= value < 1.0:
        raise ck.fail(field_name, f"must be in [0, 1), got {value!r}")
    return float(value)
