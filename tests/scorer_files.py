"""Tiny random checkpoints of every registered scorer, each in its original file format.

``write_all(root)`` writes them and returns, by scorer name, the local files by role
and the ``load()`` options a tiny model needs (its config where the sizes are not read
from the weights). A scorer added to the registry without an entry here fails
``test_every_runner`` at once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Tuple

import torch

from helpers import random_state_dict, tiny_config
from imagereward.models.head import RewardHead
from test_baselines import TINY_CLIP, _perturb, blip_pretrain_state, tiny_blip_config, write_clip_archive
from newmodel_files import write_hpsv3, write_mps
from test_prefmodels import random_clip, to_hf, write_hps, write_pickscore

Written = Dict[str, Tuple[Dict[str, str], Dict[str, Any]]]


def _imagereward(root: Path) -> Tuple[Dict[str, str], Dict[str, Any]]:
    config = tiny_config()
    torch.save(random_state_dict(config, seed=4), root / "ImageReward.pt")
    return {"weights": str(root / "ImageReward.pt")}, {"config": config}


def _clip(root: Path) -> Tuple[Dict[str, str], Dict[str, Any]]:
    return {"weights": str(write_clip_archive(root / "ViT-L-14.pt", seed=5))}, {}


def _blip(root: Path) -> Tuple[Dict[str, str], Dict[str, Any]]:
    config = tiny_blip_config()
    torch.save({"model": blip_pretrain_state(config, seed=6), "epoch": 19}, root / "model_large.pth")
    return {"weights": str(root / "model_large.pth")}, {"config": config}


def _aesthetic(root: Path) -> Tuple[Dict[str, str], Dict[str, Any]]:
    torch.manual_seed(7)
    head = RewardHead(TINY_CLIP.embed_dim)
    head.reset_parameters()
    _perturb(head, 7)
    torch.save(head.state_dict(), root / "sac+logos+ava1-l14-linearMSE.pth")
    clip = write_clip_archive(root / "ViT-L-14-for-aesthetic.pt", seed=8)
    return {"weights": str(root / "sac+logos+ava1-l14-linearMSE.pth"), "clip": str(clip)}, {}


def _pickscore(root: Path) -> Tuple[Dict[str, str], Dict[str, Any]]:
    folder = write_pickscore(root / "pickscore", to_hf(random_clip(seed=9)))
    return {"weights": str(folder / "model.safetensors")}, {}


def _hps(file: str, seed: int):
    def write(root: Path) -> Tuple[Dict[str, str], Dict[str, Any]]:
        return {"weights": str(write_hps(root / file, random_clip(seed=seed).state_dict()))}, {}

    return write


WRITERS = {
    "ImageReward-v1.0": _imagereward,
    "CLIP": _clip,
    "BLIP": _blip,
    "Aesthetic": _aesthetic,
    "PickScore": _pickscore,
    "HPSv2": _hps("HPS_v2_compressed.pt", 10),
    "HPSv2.1": _hps("HPS_v2.1_compressed.pt", 11),
    "MPS": write_mps,
    "HPSv3": write_hpsv3,
}


def write_all(root: Path) -> Written:
    written: Written = {}
    for name, writer in WRITERS.items():
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        written[name] = writer(folder)
    return written


def save_all(root: Path, names: Any = None) -> Tuple[Written, Dict[str, str], Dict[str, Any]]:
    """The tiny checkpoints of ``names`` (default: all), each loaded and saved with
    ``save_pretrained``: the original files, the saved folders, and the scorers loaded from
    the original files, by name."""
    import imagereward

    originals = write_all(root / "originals")
    folders, loaded = {}, {}
    for name in names or list(originals):
        files, options = originals[name]
        loaded[name] = imagereward.load(name, files=files, device="cpu", num_workers=0, **options)
        folders[name] = imagereward.save_pretrained(loaded[name], str(root / "saved" / name))
    return originals, folders, loaded
