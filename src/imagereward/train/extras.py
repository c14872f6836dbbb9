"""Optional training dependencies, imported only where they are used."""

from __future__ import annotations

import importlib
from types import ModuleType

INSTALL_HINT = "pip install imagereward[train]"


def require(module: str, purpose: str) -> ModuleType:
    """Import ``module`` or raise an ImportError that says what needs it and how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(
            f"{purpose} needs the optional dependency {module.split('.')[0]!r}: {INSTALL_HINT}"
        ) from error
