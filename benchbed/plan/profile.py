"""The scenario's ``[profile]`` table: which cells record a profiler trace, and of how many steps.

    [profile]
    steps = 5            # profiled steps (default 5)
    warmup = 2           # steps run before the profiler records (default 2)
    memory = true        # on CUDA, a memory snapshot too (default true; nothing on the CPU)
    only = "*bf16*"      # profile only the cells whose id or variant matches (default: every cell)

Profiling never touches the timed run: after a cell has trained and its row is final, its process
builds the same cell afresh (same seed) and runs ``warmup + steps`` steps under ``torch.profiler``
(benchbed/worker/profile.py). A profiled cell's numbers are the same as an unprofiled one's, so
``[profile]`` is not part of the configuration (``config_key``).
"""

from __future__ import annotations

import fnmatch
from typing import Any

PROFILE_KEYS = {"steps", "warmup", "memory", "only"}
DEFAULTS = {"steps": 5, "warmup": 2, "memory": True}


def read_profile(ck, raw: Any) -> dict[str, Any]:
    """The checked ``[profile]`` table (``{}`` when absent); ``ck`` is the scenario's checker."""
    if raw is None:
        return {}
    ck.typed(raw, dict, "profile", "a table")
    for key in raw:
        if key not in PROFILE_KEYS:
            from benchbed.plan.scenario import suggest

            raise ck.fail(
                f"profile.{key}", f"unknown key{suggest(key, PROFILE_KEYS)} (steps, warmup, memory, only)"
            )
    out = dict(DEFAULTS)
    if "steps" in raw:
        out["steps"] = ck.positive(raw["steps"], "profile.steps", integer=True)
    if "warmup" in raw:
        ck.typed(raw["warmup"], int, "profile.warmup", "an integer")
        if raw["warmup"] < 0:
            raise ck.fail("profile.warmup", f"must be >= 0, got {raw['warmup']}")
        out["warmup"] = raw["warmup"]
    if "memory" in raw:
        out["memory"] = ck.typed(raw["memory"], bool, "profile.memory", "true or false")
    if "only" in raw:
        out["only"] = ck.typed(raw["only"], str, "profile.only", "a glob or substring of cell ids")
    return out


def matches(pattern: str | None, cell_id: str, variant: str) -> bool:
    """The runner's ``--only`` rule: a glob on the id or variant, or a substring of the id."""
    if not pattern:
        return True
    return fnmatch.fnmatch(cell_id, pattern) or fnmatch.fnmatch(variant, pattern) or pattern in cell_id


def for_cell(settings: dict[str, Any], cell_id: str, variant: str) -> dict[str, Any]:
    """What one cell's process is told: the settings without ``only``, or ``{}`` for no profile."""
    if not settings or not matches(settings.get("only"), cell_id, variant):
        return {}
    return {k: v for k, v in settings.items() if k != "only"}
