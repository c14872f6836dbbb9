"""Ranked generations: reading them from test.json files, ImageRewardDB tables or the hub.

Every reader returns :class:`PreferenceGroup` objects: one prompt, its images and their
human ranks (smaller is better, ties allowed). Images stay on disk or in the table
until a training batch needs them.
"""

from __future__ import annotations

import glob
import io
import os
import random
from dataclasses import dataclass
from typing import Any, Dict, List, Sequence, Tuple, Union

from PIL import Image

from ..preprocess import ImageLoadError
from .config import TrainConfig
from ..errors import DataError
from ..options import require

_MAX_LISTED = 5


class RowImage:
    """An image kept in row ``row`` of a table column, decoded on demand."""

    def __init__(self, column: "ImageColumn", row: int) -> None:
        self.column = column
        self.row = row

    def load(self) -> Image.Image:
        return self.column.load(self.row)

    def __repr__(self) -> str:
        return f"RowImage({self.column.source!r}, row={self.row})"


ImageRef = Union[str, RowImage]


@dataclass
class PreferenceGroup:
    """A prompt, its generated images and their human ranks (1 = best)."""

    prompt: str
    images: List[ImageRef]
    ranks: List[float]


class ImageColumn:
    """An ``image`` column (struct of bytes/path, binary or path strings) of an Arrow table."""

    def __init__(self, column: Any, source: str, image_root: str) -> None:
        self.column = column
        self.source = source
        self.image_root = image_root

    def load(self, row: int) -> Image.Image:
        value = self.column[row].as_py()
        data, path = None, None
        if isinstance(value, dict):
            data, path = value.get("bytes"), value.get("path")
        elif isinstance(value, (bytes, bytearray)):
            data = value
        elif isinstance(value, str):
            path = value
        if data is None and path is None:
            raise ImageLoadError(f"{self.source}: row {row} has no image")
        source = io.BytesIO(data) if data is not None else os.path.join(self.image_root, path)
        try:
            with Image.open(source) as handle:
                handle.load()
                return handle
        except (OSError, SyntaxError, ValueError) as error:
            raise ImageLoadError(f"{self.source}: cannot decode the image of row {row}: {error}") from error


# -- test.json format ----------------------------------------------------------------------
def read_ranked_json(path: str, image_root: str = "") -> List[PreferenceGroup]:
    """A list of ``{"prompt", "generations": [paths], "ranking": [ranks]}`` items (test.json format).

    Paths are relative to ``image_root`` (default: the JSON file's folder); every image
    must exist.
    """
    from ..eval.data import load_test_json

    root = image_root or os.path.dirname(os.path.abspath(path))
    groups, missing = [], []
    for item in load_test_json(path):
        paths = [os.path.join(root, image) for image in item.generations]
        missing.extend(p for p in paths if not os.path.isfile(p))
        groups.append(PreferenceGroup(item.prompt, paths, [float(r) for r in item.ranking]))
    if missing:
        shown = ", ".join(missing[:_MAX_LISTED])
        raise FileNotFoundError(
            f"{path}: {len(missing)} image(s) not found under {root}: {shown}"
            + (" ..." if len(missing) > _MAX_LISTED else "")
        )
    return groups


# -- ImageRewardDB layout --------------------------------------------------------------------
def groups_from_table(table: Any, source: str, image_root: str = "") -> List[PreferenceGroup]:
    """Group an Arrow table with one row per image (``prompt_id``, ``prompt``, ``rank``,
    ``image`` or ``image_path``) into one group per prompt, in order of first appearance."""
    names = set(table.column_names)
    image_name = "image" if "image" in names else "image_path"
    needed = {"prompt", "rank", image_name}
    if not needed <= names:
        raise DataError(
            f"{source}: columns {sorted(needed - names)} are missing "
            f"(ImageRewardDB rows need prompt, rank and image or image_path; found {sorted(names)})"
        )
    key_name = "prompt_id" if "prompt_id" in names else "prompt"
    keys = table.column(key_name).to_pylist()
    prompts = table.column("prompt").to_pylist()
    ranks = table.column("rank").to_pylist()
    column = ImageColumn(table.column(image_name), source, image_root)
    grouped: Dict[Any, PreferenceGroup] = {}
    for row, (key, prompt, rank) in enumerate(zip(keys, prompts, ranks)):
        if not isinstance(prompt, str) or rank is None:
            raise DataError(f"{source}: row {row} needs a prompt and a rank")
        group = grouped.setdefault(key, PreferenceGroup(prompt, [], []))
        group.images.append(RowImage(column, row))
        group.ranks.append(float(rank))
    return list(grouped.values())


def read_imagerewarddb_parquet(path: str, image_root: str = "") -> List[PreferenceGroup]:
    """A parquet file, or a folder of them, in the ImageRewardDB layout."""
    parquet = require("pyarrow.parquet", "reading parquet files")
    pyarrow = require("pyarrow", "reading parquet files")
    files = [path]
    if os.path.isdir(path):
        files = sorted(glob.glob(os.path.join(path, "**", "*.parquet"), recursive=True))
    if not files:
        raise FileNotFoundError(2, "No parquet files in folder", path)
    table = pyarrow.concat_tables([parquet.read_table(f, memory_map=True) for f in files])
    root = image_root or (path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path)))
    return groups_from_table(table, path, root)


def read_hub_dataset(name: str, config: str, split: str, image_root: str = "") -> List[PreferenceGroup]:
    """A split of a hub data set in the ImageRewardDB layout, through ``datasets``."""
    datasets = require("datasets", f"reading the hub data set {name}")
    try:
        dataset = datasets.load_dataset(name, config or None, split=split)
    except Exception as error:
        raise RuntimeError(
            f"cannot load split {split!r} of the hub data set {name} ({config}): {error}. "
            "You can also download its parquet files and pass their folder as --train-data"
        ) from error
    return groups_from_table(dataset.with_format("arrow")[:], f"{name}/{config}/{split}", image_root)


def read_groups(path: str, image_root: str = "") -> List[PreferenceGroup]:
    """Dispatch on the path: ``.json`` -> test.json format; ``.parquet`` or a folder -> ImageRewardDB."""
    if path.endswith(".json"):
        if not os.path.isfile(path):
            raise FileNotFoundError(2, "Rankings file not found", path)
        return read_ranked_json(path, image_root)
    if path.endswith(".parquet") or os.path.isdir(path):
        if not os.path.exists(path):
            raise FileNotFoundError(2, "Parquet data not found", path)
        return read_imagerewarddb_parquet(path, image_root)
    raise DataError(f"{path}: give a .json file (test.json format), a .parquet file or a folder of them")


# -- splits ------------------------------------------------------------------------------
def split_groups(
    groups: Sequence[PreferenceGroup], fraction: float, seed: int
) -> Tuple[List[PreferenceGroup], List[PreferenceGroup]]:
    """Hold out ``fraction`` of the prompts (at least one) for validation, chosen by ``seed``."""
    if len(groups) < 2:
        raise ValueError(f"cannot hold out validation prompts from {len(groups)} prompt(s)")
    order = list(range(len(groups)))
    random.Random(seed).shuffle(order)
    count = min(len(groups) - 1, max(1, round(fraction * len(groups))))
    held = set(order[:count])
    train = [g for i, g in enumerate(groups) if i not in held]
    valid = [g for i, g in enumerate(groups) if i in held]
    return train, valid


def load_splits(
    config: TrainConfig,
) -> Tuple[List[PreferenceGroup], List[PreferenceGroup], List[PreferenceGroup]]:
    """Training, validation and reference (normalisation) groups for ``config``."""
    root = config.image_root
    if config.hub_dataset:
        train = read_hub_dataset(config.hub_dataset, config.hub_config, config.train_split, root)
        valid = read_hub_dataset(config.hub_dataset, config.hub_config, config.valid_split, root)
    else:
        train = read_groups(config.train_data, root)
        if config.valid_data:
            valid = read_groups(config.valid_data, root)
        else:
            train, valid = split_groups(train, config.valid_fraction, config.seed)
    reference = read_groups(config.reference_data, root) if config.reference_data else valid
    return train, valid, reference
