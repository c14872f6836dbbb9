"""ReFL inputs: training prompts, and (image, caption) pairs for the pretraining loss.

Pairs come from a folder of images with same-named ``.txt`` captions (or a
``metadata.jsonl``), a JSONL file, a parquet file or a hub data set. Images stay on
disk or in the table until a batch needs them. Which items a step sees depends only
on the seed and the step (:class:`IndexStream`), so a resumed run sees what an
uninterrupted one would have.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Dict, Iterable, Iterator, List, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image

from ..errors import InputError
from ..items import open_image
from ..preprocess import center_crop_box, resized_size
from ..options import require
from ..train.sources import ImageColumn, RowImage

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
PROMPT_KEYS = ("text", "prompt", "caption")


def _prompt_of(item: Any, where: str) -> str:
    if isinstance(item, str):
        return item
    if isinstance(item, dict):
        for key in PROMPT_KEYS:
            if isinstance(item.get(key), str):
                return item[key]
    raise InputError(f"{where}: expected a string or an object with one of the keys {PROMPT_KEYS}")


def read_prompts(path: str) -> List[str]:
    """Prompts of a JSON list (``refl_data.json``: objects with ``text``), a JSONL or a text file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(2, "Prompts file not found", path)
    with open(path, "r", encoding="utf-8") as handle:
        content = handle.read()
    if path.endswith(".json"):
        try:
            items = json.loads(content)
        except json.JSONDecodeError as error:
            raise InputError(f"{path}: not valid JSON: {error}") from error
        if not isinstance(items, list):
            raise InputError(f"{path}: expected a JSON list of prompts, got {type(items).__name__}")
        prompts = [_prompt_of(item, f"{path}: item {i}") for i, item in enumerate(items)]
    elif path.endswith(".jsonl"):
        prompts = [_prompt_of(item, f"{path}: line {number}")
                   for number, item in _json_lines(content.splitlines(), path)]
    else:
        prompts = [line.strip() for line in content.splitlines() if line.strip()]
    if not prompts:
        raise InputError(f"{path}: no prompts")
    return prompts


# -- (image, caption) pairs ---------------------------------------------------------------
ImageRef = Union[str, RowImage]


@dataclass
class CaptionedImages:
    """Images (paths or table rows) and their captions, row-aligned."""

    images: List[ImageRef]
    captions: List[str]
    source: str

    def __len__(self) -> int:
        return len(self.captions)

    def load(self, index: int) -> Image.Image:
        image = self.images[index]
        return image.load() if isinstance(image, RowImage) else open_image(image)


def _json_lines(lines: Iterable[str], path: str) -> Iterator[Tuple[int, Any]]:
    """``(line number, value)`` for each non-blank line of a JSONL file."""
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as error:
            raise InputError(f"{path}: line {number} is not valid JSON: {error}") from error
        yield number, value


def _read_jsonl_records(path: str) -> List[dict]:
    records = []
    with open(path, "r", encoding="utf-8") as handle:
        for number, record in _json_lines(handle, path):
            if not isinstance(record, dict):
                raise InputError(f"{path}: line {number} is not a JSON object")
            records.append(record)
    return records


def _pairs_from_records(records: Sequence[dict], root: str, image_key: str, caption_key: str,
                        source: str) -> CaptionedImages:
    images, captions, missing = [], [], []
    for number, record in enumerate(records, 1):
        image = record.get(image_key, record.get("file_name"))
        caption = record.get(caption_key)
        if not isinstance(image, str) or not isinstance(caption, str):
            raise InputError(f"{source}: record {number} needs string {image_key!r} and {caption_key!r}")
        path = os.path.join(root, image)
        if not os.path.isfile(path):
            missing.append(path)
        images.append(path)
        captions.append(caption)
    if missing:
        raise FileNotFoundError(2, f"{len(missing)} image(s) of {source} not found, first", missing[0])
    return CaptionedImages(images, captions, source)


def _read_folder(path: str, image_key: str, caption_key: str) -> CaptionedImages:
    metadata = os.path.join(path, "metadata.jsonl")
    if os.path.isfile(metadata):
        return _pairs_from_records(_read_jsonl_records(metadata), path, image_key, caption_key, metadata)
    images, captions, uncaptioned = [], [], []
    for name in sorted(os.listdir(path)):
        stem, suffix = os.path.splitext(name)
        if suffix.lower() not in IMAGE_SUFFIXES:
            continue
        caption_file = os.path.join(path, stem + ".txt")
        if not os.path.isfile(caption_file):
            uncaptioned.append(name)
            continue
        with open(caption_file, "r", encoding="utf-8") as handle:
            captions.append(handle.read().strip())
        images.append(os.path.join(path, name))
    if uncaptioned:
        raise InputError(f"{path}: {len(uncaptioned)} image(s) have no same-named .txt caption, "
                         f"e.g. {uncaptioned[0]}")
    return CaptionedImages(images, captions, path)


def _read_parquet(path: str, image_key: str, caption_key: str) -> CaptionedImages:
    parquet = require("pyarrow.parquet", "reading parquet pretraining data")
    table = parquet.read_table(path, memory_map=True)
    return _pairs_from_table(table, path, os.path.dirname(os.path.abspath(path)), image_key, caption_key)


def _pairs_from_table(table: Any, source: str, root: str, image_key: str, caption_key: str) -> CaptionedImages:
    names = set(table.column_names)
    if not {image_key, caption_key} <= names:
        raise InputError(f"{source}: needs columns {image_key!r} and {caption_key!r}, found {sorted(names)}")
    column = ImageColumn(table.column(image_key), source, root)
    captions = table.column(caption_key).to_pylist()
    if not all(isinstance(c, str) for c in captions):
        raise InputError(f"{source}: column {caption_key!r} must hold strings")
    return CaptionedImages([RowImage(column, row) for row in range(len(captions))], captions, source)


def _read_hub(name: str, split: str, image_key: str, caption_key: str) -> CaptionedImages:
    datasets = require("datasets", f"reading the hub data set {name}")
    try:
        dataset = datasets.load_dataset(name, split=split)
    except Exception as error:
        raise RuntimeError(f"cannot load split {split!r} of the hub data set {name}: {error}") from error
    table = dataset.with_format("arrow")[:]
    return _pairs_from_table(table, f"{name}/{split}", "", image_key, caption_key)


def read_pairs(path: str, image_key: str = "image", caption_key: str = "text",
               split: str = "train") -> CaptionedImages:
    """(image, caption) pairs from a folder, ``.jsonl``, ``.parquet`` or a hub data set name."""
    if os.path.isdir(path):
        pairs = _read_folder(path, image_key, caption_key)
    elif path.endswith(".jsonl"):
        if not os.path.isfile(path):
            raise FileNotFoundError(2, "Pretraining data not found", path)
        pairs = _pairs_from_records(_read_jsonl_records(path), os.path.dirname(os.path.abspath(path)),
                                    image_key, caption_key, path)
    elif path.endswith(".parquet"):
        if not os.path.isfile(path):
            raise FileNotFoundError(2, "Pretraining data not found", path)
        pairs = _read_parquet(path, image_key, caption_key)
    elif os.path.exists(path) or path.count("/") != 1:
        raise InputError(f"{path}: give a folder, a .jsonl or .parquet file, or a hub data set name (owner/name)")
    else:
        pairs = _read_hub(path, split, image_key, caption_key)
    if len(pairs) == 0:
        raise InputError(f"{path}: no (image, caption) pairs")
    return pairs


def image_to_tensor(image: Image.Image, resolution: int) -> torch.Tensor:
    """Shorter side to ``resolution`` (bicubic), centre crop, RGB in [-1, 1]: ``[3, R, R]``."""
    image = image.convert("RGB")
    width, height = resized_size(image.width, image.height, resolution)
    if (width, height) != image.size:
        image = image.resize((width, height), Image.BICUBIC)
    image = image.crop(center_crop_box(width, height, resolution))
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


# -- deterministic order ------------------------------------------------------------------
class IndexStream:
    """Item indices as a sequence of seeded permutations, one per epoch.

    ``batch(k, size)`` is the ``k``-th batch of ``size`` indices; it depends only on
    the seed, so any step can be recomputed after a resume.
    """

    def __init__(self, count: int, seed: int) -> None:
        self.count, self.seed = count, seed
        self._epochs: Dict[int, List[int]] = {}

    def _permutation(self, epoch: int) -> List[int]:
        if epoch not in self._epochs:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._epochs = {epoch: torch.randperm(self.count, generator=generator).tolist()}
        return self._epochs[epoch]

    def batch(self, k: int, size: int) -> List[int]:
        start = k * size
        return [self._permutation(i // self.count)[i % self.count] for i in range(start, start + size)]


def batch_of_pairs(pairs: CaptionedImages, indices: Sequence[int], resolution: int
                   ) -> Tuple[torch.Tensor, List[str]]:
    """``(pixels [B, 3, R, R] in [-1, 1], captions)`` of the given items."""
    pixels = torch.stack([image_to_tensor(pairs.load(i), resolution) for i in indices])
    return pixels, [pairs.captions[i] for i in indices]
