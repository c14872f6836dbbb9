"""Images on the wire: what clients send and what the server reads back, before decoding.

A request body is JSON or msgpack (``Content-Type: application/msgpack``), with the
same fields either way. An image is an object ``{"data": DATA}`` holding the bytes of
an image file (PNG, JPEG, WebP, ... any format the server accepts), or ``{"data":
DATA, "shape": [H, W] | [H, W, C]}`` holding raw ``uint8`` pixels in row-major HWC
order (C = 1, 3 or 4). ``DATA`` is a base64 string in JSON and binary (msgpack's
``bin``) in msgpack, which spares both sides the base64 and JSON work on every byte of
every image and sends a quarter fewer bytes. A bare ``DATA`` means file bytes.

Raw pixels are what a trainer has: encoding a 512x512 PNG costs tens of
milliseconds of CPU per image on the trainer, raw bytes cost a copy, and the
pixels scored are exactly the pixels generated (JPEG and lossy WebP change them).
Files are for images that already exist as files: their bytes go as they are.
Either way the server decodes through the same item pipeline as in-process
scoring (:mod:`imagereward.items`), so both see the same pixels.

This module is shared by the client and the server; it needs only numpy and
Pillow, and never fetches URLs.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image

from .errors import ImageLoadError, ImageTypeError, InputError

RAW_MODES = {1: "L", 3: "RGB", 4: "RGBA"}
# Modes whose conversion to RGB the scoring chains do after resizing: sent as lossless
# files in their own mode (PNG where it holds the mode, else TIFF), so the server resizes
# the same pixels in the same mode as in-process scoring.
PNG_MODES = ("P", "LA", "I", "I;16")

# Request body formats: the name a client is given, and the media type it sends.
WIRE_FORMATS = {"msgpack": "application/msgpack", "json": "application/json"}
# Media types the server reads as msgpack (the registered one, and two in common use).
MSGPACK_TYPES = ("application/msgpack", "application/x-msgpack", "application/vnd.msgpack")


@dataclass(frozen=True)
class WireImage:
    """One image as it travels: file bytes, or raw pixels with their shape."""

    data: bytes
    shape: Optional[Sequence[int]] = None

    def to_json(self) -> Any:
        return self._object(base64.b64encode(self.data).decode("ascii"))

    def to_msgpack(self) -> Any:
        return self._object(self.data)

    def _object(self, data: Union[str, bytes]) -> Dict[str, Any]:
        if self.shape is None:
            return {"data": data}
        return {"data": data, "shape": list(self.shape)}


def msgpack_module() -> Any:
    """The ``msgpack`` package, or an error that says how to get it."""
    try:
        import msgpack
    except ImportError:
        raise ImportError(
            "request bodies in msgpack need the msgpack package: pip install 'imagereward[client]' "
            "(or send JSON: wire='json')"
        ) from None
    return msgpack


def check_wire(wire: str) -> None:
    """``ValueError`` unless ``wire`` names a body format of :data:`WIRE_FORMATS`."""
    if wire not in WIRE_FORMATS:
        raise ValueError(f"wire must be one of {sorted(WIRE_FORMATS)}, got {wire!r}")


def encode_body(body: Mapping[str, Any], wire: str) -> Tuple[bytes, str]:
    """A request body whose ``images`` are :class:`WireImage` objects, as bytes in ``wire``
    (``"msgpack"`` or ``"json"``), and its media type."""
    check_wire(wire)
    plain = dict(body)
    images = plain.get("images")
    if wire == "json":
        if images is not None:
            plain["images"] = [image.to_json() for image in images]
        data = json.dumps(plain, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")
    else:
        if images is not None:
            plain["images"] = [image.to_msgpack() for image in images]
        data = msgpack_module().packb(plain, use_bin_type=True)
    return data, WIRE_FORMATS[wire]


# -- client side -------------------------------------------------------------------------
def uint8_pixels(array: np.ndarray, channels_first: bool = False) -> np.ndarray:
    """``uint8`` pixels ``[H, W(, C)]`` of a ``uint8`` array, or of a float array in [0, 1]
    (rounded: ``round(x * 255)``); ``channels_first`` arrays ``[C, H, W]`` are transposed."""
    if np.issubdtype(array.dtype, np.floating):
        if array.size and (not np.isfinite(array).all() or array.min() < 0.0 or array.max() > 1.0):
            raise InputError("float pixels must lie in [0, 1]")
        array = np.round(array.astype(np.float32) * 255.0).astype(np.uint8)
    elif array.dtype != np.uint8:
        raise ImageTypeError(f"pixels must be uint8 or float in [0, 1], got {array.dtype}")
    if channels_first and array.ndim == 3:
        array = array.transpose(1, 2, 0)
    return array


def raw_image(pixels: np.ndarray) -> WireImage:
    """``uint8`` pixels ``[H, W]`` or ``[H, W, C]`` (C = 1, 3, 4) as raw bytes."""
    if pixels.dtype != np.uint8:
        raise ImageLoadError(f"raw pixels must be uint8, got {pixels.dtype}")
    check_raw_shape(pixels.shape)
    return WireImage(np.ascontiguousarray(pixels).tobytes(), tuple(int(s) for s in pixels.shape))


def file_image(data: bytes) -> WireImage:
    return WireImage(bytes(data))


def pil_image(image: Image.Image) -> WireImage:
    """A PIL image, so that the server sees what ``score`` would see in-process.

    L, RGB and RGBA images go raw (exact); every other mode goes as a lossless file in
    its own mode (PNG, or TIFF for CMYK, YCbCr, float ...), since the scoring chains
    resize before they convert to RGB.
    """
    if image.mode in RAW_MODES.values():
        return raw_image(np.asarray(image))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG" if image.mode in PNG_MODES else "TIFF")
    return file_image(buffer.getvalue())


# -- server side -------------------------------------------------------------------------
def check_raw_shape(shape: Sequence[int]) -> None:
    if len(shape) not in (2, 3) or (len(shape) == 3 and shape[2] not in RAW_MODES):
        raise ImageLoadError(f"raw shape must be [H, W] or [H, W, C] with C in (1, 3, 4), got {list(shape)}")
    if any(int(side) < 1 for side in shape):
        raise ImageLoadError(f"raw shape has an empty side: {list(shape)}")


def decode_base64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as error:
        raise ImageLoadError(f"data is not valid base64: {error}") from None


def decode_msgpack(body: bytes) -> Any:
    """A msgpack body as Python objects (``bin`` as bytes, ``str`` as str); ``ValueError``
    naming what is wrong when it is not one well-formed msgpack object."""
    msgpack = msgpack_module()
    try:
        return msgpack.unpackb(body, raw=False, strict_map_key=True)
    except msgpack.StackError:
        raise ValueError("body is not valid msgpack: nested too deeply") from None
    except msgpack.FormatError:
        raise ValueError("body is not valid msgpack: a byte that begins no msgpack value") from None
    except (msgpack.UnpackException, ValueError, TypeError) as error:
        raise ValueError(f"body is not valid msgpack: {error}") from None


def _data(data: Union[str, bytes]) -> bytes:
    return data if isinstance(data, bytes) else decode_base64(data)


def read_payload(payload: Union[str, bytes, Mapping[str, Any]]) -> Union[bytes, np.ndarray]:
    """The item a payload carries: file bytes, or raw pixels as a ``uint8`` array.

    ``data`` is base64 text (JSON bodies) or bytes (msgpack bodies). Refuses, with
    :class:`~imagereward.errors.ImageLoadError`: invalid base64, empty data, a bad raw
    shape, and raw data whose length does not match its shape. The item pipeline then
    decodes it within the server's limits.
    """
    if isinstance(payload, (str, bytes)):
        data, shape = _data(payload), None
    else:
        data, shape = _data(payload["data"]), payload.get("shape")
    if shape is None:
        if not data:
            raise ImageLoadError("image data is empty")
        return data
    check_raw_shape(shape)
    expected = int(np.prod([int(s) for s in shape]))
    if len(data) != expected:
        raise ImageLoadError(f"raw data has {len(data)} bytes, shape {list(shape)} needs {expected}")
    return np.frombuffer(data, dtype=np.uint8).reshape([int(s) for s in shape])
