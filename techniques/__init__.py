"""Technique registry: name -> Technique subclass, grouped as the survey groups them.

Importing this package imports every technique module (one file per technique) so the registry is
complete; a module registers its class with ``@register`` from ``benchbed.techniques.base``.
"""

from __future__ import annotations

import importlib
import pkgutil

from benchbed.techniques.base import (
    CATEGORIES,
    PERMISSION_OPTIONS,
    REGISTRY,
    NoOptions,
    PrecisionConfig,
    Technique,
    TechniqueError,
    build_config,
    register,
)
from benchbed.techniques.search_space import Dimension, LogUniform, Uniform

__all__ = [
    "CATEGORIES",
    "REGISTRY",
    "Dimension",
    "LogUniform",
    "NoOptions",
    "PERMISSION_OPTIONS",
    "PrecisionConfig",
    "Technique",
    "TechniqueError",
    "Uniform",
    "build_config",
    "register",
]


def _load_all() -> None:
    for group in ("compute", "data", "memory", "hardware"):
        package = importlib.import_module(f"{__name__}.{group}")
        for info in pkgutil.iter_modules(package.__path__):
            if not info.name.startswith("_"):
                importlib.import_module(f"{package.__name__}.{info.name}")


_load_all()
