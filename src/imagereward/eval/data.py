"""The preference test set: reading ``test.json``, fetching it and its images, safe unzipping.

``test.json`` is a list of ``{"id", "prompt", "generations", "ranking"}``:
image paths relative to the image folder and one human rank per image
(smaller is better; ties allowed; ranks need not be contiguous).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
import zipfile
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence

from ..errors import DataError, UnsafeArchiveError

# The text-to-image models of the paper's Table 1, in its human-ranking order.
PAPER_MODELS = ("openjourney", "sd2-1", "dalle2", "sd1-4", "vd", "cogview2")

# The original annotations, pinned to a commit of THUDM/ImageReward; the checksum
# is that of the file at this commit (466 prompts, 2,720 images, 6,399 ranked pairs).
TEST_JSON_URL = (
    "https://raw.githubusercontent.com/THUDM/ImageReward/"
    "6d863e141e9cb43c07f992e3796af538cf01740e/data/test.json"
)
TEST_JSON_SHA256 = "77cff6c2d0522006f52f0b637ef8302db1782b2b761e378c124a012a3c7fc58e"
TEST_IMAGES_REPO = "THUDM/ImageReward"
TEST_IMAGES_ZIP = "test_images.zip"


@dataclass(frozen=True)
class TestItem:
    """One prompt of ``test.json`` with its images and their human ranks."""

    __test__ = False  # not a pytest test class

    id: str
    prompt: str
    generations: List[str]
    ranking: List[float]  # human ranks, smaller is better; ties allowed


def read_json_list(path: str, what: str) -> List[Any]:
    """The JSON list in ``path``; a :class:`DataError` naming the file otherwise."""
    try:
        with open(path, "r", encoding="utf-8") as handle:
            raw = json.load(handle)
    except json.JSONDecodeError as error:
        raise DataError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(raw, list):
        raise DataError(f"{path}: expected a list of {what}, found {type(raw).__name__}")
    return raw


def write_json(path: str, data: Any, indent: int = 4) -> str:
    """Write ``data`` as JSON (non-ASCII kept) through a temporary file, so ``path`` is never half-written."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    partial = path + ".part"
    with open(partial, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=indent, ensure_ascii=False)
        handle.write("\n")
    os.replace(partial, path)
    return path


def load_test_json(path: str) -> List[TestItem]:
    """Read and check a ``test.json``-format file; errors name the file and the item."""
    raw = read_json_list(path, "prompts")
    return [_parse_item(entry, index, path) for index, entry in enumerate(raw)]


def _parse_item(entry: Any, index: int, path: str) -> TestItem:
    where = f"{path} item {index}"
    if isinstance(entry, dict) and "id" in entry:
        where += f" (id {entry['id']})"
    if not isinstance(entry, dict):
        raise DataError(f"{where}: expected an object, found {type(entry).__name__}")
    prompt, generations, ranking = (entry.get(k) for k in ("prompt", "generations", "ranking"))
    if not isinstance(prompt, str):
        raise DataError(f"{where}: 'prompt' must be a string")
    if not isinstance(generations, list) or not all(isinstance(g, str) for g in generations):
        raise DataError(f"{where}: 'generations' must be a list of image paths")
    if not isinstance(ranking, list) or not all(
        isinstance(r, (int, float)) and not isinstance(r, bool) for r in ranking
    ):
        raise DataError(f"{where}: 'ranking' must be a list of numbers (smaller is better)")
    if len(ranking) != len(generations):
        raise DataError(
            f"{where}: {len(generations)} generations but {len(ranking)} ranks"
        )
    if not generations:
        raise DataError(f"{where}: no generations")
    return TestItem(str(entry.get("id", index)), prompt, list(generations), list(ranking))


def image_paths(item: TestItem, images_dir: str) -> List[str]:
    return [os.path.join(images_dir, generation) for generation in item.generations]


def missing_images(items: Sequence[TestItem], images_dir: str) -> List[str]:
    return [p for item in items for p in image_paths(item, images_dir) if not os.path.isfile(p)]


def fetch_test_json(path: str) -> str:
    """Download the pinned original ``test.json`` to ``path`` unless it is there."""
    from ..hub import download_url

    root, name = os.path.split(os.path.abspath(path))
    return download_url(
        TEST_JSON_URL,
        root,
        name,
        sha256=TEST_JSON_SHA256,
        what="the ImageReward test annotations",
        local_hint=f"copy the original data/test.json to {path}",
    )


def fetch_test_images(images_dir: str, first_image: str) -> str:
    """Fetch ``test_images.zip`` from the hub into the parent of ``images_dir`` and unpack it.

    ``first_image`` (a path from ``test.json``) locates the image root inside the
    archive, whether or not it has a top-level folder.
    """
    from ..hub import fetch_hub_file

    images_dir = os.path.abspath(images_dir)
    parent = os.path.dirname(images_dir)
    archive = fetch_hub_file(
        TEST_IMAGES_REPO,
        TEST_IMAGES_ZIP,
        what="the ImageReward test images",
        local_hint=f"put {TEST_IMAGES_ZIP} into {parent}, or unpack it to {images_dir}",
        local_dir=parent,
    )
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".test_images.", dir=parent)
    try:
        safe_extract(archive, staging)
        root = _find_root(staging, first_image)
        if root is None:
            raise DataError(f"{archive} does not contain {first_image}; is it the right archive?")
        if os.path.isdir(images_dir) and not os.listdir(images_dir):
            os.rmdir(images_dir)
        os.replace(root, images_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return images_dir


def _find_root(staging: str, relative: str) -> Optional[str]:
    if os.path.isfile(os.path.join(staging, relative)):
        return staging
    for name in sorted(os.listdir(staging)):
        candidate = os.path.join(staging, name)
        if os.path.isdir(candidate) and os.path.isfile(os.path.join(candidate, relative)):
            return candidate
    return None


def _check_member(info: zipfile.ZipInfo, archive: str) -> List[str]:
    """The path components of a member, or :class:`UnsafeArchiveError`."""
    name = info.filename
    if stat.S_ISLNK(info.external_attr >> 16):
        raise UnsafeArchiveError(f"{archive}: refusing symbolic link member {name!r}")
    normalized = name.replace("\\", "/")
    if normalized.startswith("/") or (len(normalized) > 1 and normalized[1] == ":"):
        raise UnsafeArchiveError(f"{archive}: refusing absolute member path {name!r}")
    parts = [p for p in normalized.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchiveError(f"{archive}: refusing member path with '..': {name!r}")
    return parts


def safe_extract(archive: str, target: str) -> List[str]:
    """Extract a zip into ``target`` only; every member is checked before anything is written.

    Absolute paths, ``..`` components and symbolic links are refused. Returns the
    extracted file paths.
    """
    target = os.path.realpath(target)
    written: List[str] = []
    try:
        with zipfile.ZipFile(archive) as bundle:
            members = [(info, _check_member(info, archive)) for info in bundle.infolist()]
            for info, parts in members:
                if not parts:
                    continue
                destination = os.path.realpath(os.path.join(target, *parts))
                if os.path.commonpath([target, destination]) != target:
                    raise UnsafeArchiveError(f"{archive}: member {info.filename!r} leaves {target}")
                if info.is_dir():
                    os.makedirs(destination, exist_ok=True)
                    continue
                os.makedirs(os.path.dirname(destination), exist_ok=True)
                with bundle.open(info) as source, open(destination, "wb") as output:
                    shutil.copyfileobj(source, output, 1 << 20)
                written.append(destination)
    except zipfile.BadZipFile as error:
        raise DataError(f"{archive} is not a valid zip file: {error}") from None
    return written
