"""Plan: a scenario file -> the cells to run. Nothing here trains or measures.

``scenario.py`` reads and checks the file's fields, ``matrix.py`` expands them into cells,
``tuning.py`` reads the ``[tuning]`` table and expands tuned configurations into trials, ``cell.py``
is the cell, ``data_check.py`` opens the data files the cells will read. `load` is the whole path,
and every mistake in a scenario is one line ``FILE: field: what is wrong`` (a `ScenarioError`)
before anything runs.
"""

from __future__ import annotations

from benchbed.plan.cell import Cell, lifecycle_order
from benchbed.plan.check import ScenarioError
from benchbed.plan.data_check import check_data
from benchbed.plan.matrix import DEFAULT_OPTIMIZER, MAX_CELLS, Scenario, expand
from benchbed.plan.precision import check_precision, emulated_techniques
from benchbed.plan.scenario import DEVICES, default_scenario_path, read, resolve_scenario_path, slug
from benchbed.plan.tuning import RULESETS

__all__ = [
    "DEFAULT_OPTIMIZER",
    "DEVICES",
    "MAX_CELLS",
    "RULESETS",
    "Cell",
    "Scenario",
    "ScenarioError",
    "check_precision",
    "default_scenario_path",
    "emulated_techniques",
    "lifecycle_order",
    "load",
    "resolve_scenario_path",
    "slug",
]


def load(
    path: str,
    device_override: str | None = None,
    repeats_override: int | None = None,
    max_cells: int | None = None,
    ruleset_override: str | None = None,
    cpu: dict | None = None,
) -> Scenario:
    """Read, validate and expand a scenario file, and open the data its cells read. Raises
    ScenarioError.

    `cpu` describes what this machine's CPU computes natively
    (``benchbed.measure.machine.cpu_capability()``); given, a reduced precision the CPU only
    emulates is refused (``precision.check_precision``). The runner checks it again before a cell
    starts, so a caller that leaves it out is refused there."""
    scenario = expand(read(path, device_override, repeats_override, ruleset_override), max_cells)
    if cpu is not None:
        check_precision(scenario, cpu)
    check_data(scenario)
    return scenario
