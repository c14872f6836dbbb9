"""The resume checkpoint: model, optimizer, scheduler, position and every RNG, as plain tensors.

The file is written with ``torch.save`` from tensors, numbers, strings, lists and dicts
only, so it loads with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import os
import random
from typing import Any, Dict

import numpy as np
import torch

CHECKPOINT_FILE = "checkpoint.pt"
FORMAT = 1


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state(device: torch.device) -> Dict[str, Any]:
    """The generators of Python, NumPy, torch's CPU and (on GPU) the current device."""
    version, keys, gauss = random.getstate()
    name, mt, pos, has_gauss, cached = np.random.get_state()
    state: Dict[str, Any] = {
        "python": {"version": version, "keys": list(keys), "gauss": gauss},
        "numpy": {"name": name, "keys": torch.from_numpy(mt.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: Dict[str, Any], device: torch.device) -> None:
    python = state["python"]
    random.setstate((python["version"], tuple(python["keys"]), python["gauss"]))
    numpy = state["numpy"]
    np.random.set_state((numpy["name"], numpy["keys"].numpy().astype(np.uint32), numpy["pos"],
                         numpy["has_gauss"], numpy["cached"]))
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def save_checkpoint(path: str, payload: Dict[str, Any]) -> None:
    """Write atomically: a crash while saving leaves the previous checkpoint intact."""
    partial = path + ".partial"
    torch.save({"format": FORMAT, **payload}, partial)
    os.replace(partial, path)


def load_checkpoint(path: str) -> Dict[str, Any]:
    if not os.path.isfile(path):
        raise FileNotFoundError(2, "No training checkpoint to resume from", path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path} is not a training checkpoint of this version (format {FORMAT})")
    return state
