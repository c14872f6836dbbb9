"""The PIL chain against a direct computation of the documented steps (facts section 4.1)."""

import numpy as np
import pytest
import torch
from PIL import Image

from imagereward.errors import ImageLoadError
from imagereward.items import open_image as load_image
from imagereward.preprocess import ImagePreprocessor
from helpers import ASSETS

MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)


def documented_chain(image: Image.Image, size: int = 224) -> np.ndarray:
    """Resize shorter side (bicubic, long = int(size*long/short)), centre crop with
    Python round, THEN convert to RGB, scale to [0, 1], normalise."""
    w, h = image.size
    if w <= h:
        new = (size, int(size * h / w))
    else:
        new = (int(size * w / h), size)
    if new != (w, h):
        image = image.resize(new, Image.BICUBIC)
    top = int(round((new[1] - size) / 2.0))
    left = int(round((new[0] - size) / 2.0))
    image = image.crop((left, top, left + size, top + size)).convert("RGB")
    array = np.asarray(image, dtype=np.float32) / 255.0
    return ((array - MEAN) / STD).transpose(2, 0, 1)


def _noise(w, h, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


ODD = {
    "rgb_wide": lambda: Image.fromarray(_noise(801, 300)),
    "rgb_tall_odd": lambda: Image.fromarray(_noise(225, 1003)),
    "rgba": lambda: Image.fromarray(np.dstack([_noise(300, 250), _noise(300, 250, 1)[:, :, :1]]), "RGBA"),
    "gray": lambda: Image.fromarray(_noise(250, 333)).convert("L"),
    "palette": lambda: Image.fromarray(_noise(333, 250)).convert("P", palette=Image.ADAPTIVE),
    "cmyk": lambda: Image.fromarray(_noise(260, 260)).convert("CMYK"),
    "tiny": lambda: Image.fromarray(_noise(7, 5)),
    "exact": lambda: Image.fromarray(_noise(224, 224)),
    "one_pixel_wide": lambda: Image.fromarray(_noise(1, 40)),
}


@pytest.mark.parametrize("name", list(ODD))
def test_matches_documented_chain(name):
    image = ODD[name]()
    ours = ImagePreprocessor()(image)
    assert ours.shape == (3, 224, 224) and ours.dtype == torch.float32
    np.testing.assert_allclose(ours.numpy(), documented_chain(image), atol=1e-6)


def test_uint8_batches_normalise_to_the_same_pixels():
    """Scoring moves uint8 batches and normalises them on the model's device."""
    preprocess = ImagePreprocessor()
    images = [ODD[name]() for name in ("rgb_wide", "gray", "palette")]
    raw = torch.stack([preprocess.to_uint8(image) for image in images])
    assert raw.dtype == torch.uint8 and raw.shape == (3, 3, 224, 224)
    singles = torch.stack([preprocess(image) for image in images])
    assert torch.equal(preprocess.normalize(raw), singles)


@pytest.mark.parametrize("name", ["palette", "rgba"])
def test_rgb_conversion_happens_after_resize(name):
    """Converting first would give other pixels: palette images resize with nearest
    neighbour, RGBA with premultiplied alpha."""
    image = ODD[name]()
    ours = ImagePreprocessor()(image).numpy()
    convert_first = documented_chain(image.convert("RGB"))
    assert np.abs(ours - convert_first).max() > 0.05


@pytest.mark.parametrize("path", ASSETS, ids=lambda p: p.name)
def test_real_webp_assets(path):
    with Image.open(path) as image:
        expected = documented_chain(image)
    np.testing.assert_allclose(ImagePreprocessor()(str(path)).numpy(), expected, atol=1e-6)


def test_numpy_input_equals_pil():
    array = _noise(300, 200)
    pre = ImagePreprocessor()
    assert torch.equal(pre(array), pre(Image.fromarray(array)))


def test_float_numpy_refused():
    with pytest.raises(ValueError, match="uint8"):
        load_image(np.zeros((8, 8, 3), dtype=np.float32))


def test_tensor_chain_close_to_pil_chain():
    array = _noise(64, 48)
    smooth = np.asarray(Image.fromarray(array).resize((640, 480), Image.BILINEAR))
    pil = ImagePreprocessor()(smooth)
    pixels = torch.from_numpy(smooth.copy()).permute(2, 0, 1)[None].float() / 255
    tensor = ImagePreprocessor().tensor_transform(pixels)[0]
    assert tensor.shape == pil.shape
    assert (tensor - pil).abs().mean() < 0.02


def test_decompression_bomb_refused(tmp_path, monkeypatch):
    path = tmp_path / "bomb.png"
    Image.new("RGB", (200, 200)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # error above 2x this
    with pytest.raises(ImageLoadError, match="bomb.png"):
        load_image(str(path))


def test_corrupt_file_named(tmp_path):
    path = tmp_path / "broken.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png")
    with pytest.raises(ImageLoadError, match="broken.png"):
        load_image(str(path))


def test_decode_for_opens_an_item_once_for_every_chain(tmp_path, monkeypatch):
    """Several scorers' pixels from one file: opened once, each chain as decode() gives it."""
    from imagereward import items
    from imagereward.config import PreprocessConfig

    path = tmp_path / "image.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)).save(path)
    chains = {
        "blip": ImagePreprocessor(),
        "hf": ImagePreprocessor(PreprocessConfig(crop="center_floor", convert_rgb="first")),
        "hps": ImagePreprocessor(PreprocessConfig(crop="pad", convert_rgb="first")),
    }
    opened = []
    real_open = items.open_image
    monkeypatch.setattr(items, "open_image", lambda *a, **k: opened.append(1) or real_open(*a, **k))
    pixels = items.decode_for(chains, str(path))
    assert len(opened) == 1
    monkeypatch.setattr(items, "open_image", real_open)
    for key, chain in chains.items():
        assert torch.equal(pixels[key], items.decode(chain, str(path))), key
