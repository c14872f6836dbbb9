"""Starting points: BLIP-large pretraining weights, an ImageReward checkpoint, or random."""

from __future__ import annotations

import dataclasses
import json
import os

import torch
from torch import nn

from ..checkpoints import load_state_dict_strict, read_state_dict
from ..config import ImageRewardConfig
from ..models.image_reward import ImageRewardNet
from .config import TrainConfig

# Only BLIP's two encoders are taken from its pretraining checkpoint (not the projections,
# momentum copies, queues, decoder or ITM head); their recomputable buffer is not needed.
BLIP_ENCODERS = ("visual_encoder.", "text_encoder.")
BLIP_UNUSED_KEYS = (r"text_encoder\.embeddings\.position_ids",)


def read_model_config(path: str) -> ImageRewardConfig:
    """ImageRewardConfig fields as JSON, or a ``config.json`` written by ``save_pretrained``."""
    with open(path, "r", encoding="utf-8") as handle:
        data = json.load(handle)
    if isinstance(data, dict) and "model_type" in data:
        data = data.get("config", {})
    try:
        return ImageRewardConfig.from_dict(data)
    except TypeError as error:
        raise ValueError(f"{path} is not an ImageReward model configuration: {error}") from error


def load_blip_pretrain(model: ImageRewardNet, path: str) -> None:
    """Copy BLIP's two encoders from ``model_large.pth`` (weights under ``"model"``), strictly."""
    state = read_state_dict(path, key="model")
    encoders = {k: v for k, v in state.items() if k.startswith(BLIP_ENCODERS)}
    load_state_dict_strict(model.blip, encoders, source=path, ignore=BLIP_UNUSED_KEYS)


def _init_scratch(model: ImageRewardNet) -> None:
    """PyTorch's default layer initialisation, plus N(0, 0.02) class token and position embedding."""
    vision = model.blip.visual_encoder
    nn.init.trunc_normal_(vision.pos_embed, std=0.02)
    nn.init.trunc_normal_(vision.cls_token, std=0.02)


def trained_architecture(config: TrainConfig, architecture: ImageRewardConfig) -> ImageRewardConfig:
    """``architecture`` with its dropout and drop-path, or without them (``--dropout``).

    ``auto`` turns them off from random weights (``--init scratch``): there the text
    encoder's and the head's dropout each keep a small model at chance on a task only the
    prompt decides (``benchmarks/train_original.py``, docs/training.md); the paper's recipe
    from BLIP or ImageReward weights keeps them.
    """
    keep = config.init != "scratch" if config.dropout == "auto" else config.dropout == "on"
    return architecture if keep else without_dropout(architecture)


def without_dropout(config: ImageRewardConfig) -> ImageRewardConfig:
    """``config`` with every dropout and drop-path rate at zero."""
    return dataclasses.replace(
        config,
        vision=dataclasses.replace(config.vision, drop_path_rate=0.0),
        text=dataclasses.replace(config.text, hidden_dropout=0.0, attention_dropout=0.0),
        head=dataclasses.replace(config.head, dropouts=(0.0,) * len(config.head.dropouts)),
    )


def build_model(config: TrainConfig) -> ImageRewardNet:
    """The network to train, in float32 on the CPU, seeded by ``config.seed``.

    Its normalisation is the identity (mean 0, std 1) until training measures it.
    """
    torch.manual_seed(config.seed)
    model_config = read_model_config(config.model_config) if config.model_config else None
    if config.init == "imagereward":
        from ..factory import load

        scorer = load(
            config.init_checkpoint, device="cpu", config=model_config,
            vocab_file=config.vocab_file or None, num_workers=0,
        )
        model = ImageRewardNet(trained_architecture(config, scorer.config))
        model.load_state_dict(scorer.state_dict())
    else:
        model = ImageRewardNet(trained_architecture(config, model_config or ImageRewardConfig()))
        if config.init == "blip":
            if not os.path.isfile(config.init_checkpoint):
                raise FileNotFoundError(2, "BLIP pretraining checkpoint not found", config.init_checkpoint)
            load_blip_pretrain(model, config.init_checkpoint)
        else:
            _init_scratch(model)
        model.mlp.reset_parameters(config.head_init)
    model.config = dataclasses.replace(model.config, reward_mean=0.0, reward_std=1.0)
    return model
