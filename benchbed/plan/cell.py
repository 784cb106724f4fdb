"""A cell: one training run of the matrix (a configuration, a seed and a repeat index).

The cell carries each technique's typed config, built and validated once when the scenario is
loaded; `to_spec` serialises it (with every field, defaults included) for the cell's process, and
`from_spec` rebuilds the same dataclasses field by field, without validating or defaulting again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from benchbed.techniques import CATEGORIES, REGISTRY
from benchbed.workloads import WORKLOADS


def _hash(config: dict[str, Any]) -> str:
    blob = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def stage_dir(workload: str, config_key: str, seed: int, repeat: int) -> str:
    """A stage checkpoint's directory under the results directory: keyed by the producing cell's
    configuration, seed and repeat, so a changed stage never feeds a later one stale weights."""
    return f"artifacts/stages/{workload}/{config_key}-s{seed}-r{repeat}"


def lifecycle_order(names) -> tuple[str, ...]:
    return tuple(sorted(names, key=lambda n: (CATEGORIES.index(REGISTRY[n].category), n)))


def config_from_fields(name: str, fields: dict[str, Any]) -> Any:
    """Technique `name`'s typed config from the fields `to_spec` wrote (JSON lists back to tuples)."""
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
    return REGISTRY[name].Config(**values)


@dataclass(frozen=True)
class Cell:
    """One training run: a configuration, a seed and a repeat index. Serialised as the cell spec."""

    scenario: str
    workload: str
    techniques: tuple[str, ...]  # in lifecycle order
    options: dict[str, dict[str, Any]]  # technique -> non-default options, as the scenario gave them
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
    threads: int | None = None  # torch intra-op threads of a CPU cell; None: torch's default
    baseline: str = ""
    warmup_frac: float | None = None  # the run's warm-up fraction; None: the workload's
    # tuning (plan/tuning.py): the ruleset, and for an `external` trial its study, its index, the
    # values the tuner set ("lion.lr", "warmup_frac"), and the configuration's space and trial count
    ruleset: str = "defaults"
    study: int | None = None
    trial: int | None = None
    tuned: dict[str, float] = field(default_factory=dict)
    tuning: dict[str, Any] = field(default_factory=dict)
    # earlier pipeline stages this cell reads: workload name -> the config_key of the cell (same
    # seed and repeat) that trains it (plan/stages.py links them; part of the configuration)
    inputs: dict[str, str] = field(default_factory=dict)
    # technique -> its typed config (every technique of the cell); not part of the identity, which
    # `options` already fixes
    configs: dict[str, Any] = field(default_factory=dict, compare=False)
    # outside the configuration too: what the cell's process does after training (a profiler trace,
    # plan/profile.py) and the grid intensity of its CO2 estimate; neither changes the training
    profile: dict[str, Any] = field(default_factory=dict, compare=False)
    grid_intensity: float | None = field(default=None, compare=False)

    def config(self) -> dict[str, Any]:
        """Everything that defines the configuration, without seed and repeat (for a trial: with
        the values the tuner set)."""
        config = {
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
            # only when set, so the keys of cells that leave it to torch stay what they were
            **({"threads": self.threads} if self.threads is not None else {}),
        }
        # added only when set, so the keys of configurations without them stay what they were
        if self.warmup_frac is not None:
            config["warmup_frac"] = self.warmup_frac
        if self.ruleset != "defaults":
            config["ruleset"] = self.ruleset
            config["tuning"] = self.tuning
        if self.inputs:  # only stages have inputs: every other cell keeps its config_key
            config["inputs"] = dict(sorted(self.inputs.items()))
        return config

    def untuned_options(self) -> dict[str, dict[str, Any]]:
        """`options` without the values the tuner set."""
        kept = {
            name: {k: v for k, v in opts.items() if f"{name}.{k}" not in self.tuned}
            for name, opts in self.options.items()
        }
        return {name: opts for name, opts in kept.items() if opts}

    def untuned_config(self) -> dict[str, Any]:
        """`config()` without the tuned values: the same for every trial and study of a tuned
        configuration (hashed as `tuning_key`)."""
        config = self.config()
        config["options"] = self.untuned_options()
        if "warmup_frac" in self.tuned:
            config.pop("warmup_frac", None)
        return config

    def input_dir(self, name: str) -> str:
        """Where the checkpoint of input stage `name` lives, relative to the results directory."""
        return stage_dir(name, self.inputs[name], self.seed, self.repeat)

    @property
    def output_dir(self) -> str:
        """Where this cell saves its trained model when a later stage reads it."""
        return stage_dir(self.workload, self.config_key, self.seed, self.repeat)

    def technique(self, name: str):
        """A fresh instance of technique `name` with this cell's config."""
        return REGISTRY[name](self.configs[name])

    @property
    def world_size(self) -> int:
        """Processes this cell is launched as (the largest any of its techniques needs)."""
        return max(self.technique(n).processes() for n in self.techniques)

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
        return _hash(self.config())

    @property
    def tuning_key(self) -> str:
        """The configuration without tuned values: groups a tuned configuration's trials and studies
        (equal to `config_key` under the defaults ruleset)."""
        return _hash(self.untuned_config())

    @property
    def techniques_label(self) -> str:
        return "+".join(sorted(self.techniques))

    @property
    def categories_label(self) -> str:
        return "+".join(sorted({REGISTRY[n].category for n in self.techniques}))

    @property
    def variant(self) -> str:
        """Readable label of the configuration (what differs between cells of one scenario)."""
        parts = []
        options = self.untuned_options()
        for name in sorted(self.techniques):
            opts = options.get(name)
            parts.append(
                name + ("[" + ",".join(f"{k}={v}" for k, v in sorted(opts.items())) + "]" if opts else "")
            )
        label = "+".join(parts)
        wl = WORKLOADS.get(self.workload)
        if wl is not None and self.batch_size != wl.batch_size:
            label += f" bs={self.batch_size}"
        if wl is not None and not math.isclose(self.lr, wl.lr):
            label += f" lr={self.lr:g}"
        if (
            wl is not None
            and self.warmup_frac is not None
            and "warmup_frac" not in self.tuned
            and not math.isclose(self.warmup_frac, wl.warmup_frac)
        ):
            label += f" warmup={self.warmup_frac:g}"
        return label

    @property
    def is_baseline(self) -> bool:
        return self.variant == self.baseline

    @property
    def cell_id(self) -> str:
        slug = re.sub(r"[^A-Za-z0-9]+", "_", self.variant).strip("_")[:60]
        rep = f"-r{self.repeat}" if self.repeat else ""
        trial = f"-t{self.trial}" if self.trial is not None else ""
        return f"{self.workload}-{slug}-s{self.seed}{rep}{trial}-{self.config_key[:8]}"

    def identity(self) -> dict[str, Any]:
        """The identity columns of this cell's result row (results.schema, group identity), all but
        `run_id`, which the runner adds."""
        return {
            "cell_id": self.cell_id,
            "config_key": self.config_key,
            "variant": self.variant,
            "scenario": self.scenario,
            "workload": self.workload,
            "techniques": self.techniques_label,
            "categories": self.categories_label,
            "options_json": json.dumps(self.options, sort_keys=True),
            "technique_configs_json": json.dumps(
                {n: dataclasses.asdict(c) for n, c in sorted(self.configs.items())}, sort_keys=True
            ),
            "batch_size": self.batch_size,
            "lr": self.lr,
            "seed": self.seed,
            "repeat": self.repeat,
            "device": self.device,
            "baseline": self.baseline,
            "is_baseline": self.is_baseline,
            "target_loss": self.target_loss,
            "config_json": json.dumps(self.config(), sort_keys=True, default=str),
            "ruleset": self.ruleset,
            "study": self.study,
            "trial": self.trial,
            "tuning_key": self.tuning_key,
            "tuned_json": json.dumps(self.tuned, sort_keys=True) if self.ruleset == "external" else None,
        }

    def to_spec(self) -> dict[str, Any]:
        spec = dataclasses.asdict(self)  # configs become {name: {field: value}}
        spec.update(
            techniques=list(self.techniques),
            cell_id=self.cell_id,
            world_size=self.world_size,
            identity=self.identity(),
        )
        return spec

    @staticmethod
    def from_spec(spec: dict[str, Any]) -> Cell:
        names = {f.name for f in dataclasses.fields(Cell)}
        kwargs = {k: v for k, v in spec.items() if k in names}
        kwargs["techniques"] = tuple(kwargs["techniques"])
        kwargs["configs"] = {n: config_from_fields(n, f) for n, f in kwargs.get("configs", {}).items()}
        return Cell(**kwargs)
