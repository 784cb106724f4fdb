"""Shards: ``benchbed run SCENARIO --shard I/N`` runs a deterministic 1/N of the cells.

A cell belongs to shard ``int(sha256(cell_id)) mod N``: the choice depends on the cell's id alone,
not on its position in the matrix, so adding, removing or reordering other cells never moves a
cell to another shard, and a shard run again (resume, a preempted array task) picks exactly the
cells it picked before. Shards are numbered from 0 to N-1, like a Kubernetes Indexed Job's
``JOB_COMPLETION_INDEX`` and a Slurm ``--array=0-(N-1)``. Every cell is in exactly one shard; a
shard may be empty when N is close to the number of cells (hashing does not balance exactly).
``benchbed merge`` then consolidates the shards' results directories (docs/scaling.md).
"""

from __future__ import annotations

import dataclasses
import hashlib
import re

from benchbed.plan import Cell, Scenario


class ShardError(ValueError):
    """A bad ``--shard``; the message is one line."""


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` -> (I, N) with 0 <= I < N."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if not match:
        raise ShardError(f"--shard: expected I/N (e.g. 0/4), got {text!r}")
    index, count = int(match.group(1)), int(match.group(2))
    if count < 1:
        raise ShardError(f"--shard: N must be >= 1, got {text!r}")
    if index >= count:
        raise ShardError(f"--shard: I must be in 0..{count - 1} (shards count from 0), got {text!r}")
    return index, count


def shard_of(cell_id: str, count: int) -> int:
    """The shard a cell id belongs to among ``count``: stable across matrices, runs and machines."""
    digest = hashlib.sha256(cell_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") % count


def in_shard(cell: Cell, index: int, count: int) -> bool:
    return shard_of(cell.cell_id, count) == index


def select(scenario: Scenario, index: int, count: int) -> Scenario:
    """The scenario with only shard ``index`` of ``count``'s cells (baseline and names unchanged)."""
    return dataclasses.replace(scenario, cells=[c for c in scenario.cells if in_shard(c, index, count)])
