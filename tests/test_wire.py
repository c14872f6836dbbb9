"""The wire form of images: what the client sends and the server reads (no server needed).

The server decodes what it reads through the same item pipeline as in-process scoring,
within the same limits, so the round trip here is ``read_payload`` then ``open_image``.
"""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

from imagereward.client import encode_image, encode_images
from imagereward.errors import ImageLoadError, ImageNotFoundError, ImageTypeError, InputError
from imagereward.items import ImageLimits, open_image
from imagereward.wire import decode_msgpack, encode_body, read_payload


def decode_image(payload, max_pixels=None):
    limits = ImageLimits() if max_pixels is None else ImageLimits(max_pixels)
    item = read_payload(payload)
    return item if isinstance(item, np.ndarray) and max_pixels is None else open_image(item, limits)


def _roundtrip(image, wire="json"):
    """An image through a whole request body in ``wire``, as the server reads it back."""
    content, _ = encode_body({"images": [encode_image(image)]}, wire)
    body = json.loads(content) if wire == "json" else decode_msgpack(content)
    return decode_image(body["images"][0])


@pytest.fixture(params=["json", "msgpack"])
def wire(request):
    return request.param


def test_raw_pixels_roundtrip_exactly(wire):
    pixels = np.random.default_rng(0).integers(0, 256, (7, 5, 3), dtype=np.uint8)
    np.testing.assert_array_equal(_roundtrip(pixels, wire), pixels)
    np.testing.assert_array_equal(_roundtrip(pixels[:, :, 0], wire), pixels[:, :, 0])
    np.testing.assert_array_equal(np.asarray(_roundtrip(Image.fromarray(pixels), wire)), pixels)


def test_float_tensors_become_uint8_like_diffusers():
    torch = pytest.importorskip("torch")
    floats = torch.rand(2, 3, 6, 4)
    payloads = encode_images(floats)  # a [N, 3, H, W] batch
    assert len(payloads) == 2 and payloads[0].shape == (6, 4, 3)
    expected = np.round(floats[1].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    np.testing.assert_array_equal(decode_image(payloads[1].to_json()), expected)
    np.testing.assert_array_equal(decode_image(payloads[1].to_msgpack()), expected)


def test_client_refuses_what_it_cannot_send_naming_the_item(tmp_path):
    with pytest.raises(InputError, match=r"images\[1\].*\[0, 1\]"):
        encode_images([np.zeros((4, 4, 3), np.float32), np.full((4, 4, 3), 2.0, np.float32)])
    with pytest.raises(ImageTypeError, match=r"images\[0\]"):
        encode_images([b"bytes"])
    with pytest.raises(ImageNotFoundError):
        encode_images([str(tmp_path / "missing.png")])


def test_files_keep_their_bytes_in_every_format(tmp_path, wire):
    pixels = np.random.default_rng(1).integers(0, 256, (9, 8, 3), dtype=np.uint8)
    for name in ("a.png", "a.bmp", "a.gif", "a.tiff"):
        Image.fromarray(pixels).save(tmp_path / name)
        assert encode_image(str(tmp_path / name)).data == (tmp_path / name).read_bytes()
    np.testing.assert_array_equal(np.asarray(_roundtrip(str(tmp_path / "a.bmp"), wire)), pixels)


def test_pil_images_in_other_modes_travel_in_their_own_mode(wire):
    rgb = np.random.default_rng(2).integers(0, 256, (9, 8, 3), dtype=np.uint8)
    for mode in ("CMYK", "P", "LA", "YCbCr"):
        image = Image.fromarray(rgb).convert(mode)
        back = _roundtrip(image, wire)
        assert back.mode == image.mode
        np.testing.assert_array_equal(np.asarray(back), np.asarray(image))


@pytest.mark.parametrize(
    "payload, reason",
    [
        ("###", "base64"),
        (base64.b64encode(b"BM not really").decode(), "cannot read image file"),
        ({"data": base64.b64encode(b"\0" * 11).decode(), "shape": [2, 2, 3]}, "needs 12"),
        ({"data": "", "shape": [0, 2, 3]}, "empty side"),
        ({"data": "", "shape": [2, 2, 2]}, r"C in \(1, 3, 4\)"),
    ],
)
def test_server_refuses_bad_payloads(payload, reason):
    with pytest.raises(ImageLoadError, match=reason):
        decode_image(payload)


def test_msgpack_bodies_carry_the_same_request_in_a_quarter_fewer_bytes():
    from imagereward.client import rewards_call

    rng = np.random.default_rng(3)
    images = [rng.integers(0, 256, (64, 48, 3), dtype=np.uint8), rng.integers(0, 256, (5, 7), dtype=np.uint8)]
    call = rewards_call(["a cat", "ein Hund \u00fc"], images, weights={"CLIP": 0.5})
    as_json, json_type = encode_body(call.body, "json")
    as_msgpack, msgpack_type = encode_body(call.body, "msgpack")
    assert (json_type, msgpack_type) == ("application/json", "application/msgpack")
    from_json, from_msgpack = json.loads(as_json), decode_msgpack(as_msgpack)
    for body in (from_json, from_msgpack):
        assert body["prompts"] == ["a cat", "ein Hund \u00fc"] and body["weights"] == {"CLIP": 0.5}
        for payload, pixels in zip(body["images"], images):
            np.testing.assert_array_equal(read_payload(payload), pixels)
    assert isinstance(from_msgpack["images"][0]["data"], bytes)  # no base64
    assert len(as_msgpack) < 0.76 * len(as_json)
    with pytest.raises(ValueError, match="wire must be one of"):
        encode_body(call.body, "xml")


@pytest.mark.parametrize(
    "body, reason",
    [
        (b"\xc1", "begins no msgpack value"),
        (b"\x92\x01", "incomplete input"),
        (b"\x01\x02", "extra data"),
        (b"\x91" * 5000 + b"\x01", "nested too deeply"),
        (b"\x81\x01\x02", "map key"),
        (b"\xdd\xff\xff\xff\xff", "exceeds max_array_len"),  # 4 billion items announced in 5 bytes
    ],
)
def test_bad_msgpack_is_named(body, reason):
    with pytest.raises(ValueError, match=f"not valid msgpack.*{reason}"):
        decode_msgpack(body)


def test_payload_bytes_need_no_base64():
    png = io.BytesIO()
    Image.new("RGB", (3, 2), (9, 8, 7)).save(png, format="PNG")
    assert read_payload(png.getvalue()) == png.getvalue()
    assert read_payload({"data": png.getvalue()}) == png.getvalue()
    np.testing.assert_array_equal(read_payload({"data": bytes(range(6)), "shape": [2, 3]}),
                                  np.arange(6, dtype=np.uint8).reshape(2, 3))
    with pytest.raises(ImageLoadError, match="needs 6"):
        read_payload({"data": bytes(5), "shape": [2, 3]})
    with pytest.raises(ImageLoadError, match="empty"):
        read_payload(b"")


def test_pixel_limit_is_checked_before_decoding():
    buffer = io.BytesIO()
    Image.new("RGB", (300, 200)).save(buffer, format="PNG")
    encoded = base64.b64encode(buffer.getvalue()).decode()
    with pytest.raises(ImageLoadError, match="over the limit"):
        decode_image(encoded, max_pixels=300 * 200 - 1)
    assert decode_image(encoded, max_pixels=300 * 200).size == (300, 200)
    raw = {"data": base64.b64encode(b"\0" * 12).decode(), "shape": [2, 2, 3]}
    with pytest.raises(ImageLoadError, match="over the limit"):
        decode_image(raw, max_pixels=3)


def test_client_takes_one_prompt_for_many_images_and_refuses_a_bare_string_list():
    from imagereward.client import matrix_call, rewards_call, score_call
    from imagereward.errors import PromptError

    image = np.zeros((4, 4, 3), np.uint8)  # the request bodies are checked; nothing is sent
    assert score_call("ab", [image, image]).body["prompts"] == ["ab", "ab"]  # not "a" and "b"
    assert score_call("a cat", [image]).body["prompts"] == ["a cat"]
    assert rewards_call("ab", [image, image], weights={"CLIP": 1.0}).body["prompts"] == ["ab", "ab"]
    with pytest.raises(PromptError, match="list or tuple of str"):
        matrix_call("ab", [image, image])
    with pytest.raises(PromptError, match=r"prompts\[1\]"):
        score_call(["a", 3], [image, image])
