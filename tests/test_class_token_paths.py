"""Image towers whose scorers read only the class token skip the rest of their last block.

CLIP, Aesthetic, PickScore, HPSv2 (``CLIPVisionTransformer.forward``) and the BLIP
baseline (``VisionTransformer(..., cls_only=True)``) keep only the class token of the
last block's output, so that block attends from the class token alone and runs its
output projection and MLP on one row per image. Its keys and values still come from
every token. The result must be the class token of the whole computation, up to float
rounding, in training too (stochastic depth, gradient checkpointing).
"""

from __future__ import annotations

import copy
from typing import List

import pytest
import torch

from imagereward.config import CLIPConfig, VisionConfig
from imagereward.models.clip import CLIPVisionTransformer
from imagereward.models.vit import VisionTransformer

CLIP_TOWER = CLIPConfig(embed_dim=24, image_size=48, patch_size=16, vision_width=64, vision_layers=3,
                        vision_heads=4, text_width=32, text_layers=1, text_heads=2, act="gelu",
                        vision_head_width=16, text_head_width=16)


def _randomised(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)
    return module.eval()


def _rows_into_last_mlp(blocks: torch.nn.ModuleList, fc1: str, run) -> List[int]:
    """The number of rows the last block's first MLP layer received while ``run`` ran."""
    rows: List[int] = []
    layer = blocks[-1].mlp.get_submodule(fc1)
    handle = layer.register_forward_hook(lambda _m, args, _out: rows.append(args[0].shape[:-1].numel()))
    try:
        run()
    finally:
        handle.remove()
    return rows


@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-5), (torch.bfloat16, 0.05)])
def test_clip_image_embedding_reads_the_class_token_of_the_whole_tower(dtype, tolerance):
    tower = _randomised(CLIPVisionTransformer(CLIP_TOWER), seed=0).to(dtype)
    pixels = torch.randn(3, 3, 48, 48, generator=torch.Generator().manual_seed(1)).to(dtype)
    with torch.no_grad():
        everything = tower.tokens(pixels)
        expected = tower.ln_post(everything[:, 0, :]) @ tower.proj
        rows = _rows_into_last_mlp(tower.transformer.resblocks, "c_fc", lambda: tower(pixels))
        got = tower(pixels)
        assert tower.tokens(pixels, cls_only=True).shape == (3, 1, 64)
    assert rows == [3]  # one row per image, not 3 x 10 tokens
    scale = expected.float().abs().max()
    assert (got.float() - expected.float()).abs().max() <= tolerance * scale, (got - expected).abs().max()


@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-5), (torch.bfloat16, 0.05)])
def test_blip_vit_class_token_only_equals_the_whole_computation(dtype, tolerance):
    vit = _randomised(VisionTransformer(VisionConfig(image_size=48, patch_size=16, width=64, depth=3, heads=4)), 2)
    vit = vit.to(dtype)
    pixels = torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(3)).to(dtype)
    with torch.no_grad():
        expected = vit(pixels)[:, :1]
        rows = _rows_into_last_mlp(vit.blocks, "fc1", lambda: vit(pixels, cls_only=True))
        got = vit(pixels, cls_only=True)
    assert rows == [2] and got.shape == (2, 1, 64)
    scale = expected.float().abs().max()
    assert (got.float() - expected.float()).abs().max() <= tolerance * scale, (got - expected).abs().max()


def test_class_token_only_in_training_keeps_the_same_values_and_gradients():
    config = VisionConfig(image_size=32, patch_size=16, width=32, depth=2, heads=2, drop_path_rate=0.2)
    vit = _randomised(VisionTransformer(config), 4)
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():  # eval: stochastic depth off
        assert torch.allclose(vit(pixels, cls_only=True), vit(pixels)[:, :1], atol=1e-5)

    def gradients(checkpointing: bool, cls_only: bool) -> dict:
        model = copy.deepcopy(vit).train()
        model.gradient_checkpointing = checkpointing
        torch.manual_seed(6)  # the same drop-path draws on every run
        out = model(pixels, cls_only=cls_only)
        out[:, :1].sum().backward()
        return {name: parameter.grad for name, parameter in model.named_parameters()}

    expected = gradients(checkpointing=False, cls_only=False)
    for checkpointing in (False, True):
        got = gradients(checkpointing, cls_only=True)
        for name, grad in expected.items():
            assert grad is not None and got[name] is not None, name
            assert torch.allclose(got[name], grad, atol=1e-5), (name, checkpointing)
