"""Pipeline stages: cells that read an earlier cell's trained model (a reward model, then the policy
tuned against it).

A workload lists the workloads it reads in `needs`; `link` gives each such cell the configuration
key of the one cell of each needed workload with the same seed and repeat (so a changed earlier
stage changes the later cell's identity, and a resumed run retrains it), and refuses a scenario
where that cell is missing or ambiguous. `order` puts every producing cell before the cells that
read it; the runner calls it on the cells it is about to run. A cell whose input is still missing
when it starts (its producer failed, or was filtered out and never ran) fails with one line.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from benchbed.plan.cell import Cell
from benchbed.workloads import WORKLOADS


def depth(workload: str, seen: tuple[str, ...] = ()) -> int:
    """0 for a workload that reads no stage; else one more than the deepest stage it reads."""
    if workload in seen:
        raise ValueError(f"workload '{workload}': its stages need each other in a cycle")
    needs = WORKLOADS[workload].needs
    return 0 if not needs else 1 + max(depth(n, (*seen, workload)) for n in needs)


def link(cells: list[Cell], fail: Callable[[str, str], Exception]) -> list[Cell]:
    """The cells (in their order) with `inputs` filled in; `fail(field, message)` builds the error
    for a missing or ambiguous producer."""
    linked: dict[int, Cell] = {}
    for i in sorted(range(len(cells)), key=lambda i: depth(cells[i].workload)):
        cell = cells[i]
        inputs = {}
        for name in WORKLOADS[cell.workload].needs:
            producers = [
                p
                for p in linked.values()
                if p.workload == name and p.seed == cell.seed and p.repeat == cell.repeat
            ]
            if not producers:
                raise fail(
                    "workload",
                    f"'{cell.workload}' (seed {cell.seed}) reads the model of stage '{name}', but no cell of "
                    f"'{name}' with that seed is in the scenario (add one, e.g. with [[include]])",
                )
            if len(producers) > 1:
                variants = ", ".join(sorted(p.variant for p in producers))
                raise fail(
                    "workload",
                    f"'{cell.workload}' (seed {cell.seed}) reads stage '{name}', which has "
                    f"{len(producers)} configurations here ({variants}): keep one per seed",
                )
            inputs[name] = producers[0].config_key
        linked[i] = dataclasses.replace(cell, inputs=inputs) if inputs else cell
    return [linked[i] for i in range(len(cells))]


def order(cells: list[Cell]) -> list[Cell]:
    """Producers before the cells that read them, otherwise in the given order (a stable sort)."""
    return sorted(cells, key=lambda c: depth(c.workload))
