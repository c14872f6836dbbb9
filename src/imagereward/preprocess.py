"""Image loading and the preprocessing chains of BLIP / OpenAI CLIP, without torchvision.

The PIL chain reproduces, step for step, the original package's transform:
resize the shorter side to 224 with bicubic filtering, centre-crop 224x224,
*then* convert to RGB, scale to [0, 1] and normalise. The tensor chain is its
differentiable counterpart for pixels that are already tensors.
"""

from __future__ import annotations

import os
from typing import Any, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from .config import PreprocessConfig
from .errors import ImageLoadError, ImageNotFoundError, ImageTypeError

ImageInput = Union[Image.Image, str, "os.PathLike[str]", np.ndarray]

# Supported values of the PreprocessConfig fields that name a step of the chain.
INTERPOLATIONS = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}
CROPS = ("center",)
RGB_ORDERS = ("after_crop", "first")


def check_image_input(image: Any) -> None:
    """Raise early, with the offending input named, for anything we cannot score."""
    if isinstance(image, Image.Image):
        return
    if isinstance(image, np.ndarray):
        if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3, 4)):
            raise ImageLoadError(
                f"numpy image must be HxW or HxWxC with C in (1, 3, 4), got shape {image.shape}"
            )
        return
    if isinstance(image, (str, os.PathLike)):
        path = os.fspath(image)
        if os.path.isdir(path):
            raise ImageNotFoundError(path, "Image path is a folder, not a file")
        if not os.path.isfile(path):
            raise ImageNotFoundError(path)
        return
    raise ImageTypeError(
        "image must be a PIL.Image.Image, a file path (str or os.PathLike) or a numpy array, "
        f"got {type(image).__name__}"
    )


def load_image(image: ImageInput) -> Image.Image:
    """Open a path (fully decoded, file closed) or wrap an array; PIL images pass through."""
    check_image_input(image)
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, np.ndarray):
        array = image
        if array.ndim == 3 and array.shape[2] == 1:
            array = array[:, :, 0]
        if array.dtype != np.uint8:
            if np.issubdtype(array.dtype, np.floating):
                raise ImageLoadError(
                    "float numpy images are ambiguous; pass uint8 arrays in 0..255 "
                    "(or use score_tensors for float pixels in [0, 1])"
                )
            array = array.astype(np.uint8)
        return Image.fromarray(np.ascontiguousarray(array))
    path = os.fspath(image)
    try:
        with Image.open(path) as handle:
            handle.load()
            return handle
    except Image.DecompressionBombError as error:
        raise ImageLoadError(f"refusing to decode {path}: {error}") from error
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ImageLoadError(f"cannot read image file {path}: {error}") from error


def resized_size(width: int, height: int, size: int) -> Tuple[int, int]:
    """Shorter side to ``size``, longer side ``int(size * long / short)`` (torchvision rule)."""
    if width <= height:
        return size, int(size * height / width)
    return int(size * width / height), size


def center_crop_box(width: int, height: int, size: int) -> Tuple[int, int, int, int]:
    top = int(round((height - size) / 2.0))
    left = int(round((width - size) / 2.0))
    return left, top, left + size, top + size


class ImagePreprocessor:
    """Callable: PIL image (or path / array) -> normalised ``float32`` tensor ``[3, S, S]``."""

    def __init__(self, config: Optional[PreprocessConfig] = None) -> None:
        config = config or PreprocessConfig()
        for field, value, allowed in (
            ("interpolation", config.interpolation, INTERPOLATIONS),
            ("crop", config.crop, CROPS),
            ("convert_rgb", config.convert_rgb, RGB_ORDERS),
        ):
            if value not in allowed:
                raise ValueError(f"PreprocessConfig.{field} {value!r} is not one of {sorted(allowed)}")
        self.config = config
        self._filter = INTERPOLATIONS[config.interpolation]
        self._mean = torch.tensor(config.mean).view(3, 1, 1)
        self._std = torch.tensor(config.std).view(3, 1, 1)

    def resize_and_crop(self, image: Image.Image) -> Image.Image:
        size = self.config.image_size
        if image.width == 0 or image.height == 0:
            raise ImageLoadError(f"image has an empty side: {image.width}x{image.height}")
        target = resized_size(image.width, image.height, size)
        if target != image.size:
            image = image.resize(target, self._filter)
        return image.crop(center_crop_box(image.width, image.height, size))

    def __call__(self, image: ImageInput) -> torch.Tensor:
        return self.normalize(self.to_uint8(image))

    def to_uint8(self, image: ImageInput) -> torch.Tensor:
        """Decoded, resized, cropped RGB pixels ``[3, S, S]`` as ``uint8``, not yet normalised."""
        image = load_image(image)
        if self.config.convert_rgb == "first":
            image = image.convert("RGB")
        image = self.resize_and_crop(image).convert("RGB")
        array = np.asarray(image, dtype=np.uint8)
        return torch.from_numpy(array.copy()).permute(2, 0, 1)

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """``uint8`` pixels ``[..., 3, S, S]`` -> normalised ``float32``, on their device.

        Scoring sends ``uint8`` batches to the model's device and normalises there:
        a quarter of the bytes to move, and the same float32 operations in the same order.
        """
        mean = self._mean.to(pixels.device)
        std = self._std.to(pixels.device)
        return pixels.float().div_(255.0).sub_(mean).div_(std)

    def tensor_transform(self, pixels: torch.Tensor) -> torch.Tensor:
        """Differentiable chain for ``[N, 3, H, W]`` floats in [0, 1] (any H, W)."""
        if pixels.ndim != 4 or pixels.shape[1] != 3:
            raise ValueError(f"pixels must be [N, 3, H, W], got shape {tuple(pixels.shape)}")
        if not pixels.is_floating_point():
            raise TypeError(f"pixels must be a float tensor in [0, 1], got {pixels.dtype}")
        size = self.config.image_size
        height, width = pixels.shape[-2:]
        new_w, new_h = resized_size(width, height, size)
        if (new_h, new_w) != (height, width):
            pixels = F.interpolate(
                pixels, size=(new_h, new_w), mode=self.config.interpolation, align_corners=False,
                antialias=True,
            )
        left, top, right, bottom = center_crop_box(new_w, new_h, size)
        pixels = pixels[:, :, top:bottom, left:right]
        mean = self._mean.to(pixels.device, pixels.dtype)
        std = self._std.to(pixels.device, pixels.dtype)
        return (pixels - mean) / std

