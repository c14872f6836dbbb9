"""Folders that :func:`imagereward.load` reads instantly: ``config.json`` + ``model.safetensors``.

Any registered scorer can be saved, fine-tuned or not. ``config.json`` names the
scorer the weights belong to and carries its model configuration and its whole
preprocessing chain, so a saved model sees images exactly as it did when saved;
``model.safetensors`` holds the network's tensors under the network's names.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from dataclasses import dataclass
from typing import Any, Optional

from .config import PreprocessConfig, config_from_dict, config_to_dict
from .dtypes import DtypeLike, resolve_dtype
from .errors import CheckpointError
from .files import use_default_permissions

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
MODEL_TYPE = "ImageReward"  # marks our config.json among other libraries' (kept from version 1)
DEFAULT_SCORER = "ImageReward-v1.0"


@dataclass(frozen=True)
class SavedModel:
    scorer: str
    config: Any
    preprocess: PreprocessConfig


def read_saved_folder(directory: str, required: bool = True) -> Optional[SavedModel]:
    """The ``config.json`` of a saved folder. When not ``required``: ``None`` where there is
    none, or where it is another library's (a hub snapshot's ``config.json``)."""
    from .registry import get_entry

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
        raise CheckpointError(f"{path} is not an imagereward config (model_type {found!r})")
    try:
        entry = get_entry(saved.get("scorer", DEFAULT_SCORER))
        config = config_from_dict(entry.config_type, saved["config"])
        preprocess = saved.get("preprocess")
        if preprocess is None:
            preprocess = PreprocessConfig(image_size=config.vision.image_size)
        else:
            preprocess = PreprocessConfig.from_dict(preprocess)
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise CheckpointError(f"{path} has a malformed config: {error}") from error
    return SavedModel(entry.name, config, preprocess)


def save_pretrained(
    model: Any,
    directory: str,
    dtype: DtypeLike = None,
    preprocess: Optional[PreprocessConfig] = None,
    scorer: Optional[str] = None,
) -> str:
    """Write ``config.json`` and ``model.safetensors`` of a scorer (or of a bare network).

    ``scorer`` is the registered name; by default the scorer's own (``model.name``),
    else ImageReward's for a bare ImageReward network. ``preprocess`` defaults to the
    model's own chain, else the registered one at the model's image size. Returns
    ``directory``.
    """
    from safetensors.torch import save_file

    from .registry import get_entry

    entry = get_entry(scorer or getattr(model, "name", None) or DEFAULT_SCORER)
    if not isinstance(model.config, entry.config_type):
        raise TypeError(
            f"{type(model).__name__} has a {type(model.config).__name__}, not the "
            f"{entry.config_type.__name__} of {entry.name}: name its scorer with scorer="
        )
    if preprocess is None:
        attached = getattr(model, "preprocess", None)
        if attached is not None:
            preprocess = attached.config
        else:
            size = getattr(model.config, "image_size", None) or model.config.vision.image_size
            preprocess = dataclasses.replace(entry.preprocess, image_size=size)
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
        "scorer": entry.name,
        "config": config_to_dict(model.config),
        "preprocess": preprocess.to_dict(),
    }
    with open(os.path.join(directory, CONFIG_FILE), "w", encoding="utf-8") as handle:
        json.dump(record, handle, indent=2)
    for filename, source in getattr(getattr(model, "tokenizer", None), "saved_files", {}).items():
        if os.path.abspath(source) != os.path.abspath(os.path.join(directory, filename)):
            shutil.copyfile(source, os.path.join(directory, filename))  # a tokenizer the package does not ship
    return directory
