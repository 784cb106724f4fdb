"""Workloads: what a cell trains (model, data, loss, evaluation, target, budget).

`WORKLOADS` is a plain dict, name -> `Workload`. Importing this package imports every workload
module in it (``lm.py``, ...), each of which registers its instances with `register`; files whose
name starts with ``_`` are templates and are skipped.
"""

from __future__ import annotations

import importlib
import pkgutil

from benchbed.workloads.base import WORKLOADS, InputMissing, Workload, register
from benchbed.workloads.batch import IGNORE_INDEX, Batch
from benchbed.workloads.data import DataError, DataSource

__all__ = [
    "IGNORE_INDEX",
    "WORKLOADS",
    "Batch",
    "DataError",
    "DataSource",
    "InputMissing",
    "Workload",
    "register",
]

_NOT_WORKLOADS = {"base", "batch", "data"}


def _load_all() -> None:
    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_") and info.name not in _NOT_WORKLOADS:
            importlib.import_module(f"{__name__}.{info.name}")


_load_all()
