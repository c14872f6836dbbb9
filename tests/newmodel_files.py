"""Tiny random MPS and HPSv3 checkpoints in their original layouts, for tests.

MPS: the keys of its released model (``model.*``: a Hugging Face ``CLIPModel``;
``cross_model.*``: the cross-modeling module, LayerNorm biases and rotary frequencies
included) as a state dict file; HPSv3: ``HPSv3.safetensors`` (``visual.*``, ``model.*``,
``lm_head.weight``, ``rm_head.*``) with Qwen2-VL's ``config.json`` and ``tokenizer.json``
beside it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Tuple

import torch
from safetensors.torch import save_file

from imagereward.config import HPSv3Config, MPSConfig
from imagereward.models.mps_cross import CrossModel
from qwen_files import tiny_vlm_config, write_config, write_tokenizer
from test_prefmodels import TINY, random_clip, to_hf

# A high threshold: random tiny towers give prompt tokens much alike, and the condition
# must still drop some of them for the tests to see it work.
TINY_MPS = MPSConfig(clip=TINY, cross_layers=1, cross_heads=2, cross_head_width=16, cross_ff_mult=2,
                     condition_threshold=0.8)


def _perturbed(module: torch.nn.Module, seed: int, scale: float = 0.05) -> Dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in module.state_dict().items():
        if value.is_floating_point() and not key.endswith(("inv_freq", "norm.bias")):
            value = value + torch.randn(value.shape, generator=generator) * scale
        state[key] = value.clone()
    return state


def mps_state(seed: int, config: MPSConfig = TINY_MPS) -> Dict[str, torch.Tensor]:
    """MPS's state dict: ``model.*`` in Hugging Face names, ``cross_model.*`` as MPS names it."""
    clip = {f"model.{k}": v for k, v in to_hf(random_clip(config.clip, seed=seed)).items()}
    torch.manual_seed(seed)
    cross = CrossModel(config.clip.embed_dim, config.cross_layers, config.cross_heads,
                       config.cross_head_width, config.cross_ff_mult)
    return {**clip, **{f"cross_model.{k}": v for k, v in _perturbed(cross, seed + 1).items()}}


def write_mps(root: Path, seed: int = 12) -> Tuple[Dict[str, str], Dict[str, Any]]:
    root.mkdir(parents=True, exist_ok=True)
    path = root / "MPS_overall_checkpoint.pth"
    torch.save(mps_state(seed), path)
    return {"weights": str(path)}, {"config": TINY_MPS}


def write_hpsv3(root: Path, seed: int = 13) -> Tuple[Dict[str, str], Dict[str, Any]]:
    """A tiny HPSv3: random Qwen2-VL towers and head, the reward token added to the vocabulary."""
    from tokenizers import Tokenizer

    from imagereward.scoring.hpsv3 import HPSv3Score

    root.mkdir(parents=True, exist_ok=True)
    ids = write_tokenizer(root / "tokenizer.json")
    vocab = Tokenizer.from_file(str(root / "tokenizer.json")).get_vocab_size(with_added_tokens=True) + 1
    vlm = tiny_vlm_config(ids, vocab)
    write_config(root / "config.json", vlm)
    shapes = HPSv3Score(HPSv3Config(vlm=vlm)).state_dict()
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in shapes.items():
        if not value.is_floating_point() or "inv_freq" in key:
            state[key] = value.clone()
            continue
        noise = torch.randn(value.shape, generator=generator) * 0.05
        is_norm = key.endswith("norm.weight") or key.endswith(("norm1.weight", "norm2.weight", "ln_q.weight"))
        state[key] = noise + 1.0 if is_norm else noise * (4.0 if key.startswith("rm_head") else 1.0)
    state["lm_head.weight"] = torch.randn(vocab, int(vlm["hidden_size"]), generator=generator) * 0.05
    save_file({k: v.contiguous() for k, v in state.items() if "inv_freq" not in k}, str(root / "HPSv3.safetensors"))
    return {"weights": str(root / "HPSv3.safetensors"), "tokenizer": str(root / "tokenizer.json")}, {}
