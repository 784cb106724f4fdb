"""``benchbed profile``: a profiler trace of cells already run, each in its own process.

For each chosen cell whose part is in the results directory, launches ``python -m
benchbed.worker.profile SPEC OUT`` (a separate short run of the same cell, never its timed run; see
benchbed/worker/profile.py) with the cell's timeout. Cells without results are reported, not run.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from benchbed.plan import Cell, Scenario
from benchbed.plan.profile import DEFAULTS, matches
from benchbed.results import store


def profile_cells(
    scenario: Scenario,
    out_dir: Path,
    only: str | None,
    settings: dict | None = None,
    cell_env: dict | None = None,
) -> list[tuple[str, str]]:
    """(cell id, outcome) per chosen cell: ``recorded``, ``no results yet``, or the error's last line."""
    out_dir = Path(out_dir)
    done = store.read_parts(out_dir)
    chosen: list[Cell] = [c for c in scenario.cells if matches(only, c.cell_id, c.variant)]
    outcomes = []
    for cell in chosen:
        if cell.cell_id not in done:
            outcomes.append((cell.cell_id, "no results yet (run the cell first)"))
            continue
        chosen_settings = {**DEFAULTS, **(cell.profile or {}), **(settings or {})}
        spec = {**cell.to_spec(), "profile": chosen_settings}
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False, dir=out_dir) as f:
            json.dump(spec, f)
            spec_path = f.name
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "benchbed.worker.profile", spec_path, str(out_dir)],
                capture_output=True,
                text=True,
                timeout=cell.timeout_s,
                env={**os.environ, **(cell_env or {})},
            )
            tail = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
            outcomes.append((cell.cell_id, "recorded" if proc.returncode == 0 else tail))
        except subprocess.TimeoutExpired:
            outcomes.append((cell.cell_id, f"timed out after {cell.timeout_s:g} s"))
        finally:
            with contextlib.suppress(OSError):
                os.unlink(spec_path)
    return outcomes
