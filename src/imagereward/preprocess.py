"""Image loading and the preprocessing chains of BLIP / OpenAI CLIP / PickScore / HPSv2, without torchvision.

The default PIL chain reproduces, step for step, the original package's transform:
resize the shorter side to 224 with bicubic filtering, centre-crop 224x224,
*then* convert to RGB, scale to [0, 1] and normalise. :class:`PreprocessConfig`
switches to Hugging Face's ``CLIPImageProcessor`` (RGB first, crop offset floored)
or to HPSv2's chain (RGB first, longer side to 224 on float pixels, black padding).
The tensor chain is the differentiable counterpart for pixels that are already tensors.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .config import PreprocessConfig
from .errors import ImageLoadError
from .items import ImageInput, open_image

# Supported values of the PreprocessConfig fields that name a step of the chain.
INTERPOLATIONS = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}
CROPS = ("center", "center_floor", "pad", "native")
# Qwen2-VL's limit on the ratio of the longer to the shorter side.
MAX_ASPECT_RATIO = 200
RGB_ORDERS = ("after_crop", "first")


def resized_size(width: int, height: int, size: int) -> Tuple[int, int]:
    """Shorter side to ``size``, longer side ``int(size * long / short)`` (torchvision rule)."""
    if width <= height:
        return size, int(size * height / width)
    return int(size * width / height), size


def center_crop_box(
    width: int, height: int, size: int, rounding: str = "round"
) -> Tuple[int, int, int, int]:
    """``(left, top, right, bottom)``: offsets rounded as torchvision (``"round"``) or
    floored as Hugging Face's image processors (``"floor"``)."""
    if rounding == "floor":
        top, left = (height - size) // 2, (width - size) // 2
    else:
        top, left = int(round((height - size) / 2.0)), int(round((width - size) / 2.0))
    return left, top, left + size, top + size


def padded_size(width: int, height: int, size: int) -> Tuple[int, int]:
    """Longer side to ``size``, each side ``round(side * size / longer)`` (HPSv2's rule)."""
    scale = size / float(max(height, width))
    return round(width * scale), round(height * scale)


def native_size(width: int, height: int, factor: int, min_pixels: int, max_pixels: int) -> Tuple[int, int]:
    """``(width, height)`` for Qwen2-VL: the aspect ratio kept, each side a multiple of
    ``factor``, the area within ``[min_pixels, max_pixels]`` (its ``smart_resize`` rule)."""
    if max(width, height) / min(width, height) > MAX_ASPECT_RATIO:
        raise ImageLoadError(
            f"image of {width}x{height} pixels: the longer side is over {MAX_ASPECT_RATIO} "
            "times the shorter, which this scorer's chain refuses"
        )
    new_h = max(factor, round(height / factor) * factor)
    new_w = max(factor, round(width / factor) * factor)
    if new_h * new_w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        new_h = math.floor(height / beta / factor) * factor
        new_w = math.floor(width / beta / factor) * factor
    elif new_h * new_w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        new_h = math.ceil(height * beta / factor) * factor
        new_w = math.ceil(width * beta / factor) * factor
    return new_w, new_h


def pad_box(width: int, height: int, size: int) -> Tuple[int, int, int, int]:
    """``(left, top, right, bottom)`` padding that centres a ``width x height`` image in
    a ``size`` square (the odd pixel goes right / bottom)."""
    pad_w, pad_h = size - width, size - height
    return pad_w // 2, pad_h // 2, pad_w - pad_w // 2, pad_h - pad_h // 2


class ImagePreprocessor:
    """Callable: PIL image (or path / array) -> normalised ``float32`` tensor ``[3, S, S]``.

    Scoring calls :meth:`to_pixels` in decoding threads and :meth:`normalize` on the
    model's device; ``__call__`` does both.
    """

    def __init__(self, config: Optional[PreprocessConfig] = None) -> None:
        config = config or PreprocessConfig()
        for field, value, allowed in (
            ("interpolation", config.interpolation, INTERPOLATIONS),
            ("crop", config.crop, CROPS),
            ("convert_rgb", config.convert_rgb, RGB_ORDERS),
        ):
            if value not in allowed:
                raise ValueError(f"PreprocessConfig.{field} {value!r} is not one of {sorted(allowed)}")
        if config.crop == "native" and not (0 < config.min_pixels <= config.max_pixels and config.size_factor > 0):
            raise ValueError("PreprocessConfig with crop='native' needs 0 < min_pixels <= max_pixels "
                             "and a positive size_factor")
        self.config = config
        self._filter = INTERPOLATIONS[config.interpolation]
        self._rounding = "floor" if config.crop == "center_floor" else "round"
        self._mean = torch.tensor(config.mean).view(3, 1, 1)
        self._std = torch.tensor(config.std).view(3, 1, 1)

    @property
    def fixed_size(self) -> Optional[int]:
        """The side ``S`` of every image's pixels ``[3, S, S]``; ``None`` for the native chain,
        whose pixels keep each image's aspect ratio (batches of them are padded with NaN,
        see :func:`imagereward.items.collate_pixels`)."""
        return None if self.config.crop == "native" else self.config.image_size

    def resize_and_crop(self, image: Image.Image) -> Image.Image:
        size = self.config.image_size
        _check_sides(image)
        target = resized_size(image.width, image.height, size)
        if target != image.size:
            image = image.resize(target, self._filter)
        return image.crop(center_crop_box(image.width, image.height, size, self._rounding))

    def __call__(self, image: ImageInput) -> torch.Tensor:
        return self.normalize(self.to_pixels(image))

    def to_pixels(self, image: ImageInput) -> torch.Tensor:
        """Decoded, resized, cropped or padded RGB pixels ``[3, S, S]``, not yet normalised:
        ``uint8`` for the cropping chains, ``float32`` in [0, 1]-ish for ``crop="pad"``
        (bicubic filtering of floats overshoots slightly, as in the original).

        A PIL image is taken as it is (the item pipeline has opened it within the caller's
        limits); paths, bytes and arrays are opened here with the default limits.
        """
        if not isinstance(image, Image.Image):
            image = open_image(image)
        if self.config.crop == "pad":
            return self.to_padded(image)
        if self.config.crop == "native":
            return self.to_native(image)
        return self.to_uint8(image)

    def to_uint8(self, image: Image.Image) -> torch.Tensor:
        """Resized, cropped RGB pixels ``[3, S, S]`` of a PIL image as ``uint8``, not yet normalised."""
        if self.config.convert_rgb == "first":
            image = image.convert("RGB")
        return _channels_first(self.resize_and_crop(image).convert("RGB"))

    def to_padded(self, image: Image.Image) -> torch.Tensor:
        """HPSv2's chain for a PIL image: RGB, to float in [0, 1], longer side to ``S`` (torch
        bicubic, antialiased), zero padding to ``S x S``; ``float32 [3, S, S]``."""
        _check_sides(image)
        pixels = _channels_first(image.convert("RGB")).float().div(255)
        return self._resize_and_pad(pixels[None])[0]

    def native_size(self, width: int, height: int) -> Tuple[int, int]:
        config = self.config
        return native_size(width, height, config.size_factor, config.min_pixels, config.max_pixels)

    def to_native(self, image: Image.Image) -> torch.Tensor:
        """Qwen2-VL's chain for a PIL image (as HPSv3 feeds it): RGB, resized with PIL's
        ``interpolation`` to :func:`native_size`, as ``float32 [3, H, W]`` in [0, 1]."""
        _check_sides(image)
        image = image.convert("RGB")
        target = self.native_size(image.width, image.height)
        if target != image.size:
            image = image.resize(target, self._filter)
        return _channels_first(image).float().div_(255.0)

    def _resize_native_tensor(self, pixels: torch.Tensor) -> torch.Tensor:
        height, width = pixels.shape[-2:]
        new_w, new_h = self.native_size(width, height)
        if (new_h, new_w) == (height, width):
            return pixels
        return F.interpolate(pixels, size=(new_h, new_w), mode=self.config.interpolation,
                             align_corners=False, antialias=True)

    def _resize_and_pad(self, pixels: torch.Tensor) -> torch.Tensor:
        size = self.config.image_size
        height, width = pixels.shape[-2:]
        if max(height, width) != size:
            new_w, new_h = padded_size(width, height, size)
            pixels = F.interpolate(
                pixels, size=(new_h, new_w), mode=self.config.interpolation, align_corners=False,
                antialias=True,
            )
        height, width = pixels.shape[-2:]
        if (height, width) != (size, size):
            left, top, right, bottom = pad_box(width, height, size)
            pixels = F.pad(pixels, (left, right, top, bottom), value=0.0)
        return pixels

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels from :meth:`to_pixels` ``[..., 3, S, S]`` -> normalised ``float32``, on their device.

        ``uint8`` pixels are divided by 255 first; NaN padding (native chains) stays NaN. Scoring sends the batches to the
        model's device and normalises there: fewer bytes to move, and the same float32
        operations in the same order.
        """
        mean = self._mean.to(pixels.device)
        std = self._std.to(pixels.device)
        if pixels.dtype == torch.uint8:
            return pixels.float().div_(255.0).sub_(mean).div_(std)
        return (pixels.float() - mean).div_(std)

    def tensor_transform(self, pixels: torch.Tensor) -> torch.Tensor:
        """Differentiable chain for ``[N, 3, H, W]`` floats in [0, 1] (any H, W)."""
        if pixels.ndim != 4 or pixels.shape[1] != 3:
            raise ValueError(f"pixels must be [N, 3, H, W], got shape {tuple(pixels.shape)}")
        if not pixels.is_floating_point():
            raise TypeError(f"pixels must be a float tensor in [0, 1], got {pixels.dtype}")
        if self.config.crop == "pad":
            pixels = self._resize_and_pad(pixels)
        elif self.config.crop == "native":
            pixels = self._resize_native_tensor(pixels)
        else:
            pixels = self._resize_and_crop_tensor(pixels)
        mean = self._mean.to(pixels.device, pixels.dtype)
        std = self._std.to(pixels.device, pixels.dtype)
        return (pixels - mean) / std

    def _resize_and_crop_tensor(self, pixels: torch.Tensor) -> torch.Tensor:
        size = self.config.image_size
        height, width = pixels.shape[-2:]
        new_w, new_h = resized_size(width, height, size)
        if (new_h, new_w) != (height, width):
            pixels = F.interpolate(
                pixels, size=(new_h, new_w), mode=self.config.interpolation, align_corners=False,
                antialias=True,
            )
        left, top, right, bottom = center_crop_box(new_w, new_h, size, self._rounding)
        return pixels[:, :, top:bottom, left:right]


def _channels_first(image: Image.Image) -> torch.Tensor:
    """An RGB PIL image as ``uint8 [3, H, W]`` (its own memory)."""
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)


def _check_sides(image: Image.Image) -> None:
    if image.width == 0 or image.height == 0:
        raise ImageLoadError(f"image has an empty side: {image.width}x{image.height}")
