"""The data a scenario's cells will read, opened and validated once at load time.

A missing, empty or too short file, a directory or device given as a file, a glob that matches
nothing, a shard with a wrong header or an odd length, a token id outside the model's vocabulary:
each is refused here as one line naming the scenario file, the field and the data file, before a
results directory exists -- not found by the first cell, minutes later, as an `error` row.
Each distinct (workload, data table) is checked once; the synthetic generators need no check.
"""

from __future__ import annotations

import json

from benchbed.plan.matrix import Scenario
from benchbed.plan.scenario import ScenarioError
from benchbed.workloads import WORKLOADS, DataError


def check_data(scenario: Scenario) -> None:
    seen: set[tuple[str, str, str]] = set()
    for cell in scenario.cells:
        if not cell.data or cell.data.get("kind", "synthetic") == "synthetic":
            continue
        key = (cell.workload, json.dumps(cell.data, sort_keys=True), cell.base_dir)
        if key in seen:
            continue
        seen.add(key)
        try:
            WORKLOADS[cell.workload].check_data(cell.data, cell.base_dir)
        except DataError as exc:
            field = "data.kind" if str(exc).startswith("data.kind") else "data.path"
            message = str(exc).removeprefix("data.kind: ")
            raise ScenarioError(f"{scenario.path}: {field}: {message}") from None
        except OSError as exc:
            raise ScenarioError(
                f"{scenario.path}: data.path: {exc.filename or cell.data.get('path')}: "
                f"cannot read ({exc.strerror or exc})"
            ) from None
