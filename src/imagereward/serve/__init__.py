"""A reward server for RL trainers on Ray Serve (the ``imagereward[serve]`` extra).

    serve run imagereward.serve:build_app model=ImageReward-v1.0
    imagereward serve --model ImageReward-v1.0 --replicas 2

Attributes are imported lazily: :mod:`imagereward.serve.codec`, which the
client uses, needs neither Ray nor FastAPI.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "build_app": "imagereward.serve.app",
    "RewardServer": "imagereward.serve.app",
    "ServeSettings": "imagereward.serve.settings",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'imagereward.serve' has no attribute {name!r}")
