"""The freeze rate: exactly the intended parameters receive gradients."""

from __future__ import annotations

import re

import pytest
import torch

from imagereward.config import HeadConfig, ImageRewardConfig, TextConfig, VisionConfig
from imagereward.models import ImageRewardNet
from imagereward.train.evaluate import pair_rewards, pairwise_loss
from imagereward.train.freeze import apply_freeze, frozen_count


def paper_depth_config() -> ImageRewardConfig:
    """ImageReward's depths (12 text layers, 24 ViT blocks) at a tiny width."""
    return ImageRewardConfig(
        vision=VisionConfig(image_size=32, patch_size=16, width=16, depth=24, heads=2),
        text=TextConfig(hidden_size=16, num_layers=12, num_heads=2, intermediate_size=32,
                        max_position_embeddings=16, encoder_width=16),
        head=HeadConfig(hidden_dims=(8, 4, 4, 2)),
        max_text_length=8,
    )


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)  # tiny models: threads only add contention


def gradient_names(model: ImageRewardNet) -> set:
    """Names of the parameters that receive a gradient from one pairwise-loss step.

    (Some get an exactly-zero one: the loss ignores a constant shift of all rewards,
    so the head's last biases have zero gradient.)"""
    torch.manual_seed(0)
    model.train()
    batch = {
        "input_ids": torch.randint(1000, 2000, (4, 8)),
        "attention_mask": torch.ones(4, 8, dtype=torch.long),
        "better": torch.randn(4, 3, 32, 32),
        "worse": torch.randn(4, 3, 32, 32),
    }
    better, worse = pair_rewards(model, batch, torch.device("cpu"))
    pairwise_loss(better, worse).mean().backward()
    received = {n for n, p in model.named_parameters() if p.grad is not None}
    assert all(p.grad.abs().sum() > 0 for n, p in model.named_parameters()
               if n in received and not n.startswith("mlp.")), "a trainable encoder parameter got no signal"
    return received


def expected_frozen(name: str, text_layers: int, vision_blocks: int) -> bool:
    text = re.match(r"blip\.text_encoder\.(embeddings\.|encoder\.layer\.(\d+)\.)", name)
    if text:
        return text.group(2) is None or int(text.group(2)) < text_layers
    vision = re.match(r"blip\.visual_encoder\.(patch_embed\.|cls_token|pos_embed|blocks\.(\d+)\.)", name)
    if vision:
        return vision.group(2) is None or int(vision.group(2)) < vision_blocks
    return False


def test_paper_rate_freezes_text_layers_0_to_7_and_vit_blocks_0_to_15():
    model = ImageRewardNet(paper_depth_config())
    summary = apply_freeze(model, 0.7)
    assert (summary.text_layers, summary.vision_blocks) == (8, 16)
    names = [n for n, _ in model.named_parameters()]
    want = {n for n in names if not expected_frozen(n, 8, 16)}
    assert gradient_names(model) == want
    # No off-by-one: the first parameters of text layer 8 and ViT block 16 train.
    assert "blip.text_encoder.encoder.layer.8.attention.self.query.weight" in want
    assert "blip.visual_encoder.blocks.16.norm1.weight" in want
    assert "blip.visual_encoder.norm.weight" in want
    assert summary.trainable == sum(p.numel() for n, p in model.named_parameters() if n in want)


@pytest.mark.parametrize("rate, text_layers, vision_blocks", [(0.0, 0, 0), (0.5, 6, 12), (1.0, 12, 24)])
def test_other_rates(rate, text_layers, vision_blocks):
    model = ImageRewardNet(paper_depth_config())
    apply_freeze(model, rate)
    names = [n for n, _ in model.named_parameters()]
    frozen = {n for n in names if rate > 0 and expected_frozen(n, text_layers, vision_blocks)}
    assert gradient_names(model) == set(names) - frozen


def test_freeze_backbone_trains_the_head_only():
    model = ImageRewardNet(paper_depth_config())
    apply_freeze(model, 0.7, backbone=True)
    assert gradient_names(model) == {n for n, _ in model.named_parameters() if n.startswith("mlp.")}


def test_frozen_count_is_floor_without_float_error():
    assert frozen_count(0.7, 12) == 8
    assert frozen_count(0.7, 24) == 16
    assert frozen_count(0.7, 10) == 7
    assert frozen_count(0.29, 100) == 29
    assert frozen_count(1.0, 12) == 12
