"""One item pipeline for every runner: any image input to the scorer's own pixels, or a per-item error.

Every way into a scorer goes through here: in-process scoring, the batch job, the
data-set runner's decode stage, the reward server and the command line. An item is
a PIL image, a path, a ``uint8`` numpy array ``[H, W(, C)]`` or the bytes of an
encoded file; :func:`decode` opens it within one set of :class:`ImageLimits` and runs
the scorer's own preprocessing chain, so no runner decodes, crops or checks on its
own, and every door sees the same pixels. :func:`decode_all` and :func:`score_items`
isolate items: a bad one becomes its :class:`~imagereward.errors.InputError` and never
fails its batch-mates.
"""

from __future__ import annotations

import io
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, Hashable, Iterator, List, Mapping, Optional, Protocol, Sequence, Tuple, Union

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import ImageLoadError, ImageNotFoundError, ImageTypeError, InputError

if TYPE_CHECKING:  # pragma: no cover
    import torch

ImageInput = Union[Image.Image, str, "os.PathLike[str]", np.ndarray, bytes]

# Pillow's own decompression-bomb threshold (about 89.5 million pixels): the default cap
# of every door, in-process and served alike.
DEFAULT_MAX_PIXELS = int(1024 * 1024 * 1024 // 4 // 3)


class PixelChain(Protocol):
    """A scorer's image chain (:class:`~imagereward.preprocess.ImagePreprocessor`)."""

    def to_pixels(self, image: Image.Image) -> "torch.Tensor": ...


@dataclass(frozen=True)
class ImageLimits:
    """What any runner accepts: images of at most ``max_pixels`` pixels, in ``formats``.

    ``formats`` is a tuple of Pillow format names (``("PNG", "JPEG", "WEBP")``) or
    ``None`` for every format Pillow reads. The cap is checked from the file header,
    before decoding. Pillow's own bomb check (twice its ``MAX_IMAGE_PIXELS``) still
    applies above that.
    """

    max_pixels: int = DEFAULT_MAX_PIXELS
    formats: Optional[Tuple[str, ...]] = None

    def __post_init__(self) -> None:
        if self.max_pixels < 1:
            raise ValueError(f"max_pixels must be positive, got {self.max_pixels}")
        if self.formats is not None:
            object.__setattr__(self, "formats", tuple(f.upper() for f in self.formats))

    def check_size(self, width: int, height: int, name: str) -> None:
        if width * height > self.max_pixels:
            raise ImageLoadError(
                f"{name}: image of {width}x{height} pixels is over the limit of {self.max_pixels}"
            )


DEFAULT_LIMITS = ImageLimits()


def item_name(item: Any, index: Optional[int] = None) -> str:
    """How errors name an item: its path, else its position."""
    if isinstance(item, (str, os.PathLike)):
        return os.fspath(item)
    return f"images[{index}]" if index is not None else f"{type(item).__name__} image"


def check_item(item: Any) -> None:
    """Raise early, naming the input, for anything that cannot be an image (no decoding)."""
    if isinstance(item, (Image.Image, bytes, bytearray, memoryview)):
        return
    if isinstance(item, np.ndarray):
        if item.ndim not in (2, 3) or (item.ndim == 3 and item.shape[2] not in (1, 3, 4)):
            raise ImageLoadError(
                f"numpy image must be HxW or HxWxC with C in (1, 3, 4), got shape {item.shape}"
            )
        if np.issubdtype(item.dtype, np.floating):
            raise ImageLoadError(
                "float numpy images are ambiguous; pass uint8 arrays in 0..255 "
                "(or use score_tensors for float pixels in [0, 1])"
            )
        return
    if isinstance(item, (str, os.PathLike)):
        path = os.fspath(item)
        if os.path.isdir(path):
            raise ImageNotFoundError(path, "Image path is a folder, not a file")
        if not os.path.isfile(path):
            raise ImageNotFoundError(path)
        return
    raise ImageTypeError(
        "image must be a PIL.Image.Image, a file path (str or os.PathLike), a uint8 numpy "
        f"array or the bytes of an image file, got {type(item).__name__}"
    )


def open_image(
    item: ImageInput, limits: ImageLimits = DEFAULT_LIMITS, name: Optional[str] = None
) -> Image.Image:
    """The item as a decoded PIL image (a file fully read and closed), within ``limits``."""
    check_item(item)
    name = name or item_name(item)
    if isinstance(item, Image.Image):
        limits.check_size(item.width, item.height, name)
        return item
    if isinstance(item, np.ndarray):
        limits.check_size(item.shape[1], item.shape[0], name)
        array = item[:, :, 0] if item.ndim == 3 and item.shape[2] == 1 else item
        return Image.fromarray(np.ascontiguousarray(array.astype(np.uint8, copy=False)))
    if isinstance(item, (bytes, bytearray, memoryview)):
        if not len(item):
            raise ImageLoadError(f"{name}: image data is empty")
        return _decode_file(io.BytesIO(bytes(item)), limits, name)
    return _decode_file(os.fspath(item), limits, name)


def _decode_file(source: Union[str, io.BytesIO], limits: ImageLimits, name: str) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the cap below decides
            with Image.open(source, formats=limits.formats) as handle:
                limits.check_size(handle.width, handle.height, name)
                handle.load()
                return handle
    except Image.DecompressionBombError as error:
        raise ImageLoadError(f"refusing to decode {name}: {error}") from error
    except UnidentifiedImageError:
        accepted = f" of {', '.join(limits.formats)}" if limits.formats else ""
        raise ImageLoadError(f"cannot read image file {name}: not an image in a format{accepted} "
                             "Pillow can read") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageLoadError(f"cannot read image file {name}: {error}") from error


def decode(
    preprocess: PixelChain,
    item: ImageInput,
    limits: ImageLimits = DEFAULT_LIMITS,
    name: Optional[str] = None,
) -> "torch.Tensor":
    """The scorer's pixels ``[3, S, S]`` of one item (``uint8``; ``float32`` for padding chains)."""
    return _through(preprocess, open_image(item, limits, name), name or item_name(item))


def _through(chain: PixelChain, image: Image.Image, name: str) -> "torch.Tensor":
    """``chain.to_pixels(image)``; an image the chain refuses is named in the error."""
    try:
        return chain.to_pixels(image)
    except ImageLoadError as error:
        raise ImageLoadError(f"{name}: {error}") from None


def decode_for(
    chains: Mapping[Hashable, PixelChain],
    item: ImageInput,
    limits: ImageLimits = DEFAULT_LIMITS,
    name: Optional[str] = None,
) -> Dict[Hashable, "torch.Tensor"]:
    """One item's pixels for several scorers: opened (and checked) once, then run through
    each chain; ``chains`` maps a key (a scorer, or a preprocessing config that several
    scorers share) to its chain."""
    image = open_image(item, limits, name)
    return {key: _through(chain, image, name or item_name(item)) for key, chain in chains.items()}


def decode_all(
    preprocess: PixelChain,
    items: Sequence[ImageInput],
    limits: ImageLimits = DEFAULT_LIMITS,
    workers: int = 0,
    names: Optional[Sequence[str]] = None,
) -> List[Union["torch.Tensor", InputError]]:
    """Each item's pixels, or its :class:`InputError`, in order; ``workers`` decoding threads."""

    def one(index: int) -> Union["torch.Tensor", InputError]:
        name = names[index] if names is not None else item_name(items[index], index)
        try:
            return decode(preprocess, items[index], limits, name)
        except InputError as error:
            return error

    if workers <= 0 or len(items) < 2:
        return [one(i) for i in range(len(items))]
    with ThreadPoolExecutor(max_workers=min(workers, len(items))) as pool:
        return list(pool.map(one, range(len(items))))


def decoded_batches(
    preprocess: PixelChain,
    items: Sequence[ImageInput],
    batch_size: int,
    limits: ImageLimits = DEFAULT_LIMITS,
    workers: int = 0,
) -> Iterator[Tuple[int, "torch.Tensor"]]:
    """``(start, pixels [B, 3, S, S])`` in order (see :func:`collate_pixels`), decoding up
    to two batches ahead in ``workers`` threads; the first bad item raises its :class:`InputError`."""
    size = max(1, int(batch_size))
    chunks = [list(range(i, min(i + size, len(items)))) for i in range(0, len(items), size)]

    def one(index: int) -> "torch.Tensor":
        return decode(preprocess, items[index], limits, item_name(items[index], index))

    if workers <= 0:
        for chunk in chunks:
            yield chunk[0], collate_pixels([one(i) for i in chunk])
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending = [pool.map(one, chunk) for chunk in chunks[:2]]
        for position, chunk in enumerate(chunks):
            batch = collate_pixels(list(pending.pop(0)))
            if position + 2 < len(chunks):
                pending.append(pool.map(one, chunks[position + 2]))
            yield chunk[0], batch


def collate_pixels(pixels: Sequence["torch.Tensor"]) -> "torch.Tensor":
    """One batch ``[B, 3, H, W]`` of decoded images: stacked, or, where the chain keeps
    each image's own size (Qwen2-VL's), padded right and below to the largest with NaN,
    which marks each image's extent for the network."""
    import torch

    shapes = {tuple(p.shape) for p in pixels}
    if len(shapes) <= 1:
        return torch.stack(list(pixels))
    if not all(p.is_floating_point() for p in pixels):
        raise ValueError(f"pixels of different shapes {sorted(shapes)} must be float to be padded")
    height = max(p.shape[-2] for p in pixels)
    width = max(p.shape[-1] for p in pixels)
    batch = pixels[0].new_full((len(pixels), pixels[0].shape[0], height, width), float("nan"))
    for row, image in enumerate(pixels):
        batch[row, :, : image.shape[-2], : image.shape[-1]] = image
    return batch


def score_items(
    scorer: Any,
    prompts: Sequence[str],
    items: Sequence[ImageInput],
    limits: Optional[ImageLimits] = None,
    names: Optional[Sequence[str]] = None,
) -> List[Union[float, InputError]]:
    """Rewards of row-aligned (prompt, item) pairs, a bad item's :class:`InputError` in its place.

    Items are decoded with the scorer's own chain (its decode threads, its limits unless
    ``limits`` is given) and the good ones scored together, ``scorer.batch_size`` at a time.
    """
    if len(prompts) != len(items):
        raise InputError(f"got {len(prompts)} prompts for {len(items)} images")
    decoded = decode_all(scorer.preprocess, items, limits or scorer.limits, scorer.num_workers, names)
    results: List[Union[float, InputError]] = list(decoded)  # type: ignore[arg-type]
    good = [i for i, value in enumerate(decoded) if not isinstance(value, InputError)]
    size = max(1, int(scorer.batch_size))
    for start in range(0, len(good), size):
        rows = good[start : start + size]
        pixels = collate_pixels([decoded[i] for i in rows])  # type: ignore[misc]
        for index, value in zip(rows, scorer.score_pixels([prompts[i] for i in rows], pixels)):
            results[index] = value
    return results


__all__ = [
    "DEFAULT_LIMITS",
    "DEFAULT_MAX_PIXELS",
    "ImageInput",
    "ImageLimits",
    "check_item",
    "collate_pixels",
    "decode",
    "decode_all",
    "decode_for",
    "decoded_batches",
    "item_name",
    "open_image",
    "score_items",
]
