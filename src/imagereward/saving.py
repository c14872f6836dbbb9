"""Folders that :func:`imagereward.load` reads instantly: ``config.json`` + ``model.safetensors``.

``config.json`` names the registered scorer the weights belong to and carries the
model configuration and the whole preprocessing chain, so a saved model sees
images exactly as it did when it was saved.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Optional

from .config import ImageRewardConfig, PreprocessConfig
from .dtypes import DtypeLike, resolve_dtype
from .errors import CheckpointError
from .files import use_default_permissions

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
MODEL_TYPE = "ImageReward"
DEFAULT_SCORER = "ImageReward-v1.0"


@dataclass(frozen=True)
class SavedModel:
    scorer: str
    config: ImageRewardConfig
    preprocess: PreprocessConfig


def read_saved_folder(directory: str, required: bool = True) -> Optional[SavedModel]:
    """The ``config.json`` of a saved folder. When not ``required``: ``None`` where there is
    none, or where it is another library's (a hub snapshot's ``config.json``)."""
    path = os.path.join(directory, CONFIG_FILE)
    weights = os.path.join(directory, WEIGHTS_FILE)
    if not os.path.isfile(path) or (required and not os.path.isfile(weights)):
        if not required:
            return None
        missing = path if not os.path.isfile(path) else weights
        raise FileNotFoundError(2, "Not a saved model folder (no such file)", missing)
    try:
        with open(path, "r", encoding="utf-8") as handle:
            saved = json.load(handle)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"cannot read {path}: {error}") from error
    if not isinstance(saved, dict) or saved.get("model_type") != MODEL_TYPE:
        if not required:
            return None
        found = saved.get("model_type") if isinstance(saved, dict) else None
        raise CheckpointError(f"{path} is not an ImageReward config (model_type {found!r})")
    try:
        config = ImageRewardConfig.from_dict(saved["config"])
        preprocess = PreprocessConfig.from_dict(saved.get("preprocess", {"image_size": config.vision.image_size}))
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"{path} has a malformed config: {error}") from error
    return SavedModel(saved.get("scorer", DEFAULT_SCORER), config, preprocess)


def save_pretrained(
    model: Any, directory: str, dtype: DtypeLike = None, preprocess: Optional[PreprocessConfig] = None
) -> str:
    """Write ``config.json`` and ``model.safetensors`` of an ImageReward network.

    ``preprocess`` defaults to the model's own chain (a scorer's ``preprocess.config``),
    else the registered one at the model's image size. Returns ``directory``.
    """
    from safetensors.torch import save_file

    if preprocess is None:
        attached = getattr(model, "preprocess", None)
        preprocess = attached.config if attached is not None else PreprocessConfig(
            image_size=model.config.vision.image_size
        )
    os.makedirs(directory, exist_ok=True)
    target = resolve_dtype(dtype)
    tensors = {
        key: (value.to(target) if value.is_floating_point() else value).detach().cpu().contiguous()
        for key, value in model.state_dict().items()
    }
    save_file(tensors, os.path.join(directory, WEIGHTS_FILE), metadata={"format": "pt"})
    use_default_permissions(os.path.join(directory, WEIGHTS_FILE))  # safetensors writes 0600
    record = {
        "model_type": MODEL_TYPE,
        "scorer": DEFAULT_SCORER,
        "config": model.config.to_dict(),
        "preprocess": preprocess.to_dict(),
    }
    with open(os.path.join(directory, CONFIG_FILE), "w", encoding="utf-8") as handle:
        json.dump(record, handle, indent=2)
    return directory
