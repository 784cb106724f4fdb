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
STATUSES = ("reached", "budget_exhausted", "diverged", "oom", "error", "timeout", "killed")
DONE_STATUSES = ("reached", "budget_exhausted", "diverged")  # a rerun would give the same outcome
#: the cell produced no measurement: `benchbed run` exits 1, `--retry-failed` runs them again
FAILED_STATUSES = ("oom", "error", "timeout", "killed")
#: stopped from outside (a signal nobody inside the cell sent, without a sign of memory exhaustion):
#: says nothing about the cell, so even a plain resume runs it again
RERUN_STATUSES = ("killed",)
ENERGY_SOURCES = ("nvml_counter", "nvml_power_integral", "rapl", "unavailable")


@dataclass(frozen=True)
class Column:
    name: str
    kind: str  # str | int | float | bool (JSON strings are kind str, named *_json)
    meaning: str
    group: str  # identity | budget | outcome | stages | timing | energy | memory | model | provenance

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
        "budget",
        """
        global_batch_size  int  sequences trained per optimizer step over all processes (world_size x batch_size)
        world_size  int  processes training together (data parallelism)
        lr_rule  str  learning-rate rule applied for the cell's batch: none | linear | sqrt (lr_scaling, data_parallel)
        """,
    ),
    *_columns(
        "outcome",
        """
        status  str  reached | budget_exhausted | diverged | oom | error | timeout | killed
        error  str  why a cell failed or diverged (None otherwise)
        teardown_error  str  the cell trained and wrote its row, then its processes did not exit cleanly (why; None when they did): the result stands
        partial  bool  the runner stopped the cell (timeout, crash, kill) before it wrote its row: its curves and telemetry are what it streamed until then, every metric is NaN
        loss_floor  float  the data's exact loss floor in nats where known, NaN otherwise
        final_val_loss  float  validation loss at the last evaluation
        best_val_loss  float  lowest validation loss seen
        time_to_target_s  float  training time at the first evaluation at or below target; NaN if never
        tokens_to_target  float  tokens trained by then
        steps_to_target  float  optimizer steps by then
        energy_to_target_j  float  energy inside the training windows by then
        steps  float  optimizer steps taken
        tokens  float  tokens trained on over all processes (the selected batch under importance sampling)
        """,
    ),
    *_columns(
        "stages",
        """
        base_key  str  the pretrained base the cell fine-tuned (workload-hash), None without one
        base_reused  bool  the base came from the results directory's cache (False: this cell pretrained it)
        pretrain_time_s  float  one-off training time of the base (shared by every cell with this base_key; not in time_to_target_s)
        pretrain_energy_j  float  one-off training energy of the base (as pretrain_time_s; NaN where not measured)
        pretrain_tokens  float  tokens the base was pretrained on
        stage_inputs_json  str  the earlier stages this cell read: workload -> their cell, status, time and energy to target (JSON)
        pipeline_time_to_target_s  float  time to target of this stage plus every earlier stage's (NaN if one did not reach its target)
        pipeline_energy_to_target_j  float  energy to target summed the same way
        reward_accuracy  float  reward model: accuracy on held-out ranked pairs at the last evaluation
        mean_true_reward  float  policy: mean hidden (true) reward of its samples at the last evaluation
        kl_to_reference  float  policy: KL(policy || reference) per response in nats at the last evaluation
        """,
    ),
    *_columns(
        "timing",
        """
        train_time_s  float  time inside training steps, every step included (evaluation excluded)
        eval_time_s  float  time spent evaluating (float32 for every cell)
        warmup_time_s  float  time of the untimed warm-up step, the same for every cell and undone (lazy initialisation, compilation)
        measure_time_s  float  time spent counting FLOPs and measuring memory on replicas of sampled steps, off the clock (not in train_time_s)
        wall_time_s  float  wall time of the cell process from start to its row
        tokens_per_s  float  tokens trained per second of training time
        started_at  str  UTC start time (ISO 8601)
        finished_at  str  UTC finish time (ISO 8601)
        sample_count  float  telemetry samples taken
        sample_lag_p99_s  float  99th percentile of sample lateness
        pipeline_bubble  float  pipeline parallelism: the schedule's idle fraction (p-1)/(m+p-1) for p stages and m microbatches
        pipeline_idle_frac  float  pipeline parallelism: measured fraction of the schedule's time a stage did no compute (bubble plus communication), mean over stages
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
        grid_intensity_g_per_kwh  float  grid carbon intensity co2_kg assumes (gCO2e/kWh; docs/carbon.md)
        co2_kg  float  ESTIMATE: energy_j x grid_intensity_g_per_kwh (NaN where energy is not measured)
        telemetry_window_s  float  total time inside the training windows
        sensor_errors  str  sensors that failed and why ('' when none)
        """,
    ),
    *_columns(
        "memory",
        """
        peak_mem_bytes  float  CUDA allocator peak on a GPU, peak RSS of the cell on the CPU
        mem_source  str  cuda_max_allocated | nvml_used | ru_maxrss | unavailable
        max_memory_reserved_bytes  float  CUDA caching-allocator reserved peak (includes blocks cached for the measurement replicas of sampled steps)
        peak_rss_bytes  float  peak resident set of the cell's process
        nvml_peak_used_bytes  float  highest device memory in use seen by NVML
        saved_activation_bytes  float  peak bytes saved for backward in a step (distinct storages, parameters excluded; counted steps)
        param_bytes  float  bytes of the model's parameters (distinct storages)
        grad_bytes  float  bytes of the gradients after a step's backward (counted steps, largest)
        optimizer_state_bytes  float  bytes of the optimizer's state tensors (counted steps, largest)
        memory_per_rank_json  str  every rank's local param, grad, optimizer-state and peak saved-activation bytes (JSON list, rank order)
        """,
    ),
    *_columns(
        "model",
        """
        params  float  parameters of the trained model
        trainable_params  float  parameters that require gradients
        flops_per_token  float  training FLOPs per token by the workload's formula (6N + 12 L d T for GPTs), for comparison
        model_flops_per_token  float  counted FLOPs per trained token of the model's forward and backward (useful work)
        hardware_flops_per_token  float  counted FLOPs per trained token of everything executed (recompute, extra passes)
        flops_counted_steps  str  the steps whose FLOPs and memory were counted (JSON list)
        mfu  float  model FLOPs utilisation: model_flops_per_token x tokens/s over the dense bf16 peak of world_size devices (NaN on CPUs)
        hfu  float  hardware FLOPs utilisation: the same with hardware_flops_per_token (NaN on CPUs)
        effective_lr  float  peak learning rate the optimizer used (its first parameter group)
        effective_weight_decay  float  weight decay of the optimizer's first parameter group
        effective_betas  str  the optimizer's betas (or momentum) as JSON, None where it has none
        """,
    ),
    *_columns(
        "provenance",
        """
        device_name  str  GPU name, or the CPU model: the host kind the gate matches cells by
        host  str  name of the machine the cell ran on (several with a Ray cluster or shards)
        data_fingerprint  str  hash of the data the cell trained on
        git_sha  str  commit of the benchbed that ran the cell
        torch_version  str  torch version of the cell
        threads  int  torch intra-op threads the cell trained with (curves are bitwise-reproducible only at a fixed count)
        run_extra  str  notes techniques left for the results (JSON)
        emulated_precision  str  reduced precision the cell ran although its CPU only emulates it (allow_emulated), e.g. bf16; None when none
        launcher  str  how the cell's process started: fork (from the runner's fork server), subprocess or torchrun
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


def escape(text: str) -> str:
    """A table cell's text: a '|' would end the cell."""
    return text.replace("|", "\\|")


def markdown() -> str:
    """The column tables of docs/contracts.md (``python -m benchbed.results.schema`` prints them)."""
    lines = []
    for title, columns in (
        ("cells.parquet", CELL_COLUMNS),
        ("curves.parquet", CURVE_COLUMNS),
        ("telemetry.parquet (plus one column per sampled quantity)", TELEMETRY_COLUMNS),
    ):
        lines += [f"#### {title}", "", "| column | type | group | meaning |", "|---|---|---|---|"]
        lines += [f"| `{c.name}` | {c.kind} | {c.group} | {escape(c.meaning)} |" for c in columns]
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown())
