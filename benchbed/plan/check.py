"""One-line errors for scenario files: ``FILE: field: what is wrong``, with closest-name suggestions."""

from __future__ import annotations

import difflib
import math

from benchbed.workloads import WORKLOADS


class ScenarioError(ValueError):
    """A bad scenario: str(error) is the one line `FILE: field: what is wrong`."""


def suggest(name: str, known) -> str:
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""


class _Checker:
    def __init__(self, path: str):
        self.path = path

    def fail(self, field_name: str, message: str) -> ScenarioError:
        return ScenarioError(f"{self.path}: {field_name}: {message}")

    def typed(self, value, types, field_name, what):
        if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
            raise self.fail(field_name, f"expected {what}, got {value!r}")
        if not isinstance(value, types):
            raise self.fail(field_name, f"expected {what}, got {type(value).__name__} {value!r}")
        return value

    def positive(self, value, field_name, integer=False):
        kinds = int if integer else (int, float)
        self.typed(value, kinds, field_name, "an integer" if integer else "a number")
        if not value > 0 or (isinstance(value, float) and not math.isfinite(value)):
            raise self.fail(field_name, f"must be positive, got {value!r}")
        return value

    def list_of(self, value, field_name, check):
        if not isinstance(value, list):
            value = [value]
        if not value:
            raise self.fail(field_name, "empty list: the matrix would have no cells")
        return [check(v, f"{field_name}[{i}]") for i, v in enumerate(value)]

    def workload_name(self, value, field_name):
        self.typed(value, str, field_name, "a workload name")
        if value not in WORKLOADS:
            raise self.fail(field_name, f"unknown workload '{value}'{suggest(value, WORKLOADS)}")
        return value
