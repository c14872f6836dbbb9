"""``load_score``: the paper's baselines CLIP, BLIP and Aesthetic, ready to score.

Weights are the original files, downloaded from their original URLs into
``download_root`` under their original names (so the original package's
``~/.cache/ImageReward`` is reused), or read from local paths as they are.
"""

from __future__ import annotations

import logging
import os
import warnings
import zipfile
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple, Union

import torch

from .checkpoints import (
    CheckpointError,
    StateDict,
    load_state_dict_strict,
    read_state_dict,
    select_prefix,
    strip_prefix,
)
from .config import BLIPScoreConfig, CLIPConfig, PreprocessConfig
from .dtypes import DtypeLike, resolve_device, resolve_dtype
from .hub import default_cache_dir, download_url, fetch_together, legacy_cache_dir, sha256_file
from .models.clip import infer_clip_config
from .preprocess import ImagePreprocessor
from .scoring.aesthetic_score import AestheticScore
from .scoring.blip_score import BLIPScore
from .scoring.clip_score import CLIPScore
from .tokenizers.bert import BertTokenizer
from .tokenizers.clip_bpe import CLIPTokenizer, resolve_clip_bpe

logger = logging.getLogger("imagereward")

Scorer = Union[CLIPScore, BLIPScore, AestheticScore]


@dataclass(frozen=True)
class BaselineFile:
    """A weights file: its URL, the name it is cached under and names it may have there."""

    url: str
    filename: str
    what: str
    sha256: Optional[str] = None
    aliases: Tuple[str, ...] = ()


BASELINE_FILES: Dict[str, BaselineFile] = {
    "CLIP": BaselineFile(
        url="https://openaipublic.azureedge.net/clip/models/"
        "b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836/ViT-L-14.pt",
        filename="ViT-L-14.pt",
        what="the OpenAI CLIP ViT-L/14 weights",
        sha256="b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836",
    ),
    "BLIP": BaselineFile(
        url="https://storage.googleapis.com/sfr-vision-language-research/BLIP/models/"
        "model_large.pth",
        filename="model_large.pth",
        what="the BLIP-large pretraining weights",
    ),
    "Aesthetic": BaselineFile(
        url="https://github.com/christophschuhmann/improved-aesthetic-predictor/raw/main/"
        "sac%2Blogos%2Bava1-l14-linearMSE.pth",
        filename="sac+logos+ava1-l14-linearMSE.pth",
        what="the LAION improved aesthetic predictor weights",
        aliases=("sac%2Blogos%2Bava1-l14-linearMSE.pth",),  # the name the original writes
    ),
}

# Entries of OpenAI's TorchScript archives that are not weights.
CLIP_METADATA_KEYS = ("input_resolution", "context_length", "vocab_size")

# Parts of BLIP's pretraining checkpoint that the BLIP score does not use.
BLIP_UNUSED_KEYS = (
    r"(visual_encoder_m|text_encoder_m|vision_proj_m|text_proj_m|text_decoder|itm_head)\..*",
    r"temp|image_queue|text_queue|queue_ptr",
    r"text_encoder\.embeddings\.position_ids",
)


def available_scores() -> List[str]:
    """Names accepted by :func:`load_score`."""
    return ["CLIP", "BLIP", "Aesthetic"]


def _cached(entry: BaselineFile, root: str) -> Optional[str]:
    """An existing file of ``entry`` in ``root`` (checksum-verified when one is known)."""
    for name in (entry.filename, *entry.aliases):
        path = os.path.join(os.path.expanduser(root), name)
        if os.path.isfile(path) and (entry.sha256 is None or sha256_file(path) == entry.sha256):
            return path
    return None


def baseline_file(name: str, download_root: Optional[str] = None) -> str:
    """Local path of a baseline's weights, downloading them when needed.

    Without ``download_root``, a copy in the original package's cache is reused;
    otherwise files go to the package's own cache folder.
    """
    entry = BASELINE_FILES[name]
    root = download_root
    if root is None:
        root = legacy_cache_dir() if _cached(entry, legacy_cache_dir()) else default_cache_dir()
    found = _cached(entry, root)
    if found is not None:
        return found
    return download_url(
        entry.url,
        root,
        entry.filename,
        sha256=entry.sha256,
        what=entry.what,
        local_hint=f"pass the path of a local {entry.filename} to load_score()",
    )


def _is_torchscript(archive: zipfile.ZipFile) -> bool:
    return any("/code/" in name or name.endswith("/constants.pkl") for name in archive.namelist())


def read_clip_checkpoint(path: str) -> StateDict:
    """Weights of an OpenAI CLIP file: a TorchScript archive or a ``torch.save`` state dict.

    TorchScript archives are read with ``torch.jit.load`` and only their tensors are
    kept (the archive's methods are never called); non-weight entries are dropped.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(2, "CLIP checkpoint file not found", path)
    if not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"{path} is not a CLIP checkpoint: expected a TorchScript archive such as "
            "OpenAI's ViT-L-14.pt, or a torch.save zip file"
        )
    with zipfile.ZipFile(path) as archive:
        scripted = _is_torchscript(archive)
    if not scripted:
        state = read_state_dict(path)
    else:
        try:
            with warnings.catch_warnings():  # newer torch deprecates TorchScript; the files remain
                warnings.simplefilter("ignore", DeprecationWarning)
                state = torch.jit.load(path, map_location="cpu").state_dict()
        except Exception as error:  # corrupt or foreign archives fail in many ways
            raise CheckpointError(f"cannot read TorchScript archive {path}: {error}") from error
    return {
        key: value
        for key, value in strip_prefix(dict(state)).items()
        if isinstance(value, torch.Tensor) and key not in CLIP_METADATA_KEYS
    }


def _preprocess(image_size: int) -> ImagePreprocessor:
    return ImagePreprocessor(PreprocessConfig(image_size=image_size))


def _load_clip(
    path: str, config: Optional[CLIPConfig], dtype: torch.dtype, bpe_file: Optional[str],
    batch_size: int, num_workers: Optional[int],
) -> CLIPScore:
    state = read_clip_checkpoint(path)
    config = config or infer_clip_config(state, path)
    tokenizer = CLIPTokenizer(resolve_clip_bpe(bpe_file), config.context_length)
    preprocess = _preprocess(config.image_size)
    with torch.device("meta"):
        model = CLIPScore(config, tokenizer, preprocess, batch_size, num_workers)
    load_state_dict_strict(model.clip_model, state, source=path, dtype=dtype)
    return model


def _load_blip(
    path: str, config: Optional[BLIPScoreConfig], dtype: torch.dtype, vocab_file: Optional[str],
    batch_size: int, num_workers: Optional[int],
) -> BLIPScore:
    config = config or BLIPScoreConfig()
    state = strip_prefix(read_state_dict(path, key="model"))
    tokenizer = BertTokenizer(vocab_file, max_length=config.max_text_length)
    preprocess = _preprocess(config.vision.image_size)
    with torch.device("meta"):
        model = BLIPScore(config, tokenizer, preprocess, batch_size, num_workers)
    load_state_dict_strict(model.blip, state, source=path, ignore=BLIP_UNUSED_KEYS, dtype=dtype)
    return model


def _load_aesthetic(
    path: str, clip_path: str, config: Optional[CLIPConfig], dtype: torch.dtype,
    batch_size: int, num_workers: Optional[int],
) -> AestheticScore:
    clip_state = read_clip_checkpoint(clip_path)
    config = config or infer_clip_config(clip_state, clip_path)
    preprocess = _preprocess(config.image_size)
    with torch.device("meta"):
        model = AestheticScore(config, preprocess=preprocess, batch_size=batch_size,
                               num_workers=num_workers)
    visual = select_prefix(clip_state, "visual.")
    load_state_dict_strict(model.visual, visual, source=clip_path, dtype=dtype)
    load_state_dict_strict(model.mlp, strip_prefix(read_state_dict(path)), source=path)
    return model


def load_score(
    name: str = "CLIP",
    device: Union[str, torch.device, None] = None,
    download_root: Optional[str] = None,
    *,
    dtype: DtypeLike = None,
    checkpoint: Optional[str] = None,
    clip_checkpoint: Optional[str] = None,
    config: Union[CLIPConfig, BLIPScoreConfig, None] = None,
    bpe_file: Optional[str] = None,
    vocab_file: Optional[str] = None,
    batch_size: int = 16,
    num_workers: Optional[int] = None,
    compile: bool = False,
) -> Scorer:
    """Load a baseline scorer (``"CLIP"``, ``"BLIP"`` or ``"Aesthetic"``) in eval mode.

    ``checkpoint`` (and, for Aesthetic, ``clip_checkpoint``) are local weight files
    used as they are, without checksums or network. Otherwise the original files
    are fetched into ``download_root`` (default: the original package's cache when
    it holds them, else the package's own cache). ``config`` overrides the sizes
    (a :class:`CLIPConfig` for CLIP and Aesthetic, a :class:`BLIPScoreConfig` for
    BLIP); CLIP sizes are otherwise read from the weights. ``dtype`` sets the
    precision of the encoders (float32 by default, also on the CPU); the aesthetic
    MLP always runs in float32. ``bpe_file`` / ``vocab_file`` are local CLIP BPE
    merges / BERT vocabulary files. ``compile=True`` runs the encoders through
    ``torch.compile``.
    """
    if name not in available_scores():
        raise RuntimeError(f"Score {name} not found; available scores = {available_scores()}")
    expected = BLIPScoreConfig if name == "BLIP" else CLIPConfig
    if config is not None and not isinstance(config, expected):
        raise TypeError(
            f"config for {name} must be a {expected.__name__}, got {type(config).__name__}"
        )
    target_device, target_dtype = resolve_device(device), resolve_dtype(dtype)
    fetchers = {name: lambda: checkpoint or baseline_file(name, download_root)}
    if name == "Aesthetic":  # two files: a missing pair is reported together
        fetchers["CLIP"] = lambda: clip_checkpoint or baseline_file("CLIP", download_root)
    paths = fetch_together(fetchers)
    path = paths[name]
    logger.info("load checkpoint from %s", path)
    model: Scorer
    if name == "CLIP":
        model = _load_clip(path, config, target_dtype, bpe_file, batch_size, num_workers)
    elif name == "BLIP":
        model = _load_blip(path, config, target_dtype, vocab_file, batch_size, num_workers)
    else:
        model = _load_aesthetic(path, paths["CLIP"], config, target_dtype, batch_size, num_workers)
    model.eval().to(target_device)
    if compile:
        model.compile_encoders()
    logger.info("checkpoint loaded")
    return model
