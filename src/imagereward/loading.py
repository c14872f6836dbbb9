"""``load``: from a registered name, a checkpoint file or a saved folder to a ready scorer."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import warnings
from typing import Optional, Tuple, Union

import torch

from .checkpoints import CheckpointError, load_state_dict_strict, read_state_dict, strip_prefix
from .config import ImageRewardConfig, PreprocessConfig, TextConfig
from .dtypes import DtypeLike, cpu_has_fast, resolve_device, resolve_dtype
from .files import use_default_permissions
from .hub import fetch_hub_file, legacy_cache_dir
from .models.image_reward import ImageRewardNet
from .preprocess import ImagePreprocessor
from .registry import PRETRAINED_MODELS, available_models
from .scoring.image_reward import ImageReward
from .tokenizers.bert import BertTokenizer

logger = logging.getLogger("imagereward")

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
MODEL_TYPE = "ImageReward"

# Keys of the original checkpoint that the scorer does not use.
UNUSED_KEYS = (
    r"blip\.vision_proj\..*",
    r"blip\.text_proj\..*",
    r"blip\.text_encoder\.embeddings\.position_ids",
)


def _resolve_checkpoint(
    name: str, download_root: Optional[str]
) -> Tuple[str, Optional[ImageRewardConfig], Optional[PreprocessConfig]]:
    """Local path of the weights, the config saved beside them and the registered preprocessing."""
    if name in PRETRAINED_MODELS:
        entry = PRETRAINED_MODELS[name]
        root = download_root
        if root is None and os.path.isfile(os.path.join(legacy_cache_dir(), entry.filename)):
            root = legacy_cache_dir()  # reuse the original package's download
        path = fetch_hub_file(
            entry.repo_id,
            entry.filename,
            what=f"the {name} weights",
            local_hint=f"pass the path of a local {entry.filename} (load(path), or --checkpoint PATH)",
            local_dir=root,
        )
        return path, None, entry.preprocess
    if os.path.isdir(name):
        name = os.path.join(name, WEIGHTS_FILE)
        if not os.path.isfile(name):
            raise FileNotFoundError(2, "No model weights in folder", name)
    if os.path.isfile(name):
        config_path = os.path.join(os.path.dirname(os.path.abspath(name)), CONFIG_FILE)
        config = _read_saved_config(config_path) if name.endswith(".safetensors") else None
        return name, config, None
    raise RuntimeError(f"Model {name} not found; available models = {available_models()}")


def _read_saved_config(path: str) -> Optional[ImageRewardConfig]:
    if not os.path.isfile(path):
        return None
    with open(path, "r", encoding="utf-8") as handle:
        saved = json.load(handle)
    if saved.get("model_type") != MODEL_TYPE:
        raise CheckpointError(f"{path} is not an ImageReward config (model_type {saved.get('model_type')!r})")
    return ImageRewardConfig.from_dict(saved["config"])


def load(
    name: str = "ImageReward-v1.0",
    device: Union[str, torch.device, None] = None,
    download_root: Optional[str] = None,
    med_config: Optional[str] = None,
    *,
    dtype: DtypeLike = None,
    config: Optional[ImageRewardConfig] = None,
    vocab_file: Optional[str] = None,
    batch_size: int = 16,
    num_workers: Optional[int] = None,
    compile: bool = False,
) -> ImageReward:
    """Load an ImageReward model in eval mode on ``device``.

    ``name`` is a registered model (see :func:`available_models`), a checkpoint file
    (original ``.pt`` or ``.safetensors``) or a folder written by :func:`save_pretrained`.
    ``download_root`` keeps downloads in that folder under their original names;
    otherwise they go to the Hugging Face cache. ``med_config`` is an optional
    original BERT config JSON; ``config`` overrides the whole architecture.
    ``dtype`` (``"fp32"``, ``"bf16"``, ``"fp16"`` or a ``torch.dtype``) sets the
    precision of the encoders; the head always runs in float32. ``compile=True``
    runs the encoders through ``torch.compile`` (see :meth:`~RewardScorer.compile_encoders`).
    """
    target_device, target_dtype = resolve_device(device), resolve_dtype(dtype)
    path, saved_config, preprocess_config = _resolve_checkpoint(name, download_root)
    config = config or saved_config or ImageRewardConfig()
    if med_config is not None:
        config.text = TextConfig.from_med_config(med_config, encoder_width=config.vision.width)
    logger.info("load checkpoint from %s", path)
    tokenizer = BertTokenizer(vocab_file, max_length=config.max_text_length)
    preprocess = ImagePreprocessor(
        dataclasses.replace(preprocess_config or PreprocessConfig(), image_size=config.vision.image_size)
    )
    with torch.device("meta"):
        model = ImageReward(config, tokenizer, preprocess, batch_size, num_workers)
    state_dict = strip_prefix(read_state_dict(path))
    load_state_dict_strict(model, state_dict, source=path, ignore=UNUSED_KEYS)
    model.eval()
    if target_dtype != torch.float32:
        if target_device.type == "cpu" and not cpu_has_fast(target_dtype):
            warnings.warn(
                f"{target_dtype} on this CPU has no native support (AVX512-BF16/FP16 or AMX): "
                "scoring will be much slower than in float32",
                stacklevel=2,
            )
        model.blip.to(target_dtype)
    model.to(target_device)
    if compile:
        model.compile_encoders()
    logger.info("checkpoint loaded")
    return model


def convert_checkpoint(
    source: str,
    directory: str,
    *,
    dtype: DtypeLike = None,
    config: Optional[ImageRewardConfig] = None,
    med_config: Optional[str] = None,
) -> str:
    """Rewrite an ImageReward checkpoint as a folder that :func:`load` maps instantly.

    The weights are checked strictly on the way (no tokenizer or network needed);
    ``dtype="fp16"``/``"bf16"`` halves the file. Returns ``directory``.
    """
    path, saved_config, _ = _resolve_checkpoint(source, download_root=None)
    config = config or saved_config or ImageRewardConfig()
    if med_config is not None:
        config.text = TextConfig.from_med_config(med_config, encoder_width=config.vision.width)
    with torch.device("meta"):
        net = ImageRewardNet(config)
    state_dict = strip_prefix(read_state_dict(path))
    load_state_dict_strict(net, state_dict, source=path, ignore=UNUSED_KEYS)
    return save_pretrained(net, directory, dtype=dtype)


def save_pretrained(model: ImageRewardNet, directory: str, dtype: DtypeLike = None) -> str:
    """Write ``config.json`` and ``model.safetensors`` that :func:`load` reads back."""
    from safetensors.torch import save_file

    os.makedirs(directory, exist_ok=True)
    target = resolve_dtype(dtype)
    tensors = {
        key: (value.to(target) if value.is_floating_point() else value).detach().cpu().contiguous()
        for key, value in model.state_dict().items()
    }
    save_file(tensors, os.path.join(directory, WEIGHTS_FILE), metadata={"format": "pt"})
    use_default_permissions(os.path.join(directory, WEIGHTS_FILE))  # safetensors writes 0600
    with open(os.path.join(directory, CONFIG_FILE), "w", encoding="utf-8") as handle:
        json.dump({"model_type": MODEL_TYPE, "config": model.config.to_dict()}, handle, indent=2)
    return directory
