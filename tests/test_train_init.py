"""Starting points: BLIP-large pretraining weights with a fresh head, ImageReward checkpoints."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from helpers import random_state_dict, tiny_config
from imagereward.checkpoints import CheckpointError
from imagereward.models import BLIPBackbone
from imagereward.train.config import TrainConfig
from imagereward.train.initialize import build_model


def write_blip_pretrain(path, config, drop=None):
    """A ``model_large.pth`` look-alike: encoders, projections, momentum copies, queues, decoder."""
    torch.manual_seed(1)
    backbone = BLIPBackbone(config.vision, config.text, with_projections=True)
    encoders = backbone.state_dict()
    state = dict(encoders)
    for key, value in encoders.items():
        if key.startswith(("visual_encoder.", "text_encoder.", "vision_proj.", "text_proj.")):
            head, rest = key.split(".", 1)
            state[f"{head}_m.{rest}"] = value.clone()
    state["text_encoder.embeddings.position_ids"] = torch.arange(config.text.max_position_embeddings)[None]
    state["itm_head.weight"] = torch.randn(2, config.text.hidden_size)
    state["image_queue"] = torch.randn(256, 8)
    state["queue_ptr"] = torch.zeros(1, dtype=torch.long)
    state["temp"] = torch.tensor(0.07)
    state["text_decoder.cls.predictions.bias"] = torch.randn(config.text.vocab_size)
    if drop:
        del state[drop]
    torch.save({"model": state, "epoch": 19}, path)
    return encoders


def write_model_config(tmp_path, config):
    path = tmp_path / "model.json"
    path.write_text(json.dumps(config.to_dict()))
    return str(path)


def test_blip_init_copies_both_encoders_and_resets_the_head(tmp_path):
    config = tiny_config()
    encoders = write_blip_pretrain(tmp_path / "model_large.pth", config)
    train_config = TrainConfig(init="blip", init_checkpoint=str(tmp_path / "model_large.pth"),
                               model_config=write_model_config(tmp_path, config), head_init="original")
    model = build_model(train_config)
    blip = model.blip.state_dict()
    assert set(blip) == {k for k in encoders if not k.startswith(("vision_proj", "text_proj"))}
    for key, value in blip.items():
        assert torch.equal(value, encoders[key]), key
    for index in (0, 2, 4, 6, 7):  # the original head initialisation: N(0, 1/(768+1)) for BLIP's width
        assert torch.count_nonzero(model.mlp.layers[index].bias) == 0
    for index in (0, 2):
        std = model.mlp.layers[index].weight.std().item() * (config.text.hidden_size + 1)
        assert abs(std - 1.0) < 0.25
    assert (model.config.reward_mean, model.config.reward_std) == (0.0, 1.0)
    assert torch.equal(build_model(train_config).mlp.layers[0].weight, model.mlp.layers[0].weight)  # seeded


def test_default_head_init_preserves_variance(tmp_path):
    """Each fresh head layer N(0, 1/fan_in): the reward starts on the scale of the features."""
    tiny = tiny_config()  # with a head wide enough for a stable std estimate
    config = dataclasses.replace(tiny, head=dataclasses.replace(tiny.head, hidden_dims=(256, 128, 64, 32)))
    train_config = TrainConfig(init="scratch", model_config=write_model_config(tmp_path, config))
    head = build_model(train_config).mlp.eval()
    for layer in (m for m in head.layers if isinstance(m, torch.nn.Linear)):
        assert torch.count_nonzero(layer.bias) == 0
        if layer.out_features > 1:
            assert layer.weight.std().item() * layer.in_features ** 0.5 == pytest.approx(1.0, abs=0.1)
    features = torch.randn(4096, config.text.hidden_size)
    with torch.no_grad():
        assert head(features).std().item() == pytest.approx(1.0, abs=0.35)
        head.reset_parameters("original")  # 1/(d+1) per layer: 1e-3 here, ~1e-8 at ImageReward's widths
        assert head(features).std().item() < 1e-2


def test_blip_init_is_strict(tmp_path):
    config = tiny_config()
    write_blip_pretrain(tmp_path / "model_large.pth", config, drop="visual_encoder.blocks.1.attn.qkv.bias")
    train_config = TrainConfig(init="blip", init_checkpoint=str(tmp_path / "model_large.pth"),
                               model_config=write_model_config(tmp_path, config))
    with pytest.raises(CheckpointError, match=r"missing keys: visual_encoder\.blocks\.1\.attn\.qkv\.bias"):
        build_model(train_config)


def test_imagereward_init_reads_ddp_prefixed_checkpoints(tmp_path):
    config = tiny_config()
    state = random_state_dict(config)
    torch.save({f"module.{k}": v for k, v in state.items()}, tmp_path / "trained.pt")
    model = build_model(TrainConfig(init="imagereward", init_checkpoint=str(tmp_path / "trained.pt"),
                                    model_config=write_model_config(tmp_path, config)))
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
