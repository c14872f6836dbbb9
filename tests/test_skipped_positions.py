"""Towers skip the positions their scorers never read, with the same results.

Image towers read by their class token: CLIP, Aesthetic, PickScore, HPSv2
(``CLIPVisionTransformer.forward``) and the BLIP baseline (``VisionTransformer(...,
cls_only=True)``) keep only the class token of the last block's output, so that block
attends from the class token alone and runs its output projection and MLP on one row
per image. Its keys and values still come from every token. The result must be the
class token of the whole computation, up to float rounding, in training too
(stochastic depth, gradient checkpointing).

CLIP's causal text tower read at the end-of-text token: ``encode_text`` runs rows of
similar lengths together, each group up to its longest end-of-text token instead of
the 77-token context, and must give the embeddings of the whole padded sequences.
"""

from __future__ import annotations

import copy
from typing import List, Tuple

import pytest
import torch

from imagereward.config import CLIPConfig, VisionConfig
from imagereward.models.clip import CLIPModel, CLIPVisionTransformer, length_groups
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


def _padded_ids(lengths: List[int], pad_with_eot_rows: Tuple[int, ...] = ()) -> torch.Tensor:
    """Token ids of prompts of ``lengths`` (start and end of text included), padded with 0
    as OpenAI's tokenizer pads, or with end-of-text tokens (Hugging Face's) in the given rows."""
    context, eot_id = CLIP_TOWER.context_length, CLIP_TOWER.vocab_size - 1
    ids = torch.zeros(len(lengths), context, dtype=torch.long)
    for row, length in enumerate(lengths):
        ids[row, 0] = eot_id - 1
        words = torch.randint(1, eot_id - 1, (length - 2,), generator=torch.Generator().manual_seed(row))
        ids[row, 1:length - 1] = words
        ids[row, length - 1:] = eot_id if row in pad_with_eot_rows else 0
        ids[row, length - 1] = eot_id
    return ids


@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-5), (torch.bfloat16, 0.05)])
def test_clip_text_embedding_stops_at_the_batchs_last_end_of_text_token(dtype, tolerance):
    model = _randomised(CLIPModel(CLIP_TOWER), seed=7).to(dtype)
    ids = _padded_ids([5, 12, 3], pad_with_eot_rows=(2,))
    with torch.no_grad():
        whole = model.text_tokens(ids)
        expected = whole[torch.arange(3), torch.tensor([4, 11, 2])] @ model.text_projection
        lengths: List[int] = []
        handle = model.transformer.register_forward_hook(lambda _m, args, _out: lengths.append(args[0].shape[1]))
        try:
            got = model.encode_text(ids)
        finally:
            handle.remove()
    assert lengths == [12]  # the longest prompt's end-of-text token, not the context of 77
    scale = expected.float().abs().max()
    assert (got.float() - expected.float()).abs().max() <= tolerance * scale, (got - expected).abs().max()


@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-5), (torch.bfloat16, 0.05)])
def test_clip_text_rows_of_different_lengths_run_in_groups_with_the_same_embeddings(dtype, tolerance):
    model = _randomised(CLIPModel(CLIP_TOWER), seed=8).to(dtype)
    lengths = [4, 70, 5, 3, 6, 72, 4, 5, 3, 6]  # eight short prompts, two long ones, mixed
    ids = _padded_ids(lengths, pad_with_eot_rows=(1, 4))
    with torch.no_grad():
        expected = model.text_tokens(ids)[torch.arange(len(lengths)), torch.tensor(lengths) - 1]
        expected = expected @ model.text_projection
        passes: List[tuple] = []
        handle = model.transformer.register_forward_hook(lambda _m, args, _out: passes.append(args[0].shape[:2]))
        try:
            got = model.encode_text(ids)
        finally:
            handle.remove()
    assert sorted(passes) == [(2, 72), (8, 6)]  # 8 x 6 + 2 x 72 positions instead of 10 x 77
    scale = expected.float().abs().max()
    assert (got.float() - expected.float()).abs().max() <= tolerance * scale, (got - expected).abs().max()


def test_length_groups_split_only_where_the_saved_work_pays_for_a_pass():
    assert length_groups([]) == []
    assert length_groups([9, 9, 9]) == [[0, 1, 2]]
    assert length_groups([5, 12, 3]) == [[2, 0, 1]]  # a second pass would cost more than it saves
    assert length_groups([4, 70, 5, 3], pass_cost=64) == [[3, 0, 2], [1]]
    assert length_groups([4, 70, 5, 3], pass_cost=1000) == [[3, 0, 2, 1]]
    lengths = [10, 19, 21, 15, 25, 5, 25, 17, 31, 32, 38, 25, 18, 11, 59, 14]
    groups = length_groups(lengths, pass_cost=0)  # free passes: every row alone up to its own length
    assert sorted(row for group in groups for row in group) == list(range(len(lengths)))
    assert sum(len(g) * max(lengths[r] for r in g) for g in groups) == sum(lengths)
    for cost in (16, 64, 256):  # never worse than one pass, and every row exactly once
        groups = length_groups(lengths, pass_cost=cost)
        assert sorted(row for group in groups for row in group) == list(range(len(lengths)))
        work = sum(len(g) * max(lengths[r] for r in g) + cost for g in groups)
        assert work <= len(lengths) * max(lengths) + cost
