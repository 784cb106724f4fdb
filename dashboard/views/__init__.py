"""The dashboard's views, one module each; the app finds them with ``discover``.

A view module exposes ``TITLE`` (the sidebar label), ``ORDER`` (an int: its place in the sidebar,
smaller first) and ``render(ctx)`` (draws the view from a ``benchbed.dashboard.shared.ViewContext``).
Optional: ``NEEDS_CELLS = False`` for a view that works without any cell (kernels only); when the
loaded directories hold no cells, the app opens the first such view. Modules whose name starts with
``_`` are skipped (``_template.py`` is the copy-me); docs/adding-a-view.md walks through adding one.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType

REQUIRED = ("TITLE", "ORDER", "render")


def discover() -> list[ModuleType]:
    """Every view module of this package, by ``ORDER`` then ``TITLE``; TypeError naming a module
    that lacks ``TITLE``, ``ORDER`` or ``render``."""
    found = []
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        missing = [name for name in REQUIRED if not hasattr(module, name)]
        if missing:
            raise TypeError(f"{module.__name__}: a dashboard view needs {', '.join(missing)}")
        found.append(module)
    return sorted(found, key=lambda module: (module.ORDER, module.TITLE))
