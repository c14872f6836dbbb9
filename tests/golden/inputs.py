"""The golden tests' inputs: the four example images, odd synthetic images and odd prompts.

Synthetic images are drawn from seeded numpy integers and written as PNG (lossless),
so both environments decode the same pixels; :func:`pixel_digest` pins them.
Imports numpy and PIL only (shared by ``make_golden.py`` and the tests).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable, Dict, List

import numpy as np
from PIL import Image

PROMPTS = [
    "a painting of an ocean with clouds and birds, day time, low depth field effect",
    "",
    # Over 35 BERT tokens and over 77 CLIP tokens: both tokenizers truncate.
    "an extremely detailed photograph of " + ", ".join(
        f"a {colour} {thing} number {i}"
        for i, (colour, thing) in enumerate(
            [("red", "boat"), ("blue", "house"), ("green", "tree"), ("yellow", "car")] * 6
        )
    ),
    "un café à Zürich, 東京の夜景, ∑ ≠ ∞ and a wave emoji 🌊",
]

ASSET_NAMES = [f"{i}.webp" for i in range(1, 5)]


def _pattern(width: int, height: int, seed: int) -> np.ndarray:
    """An ``[H, W, 3]`` uint8 pattern: seeded integer stripes and blocks plus seeded noise."""
    rng = np.random.default_rng(seed)
    a, b, c = (int(v) for v in rng.integers(1, 7, size=3))
    y, x = np.mgrid[0:height, 0:width]
    channels = [(a * x + b * y) % 256, (c * x * y // 97) % 256, ((x // 16 + y // 16) % 2) * 200]
    base = np.stack(channels, axis=-1).astype(np.int64)
    noise = rng.integers(-20, 21, size=(height, width, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def _rgba(seed: int) -> Image.Image:
    rgb = _pattern(300, 260, seed)
    alpha = _pattern(300, 260, seed + 1)[..., :1]
    alpha[:80] = 0  # a fully transparent band: the original drops alpha after resizing
    return Image.fromarray(np.concatenate([rgb, alpha], axis=-1), "RGBA")


def _palette(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    indices = (_pattern(257, 190, seed)[..., 0] // 4).astype(np.uint8)
    image = Image.fromarray(indices, "P")
    image.putpalette([int(v) for v in rng.integers(0, 256, size=64 * 3)])
    return image


def _gray(seed: int) -> Image.Image:
    return Image.fromarray(_pattern(190, 333, seed)[..., 1], "L")


def _rgb(width: int, height: int) -> Callable[[int], Image.Image]:
    return lambda seed: Image.fromarray(_pattern(width, height, seed), "RGB")


SYNTHETIC: Dict[str, Callable[[int], Image.Image]] = {
    "rgba.png": _rgba,
    "palette.png": _palette,
    "gray.png": _gray,
    "tiny.png": _rgb(300, 7),  # 7 rows: upscaled 32x before the crop
    "wide.png": _rgb(900, 120),
    "small.png": _rgb(50, 40),  # smaller than 224 on both sides
    "odd-crop.png": _rgb(462, 448),  # resized to 231x224: the crop offset 3.5 rounds half to even
}


def write_images(folder: Path, assets: Path) -> List[Path]:
    """The four example images from ``assets``, then the synthetic ones written to ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [assets / name for name in ASSET_NAMES]
    for seed, (name, make) in enumerate(SYNTHETIC.items()):
        path = folder / name
        make(seed).save(path)
        paths.append(path)
    return paths


def pixel_digest(path: Path) -> str:
    """sha256 of the decoded image: mode, size and pixel bytes (and the palette, if any)."""
    with Image.open(path) as image:
        digest = hashlib.sha256(f"{image.mode}|{image.size}|".encode("utf-8"))
        digest.update(image.tobytes())
        palette = image.getpalette()
        if palette is not None:
            digest.update(bytes(palette))
    return digest.hexdigest()


def describe(path: Path) -> Dict[str, object]:
    with Image.open(path) as image:
        mode, size = image.mode, list(image.size)
    return {"name": path.name, "mode": mode, "size": size, "pixels_sha256": pixel_digest(path)}
