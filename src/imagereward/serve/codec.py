"""Images on the wire: what clients send and how the server turns it back into pixels.

An image is a JSON object ``{"data": BASE64}`` holding the bytes of a PNG, JPEG or
WebP file, or ``{"data": BASE64, "shape": [H, W] | [H, W, C]}`` holding raw ``uint8``
pixels in row-major HWC order (C = 1, 3 or 4). A bare base64 string means file bytes.

Raw pixels are what a trainer has: encoding a 512x512 PNG costs tens of
milliseconds of CPU per image on the trainer, raw bytes cost a copy, decode on the
server is a copy, and the pixels scored are exactly the pixels generated (JPEG and
lossy WebP change them). Base64 in JSON adds a third to the size, which loopback
and data-centre links carry easily, and keeps the API plain JSON with an OpenAPI
schema. Files are for images that already exist as files: their bytes go as they are.

This module needs only numpy and Pillow, so the client can import it; it never
fetches URLs.
"""

from __future__ import annotations

import base64
import binascii
import io
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np
from PIL import Image, UnidentifiedImageError

FILE_FORMATS = ("PNG", "JPEG", "WEBP")
RAW_MODES = {1: "L", 3: "RGB", 4: "RGBA"}
DEFAULT_MAX_IMAGE_PIXELS = 40_000_000


class ImageDecodeError(ValueError):
    """The payload of one image cannot be turned into pixels; the message says why."""


@dataclass(frozen=True)
class WireImage:
    """One image as it travels: file bytes, or raw pixels with their shape."""

    data: bytes
    shape: Optional[Sequence[int]] = None

    def to_json(self) -> Any:
        encoded = base64.b64encode(self.data).decode("ascii")
        if self.shape is None:
            return {"data": encoded}
        return {"data": encoded, "shape": list(self.shape)}


# -- client side -------------------------------------------------------------------------
def raw_image(pixels: np.ndarray) -> WireImage:
    """``uint8`` pixels ``[H, W]`` or ``[H, W, C]`` (C = 1, 3, 4) as raw bytes."""
    if pixels.dtype != np.uint8:
        raise TypeError(f"raw pixels must be uint8, got {pixels.dtype}")
    check_raw_shape(pixels.shape)
    return WireImage(np.ascontiguousarray(pixels).tobytes(), tuple(int(s) for s in pixels.shape))


def file_image(data: bytes) -> WireImage:
    return WireImage(bytes(data))


def pil_image(image: Image.Image) -> WireImage:
    """A PIL image, so that the server sees what ``score`` would see in-process.

    L, RGB and RGBA images go raw (exact). Modes whose conversion to RGB happens
    after resizing in the scoring chain (palette, LA, 16-bit) go as lossless PNG,
    which keeps the mode; the rest (CMYK, YCbCr, float) are converted to RGB here.
    """
    if image.mode in ("L", "RGB", "RGBA"):
        return raw_image(np.asarray(image))
    if image.mode in ("P", "LA", "I", "I;16"):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return file_image(buffer.getvalue())
    return raw_image(np.asarray(image.convert("RGB")))


# -- server side -------------------------------------------------------------------------
def check_raw_shape(shape: Sequence[int]) -> None:
    if len(shape) not in (2, 3) or (len(shape) == 3 and shape[2] not in RAW_MODES):
        raise ImageDecodeError(f"raw shape must be [H, W] or [H, W, C] with C in (1, 3, 4), got {list(shape)}")
    if any(int(side) < 1 for side in shape):
        raise ImageDecodeError(f"raw shape has an empty side: {list(shape)}")


def decode_base64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as error:
        raise ImageDecodeError(f"data is not valid base64: {error}") from None


def decode_image(
    payload: Union[str, Mapping[str, Any]], max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
) -> Union[Image.Image, np.ndarray]:
    """A decoded image (raw pixels as an array, files as a loaded PIL image), checked.

    Refuses, with :class:`ImageDecodeError`: invalid base64, raw data whose length
    does not match its shape, files that are not PNG, JPEG or WebP, and images of
    more than ``max_pixels`` pixels (checked before decoding).
    """
    if isinstance(payload, str):
        data, shape = decode_base64(payload), None
    else:
        data, shape = decode_base64(payload["data"]), payload.get("shape")
    if shape is not None:
        return _raw_pixels(data, shape, max_pixels)
    return _file_pixels(data, max_pixels)


def _raw_pixels(data: bytes, shape: Sequence[int], max_pixels: int) -> np.ndarray:
    check_raw_shape(shape)
    height, width = int(shape[0]), int(shape[1])
    if height * width > max_pixels:
        raise ImageDecodeError(f"image of {width}x{height} pixels is over the limit of {max_pixels}")
    expected = int(np.prod([int(s) for s in shape]))
    if len(data) != expected:
        raise ImageDecodeError(f"raw data has {len(data)} bytes, shape {list(shape)} needs {expected}")
    return np.frombuffer(data, dtype=np.uint8).reshape([int(s) for s in shape])


def _file_pixels(data: bytes, max_pixels: int) -> Image.Image:
    if not data:
        raise ImageDecodeError("image data is empty")
    try:
        image = Image.open(io.BytesIO(data), formats=FILE_FORMATS)
    except UnidentifiedImageError:
        raise ImageDecodeError(
            "not a PNG, JPEG or WebP file (send one of those, or raw pixels with a shape)"
        ) from None
    if image.width * image.height > max_pixels:
        raise ImageDecodeError(
            f"image of {image.width}x{image.height} pixels is over the limit of {max_pixels}"
        )
    try:
        image.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ImageDecodeError(f"cannot decode {image.format} image: {error}") from None
    return image
