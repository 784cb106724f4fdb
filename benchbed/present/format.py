"""THE value formatter: how benchbed writes one measured value for a person to read.

The ranked table ``benchbed run`` prints (``present.ranked``), the gate's markdown and
benchmark-action notes (``present.gate_cli``), the HTML report and the dashboard's tables
(``present.display``) all call ``format_value``, so a value reads the same wherever it is shown.

The rule, first match wins:

- missing (None or NaN): ``missing`` when the caller knows what a gap means in its table (a
  statistics or gate table, where "not reached" is +inf, passes ``missing="not measured"``);
  otherwise "not reached" in a to-target column (a cells table writes NaN there when the target was
  never reached) and "not measured" in any other. Never 0, never "NaN".
- +inf: "not reached" (the statistics count a target never reached as infinitely slow); -inf: "-inf".
- bool: "yes" / "no".
- memory (a column whose name ends in ``_bytes``): always in GiB, 3 significant digits, the unit
  written: "0.0977 GiB", "71.2 GiB". One fixed unit everywhere: the figures' axes use it too
  (``in_memory_unit``, ``memory_label``), so a table and a plot of one run read alike. GiB rather
  than MiB because GPU cells are tens of GiB; 3 significant digits keep a 100 MiB CPU cell readable.
- a fraction (the gate's ``reached`` metric, a number): a percentage, "80%".
- any other number: in its column's own unit (the name's suffix says which: ``_s`` seconds, ``_j``
  joules; tables label it), no unit written: from 1000 on thousands separators and no decimals
  ("192,000"), below that 4 significant digits ("12.35", "0.0123").
- anything else: ``str(value)``.

``format_tuned`` writes the tuned values of a configuration's study winners (the leaderboard's
``winners_json``) with the same rule.
"""

from __future__ import annotations

import json
import math
import numbers

import numpy as np

NOT_MEASURED = "not measured"
NOT_REACHED = "not reached"

#: the one unit memory is shown in, in tables and on figure axes
MEMORY_UNIT = "GiB"
BYTES_PER_MEMORY_UNIT = 2**30

#: columns holding a fraction of cells (the gate's ``reached`` metric)
FRACTION_COLUMNS = ("reached",)


def is_memory(column: str) -> bool:
    """True for a column counted in bytes (shown in ``MEMORY_UNIT``)."""
    return column.endswith("_bytes")


def in_memory_unit(value):
    """Bytes (a number, array or Series) in ``MEMORY_UNIT``, for figure axes."""
    return value / BYTES_PER_MEMORY_UNIT


def memory_label(label: str) -> str:
    """An axis or column label with "(bytes)" replaced by the unit values are shown in."""
    return label.replace("(bytes)", f"({MEMORY_UNIT})")


def is_missing(value) -> bool:
    """None or NaN (of any float type)."""
    return value is None or (isinstance(value, numbers.Real) and math.isnan(value))


def format_value(value, column: str = "", *, missing: str | None = None) -> str:
    """One value of ``column`` as text, by the rule in the module docstring."""
    if is_missing(value):
        if missing is not None:
            return missing
        return NOT_REACHED if "to_target" in column else NOT_MEASURED
    if isinstance(value, bool | np.bool_):
        return "yes" if value else "no"
    if isinstance(value, numbers.Real):
        if math.isinf(value):
            return NOT_REACHED if value > 0 else "-inf"
        if is_memory(column):
            return f"{in_memory_unit(value):.3g} {MEMORY_UNIT}"
        if column in FRACTION_COLUMNS:
            return f"{value:.0%}"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.4g}"
    return str(value)


def format_tuned(winners_json) -> str:
    """Each study's winning values from ``winners_json`` (``{study: {name: value}}``), as
    "study 0: lion.lr=0.003; study 1: lion.lr=0.0041"; '' when there are none (defaults)."""
    if is_missing(winners_json) or not str(winners_json).strip():
        return ""
    studies = json.loads(winners_json)
    parts = []
    for study, values in studies.items():
        text = ", ".join(f"{name}={format_value(value, name)}" for name, value in values.items())
        parts.append(f"study {study}: {text or 'nothing tuned'}")
    return "; ".join(parts)
