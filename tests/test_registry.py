"""The registry and the one factory: every scorer by name, scratch entries, configs never mutated."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest
import torch

import imagereward
from imagereward import registry
from imagereward.config import PreprocessConfig
from imagereward.errors import UnknownModelError
from imagereward.factory import load
from imagereward.scoring.base import Scorer

from helpers import ASSETS, random_state_dict, tiny_config

PATHS = [str(p) for p in ASSETS]


@pytest.fixture
def scratch_entry(tmp_path):
    """A registered tiny ImageReward whose weights sit in a 'download root' under a
    remapped key layout ('reward_head.' instead of 'mlp.'), undone by the entry's own builder."""
    config = tiny_config()
    state = {_renamed(k, "mlp.", "reward_head."): v for k, v in random_state_dict(config, seed=3).items()}
    torch.save(state, tmp_path / "scratch.pt")
    entry = registry.register(
        dataclasses.replace(
            registry.get_entry("ImageReward-v1.0"),
            name="Scratch-Tiny",
            files={"weights": registry.WeightsFile("scratch.pt", "scratch weights", repo_id="nobody/scratch")},
            config=config,
            preprocess=PreprocessConfig(image_size=config.vision.image_size, interpolation="bilinear"),
            builder="test_registry:build_renamed",
            aliases=("scratch",),
            original_api="load_score",
            published_accuracy=None,
        )
    )
    yield entry, tmp_path, state
    registry.unregister(entry.name)


def _renamed(key: str, old: str, new: str) -> str:
    return new + key[len(old):] if key.startswith(old) else key


def build_renamed(request):
    """A scratch scorer's builder: ImageReward's network, its checkpoint's keys remapped first."""
    from imagereward.scoring.image_reward import ImageReward

    config = request.config_of(type(request.entry.config))
    with torch.device("meta"):
        network = ImageReward(config)
    state = {_renamed(k, "reward_head.", "mlp."): v for k, v in request.read_weights().items()}
    request.load_into(network, state)
    return request.parts(network, config.max_text_length, config.vision.image_size)


def test_scratch_entry_loads_through_load_by_name(scratch_entry):
    entry, root, state = scratch_entry
    assert "Scratch-Tiny" in imagereward.available_models() and "Scratch-Tiny" in imagereward.available_scores()
    model = load("SCRATCH", device="cpu", download_root=str(root))  # alias, any case
    assert model.config == entry.config  # the entry's config is used, not the full-size default
    assert model.preprocess.config.interpolation == "bilinear"
    assert torch.equal(model.mlp.layers[0].weight, state["reward_head.layers.0.weight"])
    assert isinstance(model, Scorer)
    same = imagereward.load_score("scratch-tiny", device="cpu", download_root=str(root))
    assert same.score("a cat", PATHS[0]) == pytest.approx(model.score("a cat", PATHS[0]), abs=1e-6)


def test_scratch_entry_without_its_remap_fails_strictly(scratch_entry):
    entry, root, _ = scratch_entry
    plain = dataclasses.replace(entry, builder=registry.get_entry("ImageReward-v1.0").builder)
    registry._REGISTRY[entry.name] = plain
    with pytest.raises(imagereward.CheckpointError, match="unexpected keys: reward_head"):
        load(entry.name, device="cpu", download_root=str(root))


def test_names_are_case_insensitive_and_unknown_names_say_what_exists():
    assert registry.get_entry("imagereward-V1.0").name == "ImageReward-v1.0"
    assert registry.get_entry("clip").name == "CLIP"
    with pytest.raises(UnknownModelError, match="available models = .*Aesthetic"):
        registry.get_entry("nope")
    with pytest.raises(ValueError, match="already registered"):
        registry.register(registry.get_entry("CLIP"))


def test_missing_path_is_a_file_not_found_error(tmp_path):
    missing = tmp_path / "nonexistent.pt"
    with pytest.raises(FileNotFoundError) as info:
        load(str(missing))
    assert info.value.filename == str(missing)
    with pytest.raises(FileNotFoundError):
        load("nonexistent.pt")


def test_offline_lists_every_missing_file_at_once(tmp_path):
    with pytest.raises(imagereward.DownloadError) as info:
        load("Aesthetic", device="cpu", download_root=str(tmp_path))
    message = str(info.value)
    assert "2 files" in message and "sac+logos+ava1-l14-linearMSE.pth" in message and "ViT-L-14.pt" in message


def test_every_entry_is_complete():
    for name in imagereward.available_models():
        entry = registry.get_entry(name)
        module, _, function = entry.builder.partition(":")
        assert callable(getattr(__import__(module, fromlist=[function]), function)), name
        assert isinstance(entry.preprocess, PreprocessConfig)
        for spec in entry.files.values():
            assert spec.what and (spec.repo_id or spec.url)


def test_configs_are_frozen_and_never_changed_by_loading(checkpoint, config):
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.max_text_length = 8  # type: ignore[misc]
    before = dataclasses.asdict(config)
    load(str(checkpoint), config=config, device="cpu", dtype="bf16")
    assert dataclasses.asdict(config) == before


def test_saved_folder_carries_its_preprocessing(tmp_path, checkpoint, config):
    chain = PreprocessConfig(image_size=config.vision.image_size, interpolation="bilinear", convert_rgb="first")
    model = load(str(checkpoint), config=config, device="cpu", preprocess=chain)
    folder = imagereward.save_pretrained(model, str(tmp_path / "saved"))
    again = load(folder, device="cpu")
    assert again.preprocess.config == chain
    assert again.score("a cat", PATHS[1]) == pytest.approx(model.score("a cat", PATHS[1]), abs=1e-6)
    default = load(str(checkpoint), config=config, device="cpu")
    assert default.score("a cat", PATHS[1]) != pytest.approx(model.score("a cat", PATHS[1]), abs=1e-6)


def test_listing_names_imports_no_torch():
    code = "import sys, imagereward; imagereward.available_models(); assert 'torch' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_models_command_lists_the_registry(capsys):
    from imagereward.cli import main

    assert main(["models", "--json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in records] == imagereward.available_models()
    assert records[0]["files"]["weights"] == "hf://THUDM/ImageReward/ImageReward.pt"
    assert all(r["description"] for r in records)
