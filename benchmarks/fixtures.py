"""Inputs shared by the parity and speed tools: odd images, odd prompts, a med_config,
and int8 calibration pairs apart from the odd images."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Tuple

import numpy as np
from PIL import Image

from refenv import REFERENCE_DATA

PROMPTS = [
    "a painting of an ocean with clouds and birds, day time, low depth field effect",
    "",
    "a very long prompt " + " ".join(f"with many words number {i}" for i in range(20)),
    "un café à Zürich, 東京の夜景, ∑ ≠ ∞ and a wave emoji 🌊",
    "!!! ??? ... ,,, ;; -- (( )) [[ ]] {{ }} <<>> @#$%^&*",
    "a cat",
]

# BLIP's med_config.json as published with ImageReward (facts section 2.2).
MED_CONFIG = {
    "architectures": ["BertModel"],
    "attention_probs_dropout_prob": 0.1,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "hidden_size": 768,
    "initializer_range": 0.02,
    "intermediate_size": 3072,
    "layer_norm_eps": 1e-12,
    "max_position_embeddings": 512,
    "model_type": "bert",
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "pad_token_id": 0,
    "type_vocab_size": 2,
    "vocab_size": 30524,
    "encoder_width": 768,
    "add_cross_attention": True,
}


def write_med_config(workdir: Path) -> Path:
    path = workdir / "med_config.json"
    path.write_text(json.dumps(MED_CONFIG, indent=2))
    return path


def _gradient(width: int, height: int, seed: int) -> np.ndarray:
    """A tinted wave pattern with noise; the seed sets tint, frequencies and phases, so
    synthetic images look clearly different to a random network, not just to a person."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    x = (x / max(width - 1, 1))[..., None]
    y = (y / max(height - 1, 1))[..., None]
    freq_x, freq_y = rng.uniform(0.5, 6, 3), rng.uniform(0.5, 6, 3)
    phase, tint = rng.uniform(0, 2 * np.pi, 3), rng.uniform(0.2, 1.0, 3)
    base = tint * (0.5 + 0.5 * np.sin(2 * np.pi * (freq_x * x + freq_y * y) + phase))
    noise = rng.normal(0, 0.08, size=(height, width, 3))
    return (np.clip(base + noise, 0, 1) * 255).astype(np.uint8)


def odd_images(workdir: Path) -> List[str]:
    """The four real example images plus synthetic ones in every awkward mode and shape."""
    folder = workdir / "images"
    folder.mkdir(parents=True, exist_ok=True)
    paths = [str(REFERENCE_DATA / "assets" / f"{i}.webp") for i in range(1, 5)]
    rgb = Image.fromarray(_gradient(640, 480, 0))
    made = {
        "rgba.png": Image.fromarray(np.dstack([_gradient(300, 260, 1), _gradient(300, 260, 2)[:, :, 0]]), "RGBA"),
        "gray.jpg": Image.fromarray(_gradient(333, 517, 3)).convert("L"),
        "palette.png": Image.fromarray(_gradient(400, 300, 4)).convert("P", palette=Image.ADAPTIVE),
        "cmyk.jpg": Image.fromarray(_gradient(350, 350, 5)).convert("CMYK"),
        "tiny.png": Image.fromarray(_gradient(9, 7, 6)),
        "huge.jpg": Image.fromarray(_gradient(4000, 3000, 7)),
        "tall.webp": Image.fromarray(_gradient(227, 2000, 8)),
        "wide.png": Image.fromarray(_gradient(2001, 225, 9)),
        "exact.png": rgb.resize((224, 224)),
        "photo.jpg": rgb,
    }
    for name, image in made.items():
        path = folder / name
        if not path.exists():
            image.save(path, quality=90) if name.endswith((".jpg", ".webp")) else image.save(path)
        paths.append(str(path))
    return paths


def calibration_pairs(folder: Path, count: int) -> Tuple[List[str], List[str]]:
    """``count`` synthetic images (seeds apart from :func:`odd_images`') with the odd
    prompts: what the int8 benchmarks calibrate on."""
    folder.mkdir(parents=True, exist_ok=True)
    images = []
    for seed in range(100, 100 + count):
        path = folder / f"calibration-{seed}.png"
        if not path.exists():
            Image.fromarray(_gradient(320 + seed % 7 * 40, 400 - seed % 5 * 30, seed)).save(path)
        images.append(str(path))
    return [PROMPTS[i % len(PROMPTS)] for i in range(count)], images
