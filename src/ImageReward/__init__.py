"""Drop-in replacement for the original ``ImageReward`` package (``image-reward`` 1.5).

``import ImageReward as reward; model = reward.load()`` works unchanged and
returns the same numbers; everything comes from :mod:`imagereward`.
"""

from __future__ import annotations

import os
from typing import Any, List

import imagereward

__all__ = [
    "available_models",
    "available_scores",
    "load",
    "load_score",
    "ImageReward_download",
    "ImageReward",
    "CLIPScore",
    "BLIPScore",
    "AestheticScore",
]


def ImageReward_download(url: str, root: str) -> str:
    """Fetch ``basename(url)`` from the hub repo ``THUDM/ImageReward`` into ``root``."""
    from imagereward.hub import fetch_hub_file

    filename = os.path.basename(url)
    return fetch_hub_file(
        "THUDM/ImageReward",
        filename,
        what=filename,
        local_hint=f"put {filename} into {root}",
        local_dir=root,
    )


def available_models() -> List[str]:
    """The names the original ``load`` lists (``["ImageReward-v1.0"]``); ``load`` takes every scorer."""
    from imagereward.registry import get_entry

    return [name for name in imagereward.available_models() if get_entry(name).original_api == "load"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(imagereward, name)
    raise AttributeError(f"module 'ImageReward' has no attribute {name!r}")
