"""The result tables' columns, declared once: name, type, unit and meaning.

The worker fills a row of `CELL_COLUMNS` (`new_row` starts it with every column "not measured"),
the runner writes failure rows with `failure_row`, and the store writes what they give; a test
checks that a real cell writes every declared column and nothing undeclared, and another that
``docs/contracts.md`` lists exactly these columns. Imports no torch: the runner and readers use it.

Units are the name's suffix (``_s``, ``_j``, ``_w``, ``_bytes``). A metric that was not measured is
NaN, never 0; a string that does not apply is None.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

#: how a cell can end
STATUSES = ("reached", "budget_exhausted", "diverged", "oom", "error", "timeout")
DONE_STATUSES = ("reached", "budget_exhausted", "diverged")  # a rerun would give the same outcome
FAILED_STATUSES = ("oom", "error", "timeout")
ENERGY_SOURCES = ("nvml_counter", "nvml_power_integral", "rapl", "unavailable")


@dataclass(frozen=True)
class Column:
    name: str
    kind: str  # str | int | float | bool (JSON strings are kind str, named *_json)
    meaning: str
    group: str  # identity | outcome | timing | energy | memory | model | provenance

    @property
    def empty(self) -> Any:
        """The value of a column nothing wrote: NaN for numbers, None otherwise."""
        return math.nan if self.kind in ("float", "int") else None


def _columns(group: str, spec: str) -> list[Column]:
    """Parse ``name kind meaning`` lines (two or more spaces separate the three fields)."""
    out = []
    for line in spec.strip().splitlines():
        name, kind, meaning = (part.strip() for part in line.strip().split("  ", 2))
        out.append(Column(name, kind, meaning.strip(), group))
    return out


CELL_COLUMNS: list[Column] = [
    *_columns(
        "identity",
        """
        run_id  str  id of the run (one per results directory)
        cell_id  str  unique id of the cell: workload, variant, seed, repeat, config hash
        config_key  str  hash of everything but seed and repeat (a trial's tuned values included): match cells across runs by it
        variant  str  readable label of the configuration (techniques with options, bs=, lr=)
        scenario  str  scenario name
        workload  str  workload name
        techniques  str  technique names, sorted and '+'-joined (the implicit adamw included)
        categories  str  the techniques' survey categories, sorted and '+'-joined
        options_json  str  the techniques' non-default options as given in the scenario (JSON)
        technique_configs_json  str  every technique's full typed config, defaults included (JSON)
        batch_size  int  sequences per step the scenario asked for (per process)
        lr  float  the run's peak learning rate the scenario asked for
        seed  int  seed of model init and data order
        repeat  int  repeat index of the same (configuration, seed)
        device  str  cpu or cuda
        baseline  str  variant of the scenario's baseline configuration
        is_baseline  bool  this cell's configuration is the baseline
        target_loss  float  target on the workload's evaluation metric
        config_json  str  everything that defines the configuration (JSON)
        ruleset  str  tuning ruleset that produced the cell: external (a trial of a tuning study) or defaults
        study  int  study index of an external trial (each study has its own seed); NaN under defaults
        trial  int  trial index within its study; NaN under defaults
        tuning_key  str  hash of the configuration without tuned values: groups a tuned configuration's trials and studies (= config_key under defaults)
        tuned_json  str  the values the tuner set for this trial, e.g. {"lion.lr": 0.003} (JSON); None under defaults
        """,
    ),
    *_columns(
        "outcome",
        """
        status  str  reached | budget_exhausted | diverged | oom | error | timeout
        error  str  why a cell failed or diverged (None otherwise)
        loss_floor  float  the data's exact loss floor in nats where known, NaN otherwise
        final_val_loss  float  validation loss at the last evaluation
        best_val_loss  float  lowest validation loss seen
        time_to_target_s  float  training time at the first evaluation at or below target; NaN if never
        tokens_to_target  float  tokens trained by then
        steps_to_target  float  optimizer steps by then
        energy_to_target_j  float  energy inside the training windows by then
        steps  float  optimizer steps taken
        tokens  float  tokens trained on
        """,
    ),
    *_columns(
        "timing",
        """
        train_time_s  float  time inside training steps (evaluation and the first step excluded)
        eval_time_s  float  time spent evaluating
        warmup_time_s  float  time of the first step (lazy initialisation, compilation)
        wall_time_s  float  wall time of the cell process from start to its row
        tokens_per_s  float  training throughput after the first step
        started_at  str  UTC start time (ISO 8601)
        finished_at  str  UTC finish time (ISO 8601)
        sample_count  float  telemetry samples taken
        sample_lag_p99_s  float  99th percentile of sample lateness
        """,
    ),
    *_columns(
        "energy",
        """
        energy_j  float  device energy inside the training windows
        energy_source  str  nvml_counter | nvml_power_integral | rapl | unavailable
        energy_integral_j  float  trapezoid integral of sampled GPU power over the same windows
        energy_disagreement  float  |integral - counter| / counter
        energy_flag  bool  counter and integral disagree by > 5% over >= 30 s of windows
        mean_power_w  float  energy / window time
        peak_power_w  float  highest sampled power inside the windows
        idle_power_w  float  device power at idle, measured before the first cell
        net_energy_j  float  energy minus idle power times window time
        power_source  str  the power reading used
        telemetry_window_s  float  total time inside the training windows
        sensor_errors  str  sensors that failed and why ('' when none)
        """,
    ),
    *_columns(
        "memory",
        """
        peak_mem_bytes  float  CUDA allocator peak on a GPU, peak RSS of the cell on the CPU
        mem_source  str  cuda_max_allocated | nvml_used | ru_maxrss | unavailable
        max_memory_reserved_bytes  float  CUDA caching-allocator reserved peak
        peak_rss_bytes  float  peak resident set of the cell's process
        nvml_peak_used_bytes  float  highest device memory in use seen by NVML
        """,
    ),
    *_columns(
        "model",
        """
        params  float  parameters of the trained model
        trainable_params  float  parameters that require gradients
        flops_per_token  float  training FLOPs per token by the workload's formula
        mfu  float  model FLOPs utilisation against the device's dense bf16 peak (NaN on CPUs)
        effective_lr  float  peak learning rate the optimizer used (its first parameter group)
        effective_weight_decay  float  weight decay of the optimizer's first parameter group
        effective_betas  str  the optimizer's betas (or momentum) as JSON, None where it has none
        """,
    ),
    *_columns(
        "provenance",
        """
        device_name  str  GPU name, or the CPU's
        data_fingerprint  str  hash of the data the cell trained on
        git_sha  str  commit of the benchbed that ran the cell
        torch_version  str  torch version of the cell
        run_extra  str  notes techniques left for the results (JSON)
        """,
    ),
]

CURVE_COLUMNS: list[Column] = _columns(
    "curve",
    """
    cell_id  str  the cell
    step  int  optimizer steps before this evaluation (0: before training)
    tokens  int  tokens trained by then
    train_time_s  float  training time by then
    energy_j  float  training energy by then (NaN where not measured)
    train_loss  float  mean training loss since the previous evaluation
    val_loss  float  the workload's evaluation metric
    """,
)

#: telemetry.parquet has these plus one column per sampled quantity (gpu0_power_w, rss_bytes, ...)
TELEMETRY_COLUMNS: list[Column] = _columns(
    "telemetry",
    """
    cell_id  str  the cell
    t_s  float  seconds since the sampler started
    """,
)

CELL_COLUMN_NAMES = [c.name for c in CELL_COLUMNS]
CURVE_COLUMN_NAMES = [c.name for c in CURVE_COLUMNS]
TELEMETRY_COLUMN_NAMES = [c.name for c in TELEMETRY_COLUMNS]
#: the columns of a row that describe the configuration (what the runner knows before a cell runs)
IDENTITY_COLUMN_NAMES = [c.name for c in CELL_COLUMNS if c.group == "identity"]


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def undeclared(row: dict[str, Any]) -> list[str]:
    """Keys of `row` that are not declared cells columns."""
    return sorted(set(row) - set(CELL_COLUMN_NAMES))


def new_row(**values: Any) -> dict[str, Any]:
    """A cells row with every declared column empty, then `values`; an undeclared key is a bug."""
    unknown = undeclared(values)
    if unknown:
        raise KeyError(f"undeclared result column(s): {', '.join(unknown)} (declare them in results/schema.py)")
    row = {c.name: c.empty for c in CELL_COLUMNS}
    row.update(energy_source="unavailable", mem_source="unavailable")
    row.update(values)
    return row


def failure_row(known: dict[str, Any], status: str, error: str | None) -> dict[str, Any]:
    """The row of a cell that produced no results (crash, timeout, bad data): what is `known` of it
    (its identity, or a row begun by the worker), the status and the error; every metric NaN."""
    if status not in STATUSES:
        raise ValueError(f"unknown status {status!r}")
    return new_row(**known) | {"status": status, "error": error}


def markdown() -> str:
    """The column tables of docs/contracts.md (``python -m benchbed.results.schema`` prints them)."""
    lines = []
    for title, columns in (
        ("cells.parquet", CELL_COLUMNS),
        ("curves.parquet", CURVE_COLUMNS),
        ("telemetry.parquet (plus one column per sampled quantity)", TELEMETRY_COLUMNS),
    ):
        lines += [f"#### {title}", "", "| column | type | group | meaning |", "|---|---|---|---|"]
        lines += [f"| `{c.name}` | {c.kind} | {c.group} | {c.meaning} |" for c in columns]
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown())
