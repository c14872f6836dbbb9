"""Import the reference package inside the reference's process (never by the product).

``import ImageReward`` runs the package's ``__init__``, which also imports its ReFL
training module and through it diffusers, accelerate and datasets. Where the
reference runs from a wheel folder (``IMAGEREWARD_REF_SITE``, on the GPU machine)
those are not installed, so the package object is made without running ``__init__``
and the scoring API is taken from its ``utils`` module, the code ``__init__`` exports.
The scoring code that runs is the same either way.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import types


def import_reference() -> types.ModuleType:
    if not os.environ.get("IMAGEREWARD_REF_SITE") or "ImageReward" in sys.modules:
        return importlib.import_module("ImageReward")
    spec = importlib.util.find_spec("ImageReward")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the reference package ImageReward is not on the path")
    package = types.ModuleType("ImageReward")
    package.__path__ = list(spec.submodule_search_locations)
    package.__file__ = spec.origin
    sys.modules["ImageReward"] = package
    utils = importlib.import_module("ImageReward.utils")
    package.load = utils.load
    package.load_score = utils.load_score
    return package
