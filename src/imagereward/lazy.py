"""Lazy package attributes: names resolved to their modules on first use (PEP 562).

Packages list ``{name: module}`` and get ``__getattr__``/``__dir__`` from
:func:`lazy_exports`, so importing a package imports none of its heavy modules.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any, Callable, List, Mapping, Tuple


def lazy_exports(
    package: str, table: Mapping[str, str], extra: Tuple[str, ...] = ()
) -> Tuple[Callable[[str], Any], Callable[[], List[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package``; a resolved name is cached in it."""
    names = sorted(table) + list(extra)

    def __getattr__(name: str) -> Any:
        if name in table:
            value = getattr(importlib.import_module(table[name]), name)
            setattr(sys.modules[package], name, value)
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> List[str]:
        return names

    return __getattr__, __dir__
