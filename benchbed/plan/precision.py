"""Reduced precision on a CPU that only emulates it: refused when the scenario is checked.

A technique with a `precision` (bf16_autocast, fp16_autocast, ...) on a CPU cell runs that
precision in hardware only where the CPU has the instructions for it (avx512_bf16 / AMX for
bfloat16, avx512_fp16 / AMX-FP16 for float16). Elsewhere PyTorch emulates it, tens of times slower
than float32 (a bf16 matmul on an AVX2-only CPU takes about 50x as long), and the cell would time
the emulation, not the technique. Such a scenario is refused with one line saying why and what to do
instead, unless the technique's `allow_emulated` option asks for the cell anyway; then its row says
`emulated_precision` (the worker fills it).

What the CPU computes natively comes from the caller (``benchbed.measure.machine.cpu_capability()``;
this layer does not measure), so the check is a pure function of the cells and that description.
"""

from __future__ import annotations

from typing import Any

from benchbed.plan.matrix import Scenario
from benchbed.plan.scenario import ScenarioError
from benchbed.techniques import REGISTRY

#: what to run on instead, by precision
INSTEAD = {
    "bf16": "a CPU with avx512_bf16 or AMX",
    "fp16": "a CPU with avx512_fp16 or AMX-FP16",
    "int8": "a CPU with VNNI or AMX",
    "fp8": "a CPU with AMX-FP8",
}


def emulated_techniques(cell, cpu: dict[str, Any]) -> dict[str, str]:
    """Technique -> precision, for the cell's techniques whose precision this CPU does not compute
    natively (empty for a GPU cell)."""
    if cell.device != "cpu":
        return {}
    states = cpu.get("precision", {})
    return {
        name: REGISTRY[name].precision
        for name in cell.techniques
        if REGISTRY[name].precision is not None and states.get(REGISTRY[name].precision) != "native"
    }


def check_precision(scenario: Scenario, cpu: dict[str, Any]) -> None:
    """Raise ScenarioError for the first CPU cell running a precision this CPU only emulates without
    its technique's `allow_emulated`."""
    for cell in scenario.cells:
        for name, precision in emulated_techniques(cell, cpu).items():
            if getattr(cell.configs.get(name), "allow_emulated", False):
                continue
            state = cpu.get("precision", {}).get(precision, "unknown")
            reason = cpu.get("precision_reason", {}).get(precision, "")
            what = (
                f"cannot tell whether this CPU computes {precision} natively ({reason})"
                if state == "unknown"
                else f"this CPU only emulates {precision} ({reason}; torch CPU capability "
                f"{cpu.get('torch_capability', 'unknown')}), tens of times slower than float32, so the "
                f"cell would time the emulation"
            )
            raise ScenarioError(
                f'{scenario.path}: techniques.{name}: {what}; run it on a GPU (device = "cuda") or '
                f"{INSTEAD.get(precision, 'a CPU that computes it natively')}, leave it out of CPU cells, "
                f"or set [techniques.{name}] allow_emulated = true to run it labelled as emulated"
            )
