"""ReFL inputs: prompt files, (image, caption) pairs, reward specs and options; no training."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from helpers import REFERENCE_DATA
from imagereward.errors import InputError
from imagereward.refl.config import ReFLConfig
from imagereward.refl.data import IndexStream, batch_of_pairs, read_pairs, read_prompts
from imagereward.refl.reward import RewardSpec, parse_reward_specs


def test_prompts_from_the_original_refl_data_json():
    prompts = read_prompts(str(REFERENCE_DATA / "refl_data.json"))
    items = json.loads((REFERENCE_DATA / "refl_data.json").read_text())
    assert len(prompts) == len(items) == 10000 and prompts[0] == items[0]["text"]


def test_prompts_from_jsonl_text_and_plain_json(tmp_path):
    (tmp_path / "p.jsonl").write_text('{"prompt": "a cat"}\n\n{"caption": "a dog"}\n')
    (tmp_path / "p.txt").write_text("a cat\n\n  a dog  \n")
    (tmp_path / "p.json").write_text('["a cat", {"text": "a dog"}]')
    for name in ("p.jsonl", "p.txt", "p.json"):
        assert read_prompts(str(tmp_path / name)) == ["a cat", "a dog"]
    (tmp_path / "bad.jsonl").write_text('{"prompt": "a"}\n{"nothing": 1}\n')
    with pytest.raises(InputError, match="line 2"):
        read_prompts(str(tmp_path / "bad.jsonl"))
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(InputError, match="no prompts"):
        read_prompts(str(tmp_path / "empty.txt"))
    with pytest.raises(FileNotFoundError):
        read_prompts(str(tmp_path / "missing.json"))


def _image(path, color):
    Image.fromarray(np.full((20, 30, 3), color, dtype=np.uint8)).save(path)


def test_pairs_from_a_folder_jsonl_and_parquet(tmp_path):
    folder = tmp_path / "folder"
    folder.mkdir()
    _image(folder / "a.png", 10)
    (folder / "a.txt").write_text("a dark image\n")
    _image(folder / "b.jpg", 250)
    (folder / "b.txt").write_text("a light image")
    pairs = read_pairs(str(folder))
    assert pairs.captions == ["a dark image", "a light image"]
    pixels, captions = batch_of_pairs(pairs, [1, 0], 16)
    assert pixels.shape == (2, 3, 16, 16) and captions == ["a light image", "a dark image"]
    assert pixels[0].mean() > 0.9 and pixels[1].mean() < -0.9  # [-1, 1]

    (tmp_path / "pairs.jsonl").write_text(json.dumps({"image": "folder/a.png", "text": "x"}) + "\n")
    assert read_pairs(str(tmp_path / "pairs.jsonl")).captions == ["x"]
    (tmp_path / "missing.jsonl").write_text(json.dumps({"image": "folder/zzz.png", "text": "x"}) + "\n")
    with pytest.raises(FileNotFoundError, match="zzz.png"):
        read_pairs(str(tmp_path / "missing.jsonl"))

    pyarrow = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    table = pyarrow.table({"image": [{"bytes": (folder / "a.png").read_bytes(), "path": None}],
                           "caption": ["from parquet"]})
    pq.write_table(table, tmp_path / "pairs.parquet")
    pairs = read_pairs(str(tmp_path / "pairs.parquet"), caption_key="caption")
    assert pairs.captions == ["from parquet"] and pairs.load(0).size == (30, 20)
    with pytest.raises(InputError, match="'text'"):
        read_pairs(str(tmp_path / "pairs.parquet"))

    _image(folder / "c.png", 100)  # no caption
    with pytest.raises(InputError, match="c.png"):
        read_pairs(str(folder))


def test_index_stream_is_a_function_of_the_seed_and_the_batch_number():
    a, b = IndexStream(5, seed=3), IndexStream(5, seed=3)
    first_epoch = sorted(i for k in range(5) for i in a.batch(k, 1))
    assert first_epoch == [0, 1, 2, 3, 4]
    assert [a.batch(k, 2) for k in (7, 0, 3)] == [b.batch(k, 2) for k in (7, 0, 3)]
    assert IndexStream(50, seed=4).batch(0, 10) != IndexStream(50, seed=3).batch(0, 10)


def test_reward_specs():
    assert parse_reward_specs("ImageReward-v1.0") == [RewardSpec("ImageReward-v1.0")]
    assert parse_reward_specs("ImageReward-v1.0=1, Aesthetic:/w/sac.pth=0.5") == [
        RewardSpec("ImageReward-v1.0", "", 1.0), RewardSpec("Aesthetic", "/w/sac.pth", 0.5)]
    assert parse_reward_specs("C:/models/ImageReward.pt") == [RewardSpec("C:/models/ImageReward.pt")]
    with pytest.raises(ValueError, match="must be a number"):
        parse_reward_specs("CLIP=high")


def test_options_are_checked():
    with pytest.raises(ValueError, match="prompts"):
        ReFLConfig().validate()
    with pytest.raises(ValueError, match="pretrain_data"):
        ReFLConfig(prompts="p.json").validate()
    ReFLConfig(prompts="p.json", pretrain_loss=False).validate()
    with pytest.raises(ValueError, match="stop_steps"):
        ReFLConfig(prompts="p.json", pretrain_loss=False, num_inference_steps=5, stop_steps=6).validate()
    with pytest.raises(ValueError, match="unknown ReFL option 'lr-rate'"):
        ReFLConfig().updated({"lr-rate": 1})


def test_scoring_and_the_refl_package_import_no_diffusion_libraries():
    code = ("import sys, imagereward, imagereward.refl, imagereward.refl.config, imagereward.cli; "
            "imagereward.cli.build_parser('refl'); "
            "bad = [m for m in ('diffusers', 'transformers', 'accelerate', 'peft') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
