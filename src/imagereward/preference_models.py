"""PickScore, HPSv2 and HPSv2.1 from their original files, on our CLIP model.

- PickScore: ``yuvalkirstain/PickScore_v1`` on the Hugging Face Hub, a ``CLIPModel``
  (``config.json`` + ``model.safetensors`` or ``pytorch_model.bin``), with the
  processor of ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K`` (its values are below).
- HPSv2 / HPSv2.1: ``HPS_v2_compressed.pt`` / ``HPS_v2.1_compressed.pt`` of
  ``xswu/HPSv2``: ``{"state_dict": ...}`` of an OpenCLIP ViT-H-14.

Weights are memory-mapped, checked key by key against a model built on the meta
device and assigned into it; nothing of transformers, open_clip or hpsv2 is used.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Dict, Optional, Tuple, TypeVar, Union

import torch

from .checkpoints import CheckpointError, load_state_dict_strict, read_state_dict, strip_prefix
from .config import CLIPConfig, PreprocessConfig, openclip_vit_h_14
from .dtypes import DtypeLike, resolve_device, resolve_dtype
from .errors import DownloadError
from .hub import fetch_hub_file
from .models.clip import (
    HF_UNUSED_KEYS,
    clip_config_from_hf,
    convert_hf_clip_state_dict,
    infer_clip_config,
)
from .preprocess import ImagePreprocessor
from .scoring.clip_score import CLIPScore
from .scoring.hps import HPSv2Score
from .scoring.pickscore import PickScore
from .tokenizers.clip_bpe import CLIPTokenizer, resolve_clip_bpe

logger = logging.getLogger("imagereward")

PICKSCORE_REPO = "yuvalkirstain/PickScore_v1"
PICKSCORE_PROCESSOR_REPO = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
PICKSCORE_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
PICKSCORE_FOLDER = "PickScore_v1"  # under download_root: its files have generic names
HF_CONFIG = "config.json"
HPS_REPO = "xswu/HPSv2"
HPS_FILES = {"HPSv2": "HPS_v2_compressed.pt", "HPSv2.1": "HPS_v2.1_compressed.pt"}

# The processor of laion/CLIP-ViT-H-14-laion2B-s32B-b79K: CLIPImageProcessor with
# shortest_edge 224, bicubic, centre crop 224, OpenAI mean/std, RGB conversion first.
PICKSCORE_PREPROCESS = PreprocessConfig(crop_rounding="floor", convert_first=True)
# hpsv2's validation transform: RGB, ToTensor, ResizeMaxSize(224, fill=0), Normalize.
HPS_PREPROCESS = PreprocessConfig(resize="longer_pad", convert_first=True)

Scorer = TypeVar("Scorer", bound=CLIPScore)


def _preprocess(base: PreprocessConfig, image_size: int) -> ImagePreprocessor:
    return ImagePreprocessor(PreprocessConfig(**{**base.__dict__, "image_size": image_size}))


def _hub_file(repo_id: str, filename: str, what: str, hint: str, root: Optional[str]) -> str:
    return fetch_hub_file(repo_id, filename, what=what, local_hint=hint, local_dir=root)


def pickscore_files(checkpoint: Optional[str], download_root: Optional[str]) -> Tuple[str, Optional[str]]:
    """``(weights, config.json or None)``: a local file or folder, else the Hub's files."""
    if checkpoint is not None:
        if os.path.isdir(checkpoint):
            for name in PICKSCORE_WEIGHTS:
                if os.path.isfile(os.path.join(checkpoint, name)):
                    checkpoint = os.path.join(checkpoint, name)
                    break
            else:
                raise FileNotFoundError(
                    2, f"No {' or '.join(PICKSCORE_WEIGHTS)} in PickScore folder", checkpoint
                )
        if not os.path.isfile(checkpoint):
            raise FileNotFoundError(2, "PickScore checkpoint file not found", checkpoint)
        config = os.path.join(os.path.dirname(os.path.abspath(checkpoint)), HF_CONFIG)
        return checkpoint, config if os.path.isfile(config) else None
    hint = "pass checkpoint= a local folder holding config.json and model.safetensors"
    root = os.path.join(download_root, PICKSCORE_FOLDER) if download_root else None
    config = _hub_file(PICKSCORE_REPO, HF_CONFIG, "the PickScore config", hint, root)
    errors = []
    for name in PICKSCORE_WEIGHTS:
        try:
            return _hub_file(PICKSCORE_REPO, name, "the PickScore weights", hint, root), config
        except DownloadError as error:
            errors.append(error)
    raise errors[0]


def read_hf_config(path: str) -> CLIPConfig:
    try:
        with open(path, "r", encoding="utf-8") as handle:
            raw: Dict[str, Any] = json.load(handle)
    except (OSError, ValueError) as error:
        raise CheckpointError(f"cannot read Hugging Face config {path}: {error}") from error
    if raw.get("model_type", "clip") != "clip":
        raise CheckpointError(f"{path} is not a CLIP config (model_type {raw.get('model_type')!r})")
    return clip_config_from_hf(raw, path)


def _finish(model: Scorer, device: torch.device, compile: bool) -> Scorer:
    model.eval().to(device)
    if compile:
        model.compile_encoders()
    logger.info("checkpoint loaded")
    return model


def load_pickscore(
    checkpoint: Optional[str] = None,
    config: Optional[CLIPConfig] = None,
    *,
    device: Union[str, torch.device, None] = None,
    download_root: Optional[str] = None,
    dtype: DtypeLike = None,
    bpe_file: Optional[str] = None,
    batch_size: int = 16,
    num_workers: Optional[int] = None,
    compile: bool = False,
) -> PickScore:
    """PickScore from the Hub (or ``checkpoint``: a folder or a weights file beside its
    ``config.json``). Without a ``config.json`` or ``config``, ViT-H-14 sizes are assumed."""
    target_device, target_dtype = resolve_device(device), resolve_dtype(dtype)
    path, config_path = pickscore_files(checkpoint, download_root)
    if config is None:
        config = read_hf_config(config_path) if config_path else openclip_vit_h_14()
    logger.info("load checkpoint from %s", path)
    state = read_state_dict(path)
    tokenizer = CLIPTokenizer(
        resolve_clip_bpe(bpe_file, download_root), config.context_length, text_style="hf"
    )
    preprocess = _preprocess(PICKSCORE_PREPROCESS, config.image_size)
    with torch.device("meta"):
        model = PickScore(config, tokenizer, preprocess, batch_size, num_workers)
    converted, names = convert_hf_clip_state_dict(state, model.clip_model.state_dict(), path)
    load_state_dict_strict(
        model.clip_model, converted, source=path, ignore=HF_UNUSED_KEYS, dtype=target_dtype,
        key_names=names,
    )
    return _finish(model, target_device, compile)


def hps_file(name: str, checkpoint: Optional[str], download_root: Optional[str]) -> str:
    if checkpoint is not None:
        return checkpoint
    filename = HPS_FILES[name]
    return _hub_file(
        HPS_REPO, filename, f"the {name} weights",
        f"pass checkpoint= the path of a local {filename}", download_root,
    )


def read_hps_state_dict(path: str) -> Dict[str, torch.Tensor]:
    """The OpenCLIP weights of an HPS file (``{"state_dict": ...}``, as hpsv2 reads it)."""
    return strip_prefix(read_state_dict(path, key="state_dict"))


def load_hps(
    name: str = "HPSv2.1",
    checkpoint: Optional[str] = None,
    config: Optional[CLIPConfig] = None,
    *,
    device: Union[str, torch.device, None] = None,
    download_root: Optional[str] = None,
    dtype: DtypeLike = None,
    bpe_file: Optional[str] = None,
    batch_size: int = 16,
    num_workers: Optional[int] = None,
    compile: bool = False,
) -> HPSv2Score:
    """HPSv2 or HPSv2.1 from the Hub (or a local ``checkpoint`` in the same format).

    Sizes are read from the weights, with OpenCLIP ViT-H-14's 80-wide image heads,
    64-wide text heads and GELU, unless ``config`` is given.
    """
    if name not in HPS_FILES:
        raise ValueError(f"unknown HPS version {name!r}; use one of {sorted(HPS_FILES)}")
    target_device, target_dtype = resolve_device(device), resolve_dtype(dtype)
    path = hps_file(name, checkpoint, download_root)
    logger.info("load checkpoint from %s", path)
    state = read_hps_state_dict(path)
    if config is None:
        reference = openclip_vit_h_14()
        config = infer_clip_config(
            state, path, vision_head_width=reference.vision_head_width,
            text_head_width=reference.text_head_width, act=reference.act,
        )
    tokenizer = CLIPTokenizer(
        resolve_clip_bpe(bpe_file, download_root), config.context_length, text_style="open_clip"
    )
    preprocess = _preprocess(HPS_PREPROCESS, config.image_size)
    with torch.device("meta"):
        model = HPSv2Score(config, tokenizer, preprocess, batch_size, num_workers)
    load_state_dict_strict(model.clip_model, state, source=path, dtype=target_dtype)
    return _finish(model, target_device, compile)
