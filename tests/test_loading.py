import dataclasses
import json
import re
import subprocess
import sys

import pytest
import torch

import imagereward
from imagereward.checkpoints import CheckpointError
from imagereward.hub import DownloadError
from helpers import ASSETS, random_state_dict, tiny_config

PROMPT = "a painting of an ocean with clouds and birds"


def _rewards(model):
    return model.rank(PROMPT, [str(p) for p in ASSETS]).rewards


def test_good_checkpoint_loads_strictly_and_matches_the_weights(checkpoint, config):
    model = imagereward.load(str(checkpoint), config=config, device="cpu")
    state = torch.load(checkpoint)
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert not model.training
    assert all(not p.is_meta for p in model.parameters())


def test_ddp_prefix_is_stripped(tmp_path, config, model):
    state = {f"module.{k}": v for k, v in random_state_dict(config).items()}
    path = tmp_path / "ddp.pt"
    torch.save(state, path)
    assert _rewards(imagereward.load(str(path), config=config)) == pytest.approx(_rewards(model), abs=1e-6)


def test_unexpected_key_is_named(tmp_path, config):
    state = random_state_dict(config)
    state["blip.something_else.weight"] = torch.zeros(3)
    path = tmp_path / "extra.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"unexpected keys: blip\.something_else\.weight"):
        imagereward.load(str(path), config=config)


def test_missing_key_is_named(tmp_path, config):
    state = random_state_dict(config)
    del state["mlp.layers.0.weight"]
    path = tmp_path / "missing.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"missing keys: mlp\.layers\.0\.weight"):
        imagereward.load(str(path), config=config)


def test_wrong_shape_is_named(tmp_path, config):
    state = random_state_dict(config)
    state["blip.visual_encoder.pos_embed"] = torch.zeros(1, 5, 7)
    path = tmp_path / "shape.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"pos_embed \(checkpoint \(1, 5, 7\)"):
        imagereward.load(str(path), config=config)


def test_wrong_architecture_is_an_error_not_a_partial_load(checkpoint):
    with pytest.raises(CheckpointError, match="missing keys"):
        imagereward.load(str(checkpoint))  # full-size config, tiny file


def test_pickled_code_is_refused(tmp_path, config):
    path = tmp_path / "evil.pt"
    torch.save({"weights": random_state_dict(config), "obj": CheckpointError("x")}, path)
    with pytest.raises(CheckpointError, match="not a plain checkpoint") as error:
        imagereward.load(str(path), config=config)
    assert "weights_only" not in str(error.value)  # never advise weights_only=False


def test_unknown_name():
    listed = re.escape(str(imagereward.available_models()))
    with pytest.raises(imagereward.UnknownModelError, match=f"Model nope not found; available models = {listed}"):
        imagereward.load("nope")
    assert issubclass(imagereward.UnknownModelError, RuntimeError)  # what the original raised


def test_offline_missing_download_names_the_file(tmp_path):
    with pytest.raises(DownloadError, match="ImageReward.pt.*THUDM/ImageReward"):
        imagereward.load("ImageReward-v1.0", download_root=str(tmp_path))


def test_download_root_file_is_used_without_network(tmp_path, checkpoint, config, model):
    (tmp_path / "ImageReward.pt").write_bytes(checkpoint.read_bytes())
    loaded = imagereward.load("ImageReward-v1.0", download_root=str(tmp_path), config=config)
    assert _rewards(loaded) == pytest.approx(_rewards(model), abs=1e-6)


def test_folder_holding_the_registered_file_is_a_checkpoint(tmp_path, checkpoint, config, model):
    snapshot = tmp_path / "snapshots" / "abc123"  # a hub snapshot: the files, no config.json
    snapshot.mkdir(parents=True)
    (snapshot / "ImageReward.pt").write_bytes(checkpoint.read_bytes())
    (snapshot / "config.json").write_text('{"model_type": "bert"}')  # another library's
    loaded = imagereward.load("ImageReward-v1.0", checkpoint=str(snapshot), config=config)
    assert _rewards(loaded) == pytest.approx(_rewards(model), abs=1e-6)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="neither a saved model.*ImageReward.pt") as error:
        imagereward.load("ImageReward-v1.0", checkpoint=str(empty), config=config)
    assert error.value.filename == str(empty)
    (empty / "config.json").write_text('{"model_type": "ImageReward"}')  # ours, broken
    with pytest.raises(CheckpointError, match="malformed config"):
        imagereward.load("ImageReward-v1.0", checkpoint=str(empty), config=config)


def test_original_package_cache_is_reused(tmp_path, monkeypatch, checkpoint, config, model):
    monkeypatch.setenv("HOME", str(tmp_path))
    legacy = tmp_path / ".cache" / "ImageReward"
    legacy.mkdir(parents=True)
    (legacy / "ImageReward.pt").write_bytes(checkpoint.read_bytes())
    loaded = imagereward.load("ImageReward-v1.0", config=config)
    assert _rewards(loaded) == pytest.approx(_rewards(model), abs=1e-6)


def test_med_config_file_sets_the_text_encoder(tmp_path, checkpoint, config, model):
    text = config.text
    med = {
        "architectures": ["BertModel"], "attention_probs_dropout_prob": 0.1, "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1, "hidden_size": text.hidden_size, "intermediate_size": text.intermediate_size,
        "layer_norm_eps": 1e-12, "max_position_embeddings": text.max_position_embeddings,
        "num_attention_heads": text.num_heads, "num_hidden_layers": text.num_layers, "pad_token_id": 0,
        "vocab_size": 30524, "encoder_width": 768, "add_cross_attention": True,
    }
    path = tmp_path / "med_config.json"
    path.write_text(json.dumps(med))
    base = dataclasses.replace(tiny_config(), text=dataclasses.replace(text, hidden_size=8))  # overridden
    loaded = imagereward.load(str(checkpoint), config=base, med_config=str(path))
    assert loaded.config.text.hidden_size == text.hidden_size
    assert _rewards(loaded) == pytest.approx(_rewards(model), abs=1e-6)


def test_save_pretrained_and_convert_round_trip(tmp_path, checkpoint, config, model):
    saved = imagereward.save_pretrained(model, str(tmp_path / "saved"))
    assert _rewards(imagereward.load(saved)) == pytest.approx(_rewards(model), abs=1e-6)
    half = imagereward.convert_checkpoint(str(checkpoint), str(tmp_path / "half"), dtype="fp16", config=config)
    from safetensors.torch import load_file

    assert all(t.dtype == torch.float16 for t in load_file(f"{half}/model.safetensors").values())
    assert _rewards(imagereward.load(half)) == pytest.approx(_rewards(model), abs=0.05)


def test_saved_weights_file_brings_its_config_under_a_registered_name(tmp_path, model):
    saved = imagereward.save_pretrained(model, str(tmp_path / "saved"))
    weights = f"{saved}/model.safetensors"
    loaded = imagereward.load("ImageReward-v1.0", checkpoint=weights)  # no config= given
    assert loaded.config == model.config
    assert _rewards(loaded) == pytest.approx(_rewards(model), abs=1e-6)
    with pytest.raises(CheckpointError, match="saved from ImageReward-v1.0, not BLIP"):
        imagereward.load("BLIP", checkpoint=weights)


def test_convert_command(tmp_path, model):
    from imagereward.cli import main

    saved = imagereward.save_pretrained(model, str(tmp_path / "saved"))
    assert main(["convert", saved, str(tmp_path / "bf16"), "--dtype", "bf16"]) == 0
    assert (tmp_path / "bf16" / "model.safetensors").stat().st_size < (tmp_path / "saved" / "model.safetensors").stat().st_size


@pytest.mark.parametrize("dtype", ["bf16", torch.float16])
def test_half_precision_loads_and_scores_close(checkpoint, config, model, dtype):
    from imagereward.dtypes import cpu_has_fast, resolve_dtype

    if cpu_has_fast(resolve_dtype(dtype)):
        half = imagereward.load(str(checkpoint), config=config, dtype=dtype)
    else:  # the user is told that this CPU runs half precision slowly
        with pytest.warns(UserWarning, match="no native support"):
            half = imagereward.load(str(checkpoint), config=config, dtype=dtype)
    assert half.blip.visual_encoder.norm.weight.dtype in (torch.bfloat16, torch.float16)
    assert half.mlp.layers[0].weight.dtype == torch.float32
    assert _rewards(half) == pytest.approx(_rewards(model), abs=0.1)


def test_bad_dtype():
    with pytest.raises(ValueError, match="unknown dtype"):
        imagereward.load("x.pt", dtype="int3")


def test_imports_are_lazy():
    code = (
        "import sys, ImageReward, imagereward; assert 'torch' not in sys.modules, 'torch';"
        "from imagereward.scoring import RewardScorer as M;"
        "bad = [m for m in ('diffusers', 'datasets', 'matplotlib', 'transformers', 'torchvision',"
        " 'timm', 'imagereward.train', 'accelerate') if m in sys.modules]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
