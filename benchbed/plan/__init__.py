"""Plan: a scenario file -> the cells to run. Nothing here trains or measures.

``scenario.py`` reads and checks the file's fields, ``matrix.py`` expands them into cells,
``tuning.py`` reads the ``[tuning]`` table and expands tuned configurations into trials, ``cell.py``
is the cell. `load` is the whole path, and every mistake in a scenario is one line
``FILE: field: what is wrong`` (a `ScenarioError`) before anything runs.
"""

from __future__ import annotations

from benchbed.plan.cell import Cell, lifecycle_order
from benchbed.plan.check import ScenarioError
from benchbed.plan.matrix import DEFAULT_OPTIMIZER, Scenario, expand
from benchbed.plan.scenario import DEVICES, default_scenario_path, read, resolve_scenario_path
from benchbed.plan.tuning import RULESETS

__all__ = [
    "DEFAULT_OPTIMIZER",
    "DEVICES",
    "RULESETS",
    "Cell",
    "Scenario",
    "ScenarioError",
    "default_scenario_path",
    "lifecycle_order",
    "load",
    "resolve_scenario_path",
]


def load(
    path: str,
    device_override: str | None = None,
    repeats_override: int | None = None,
    ruleset_override: str | None = None,
) -> Scenario:
    """Read, validate and expand a scenario file. Raises ScenarioError."""
    return expand(read(path, device_override, repeats_override, ruleset_override))
