"""Starting points: BLIP-large pretraining weights with a fresh head, ImageReward checkpoints."""

from __future__ import annotations

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
                               model_config=write_model_config(tmp_path, config))
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
