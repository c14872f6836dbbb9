import pathlib

import numpy as np
import pytest
import torch
from PIL import Image

import imagereward
from imagereward.preprocess import ImageLoadError
from imagereward.scoring.base import ranks_from_rewards
from helpers import ASSETS

PROMPT = "a painting of an ocean with clouds and birds, day time, low depth field effect"
PATHS = [str(p) for p in ASSETS]


def test_inference_rank_contract(model):
    ranking, rewards = model.inference_rank(PROMPT, PATHS)
    assert isinstance(ranking, list) and isinstance(rewards, list)
    assert all(isinstance(r, float) for r in rewards) and sorted(ranking) == [1, 2, 3, 4]
    by_rank = sorted(range(4), key=lambda i: ranking[i])
    assert [rewards[i] for i in by_rank] == sorted(rewards, reverse=True)
    assert len(set(rewards)) == 4


def test_score_single_and_list_agree_with_rank(model):
    _, rewards = model.inference_rank(PROMPT, PATHS)
    assert model.score(PROMPT, PATHS[2]) == pytest.approx(rewards[2], abs=1e-5)
    assert model.score(PROMPT, PATHS) == pytest.approx(rewards, abs=1e-5)


def test_one_element_list_returns_bare_values_like_the_original(model):
    ranking, rewards = model.inference_rank(PROMPT, [PATHS[0]])
    assert ranking == 1 and isinstance(rewards, float)
    result = model.rank(PROMPT, [PATHS[0]])
    assert result.ranking == [1] and len(result.rewards) == 1


def test_every_input_kind_gives_the_same_reward(model):
    with Image.open(PATHS[1]) as handle:
        pil = handle.convert("RGB")
    expected = model.score(PROMPT, PATHS[1])
    assert model.score(PROMPT, pathlib.Path(PATHS[1])) == pytest.approx(expected, abs=1e-6)
    assert model.score(PROMPT, pil) == pytest.approx(expected, abs=1e-6)
    assert model.score(PROMPT, np.asarray(pil)) == pytest.approx(expected, abs=1e-6)
    assert model.inference_rank(PROMPT, tuple(PATHS))[1] == pytest.approx(model.inference_rank(PROMPT, PATHS)[1])


def test_batching_does_not_change_results(model):
    many = PATHS * 3
    model.batch_size, model.num_workers = 1, 0
    one_by_one = model.rank(PROMPT, many).rewards
    model.batch_size, model.num_workers = 5, 3
    assert model.rank(PROMPT, many).rewards == pytest.approx(one_by_one, abs=1e-5)


def test_score_batch_pairs(model):
    prompts = ["a cat", PROMPT, "a cat", "a dog"]
    batch = model.score_batch(prompts, PATHS)
    singles = [model.score(p, i) for p, i in zip(prompts, PATHS)]
    assert batch == pytest.approx(singles, abs=1e-5)
    with pytest.raises(ValueError, match="4 prompts but 3 images"):
        model.score_batch(prompts, PATHS[:3])
    with pytest.raises(TypeError, match=r"prompts\[1\]"):
        model.score_batch(["a", 3, "b", "c"], PATHS)


def test_score_matrix_equals_every_pair(model):
    prompts = ["a cat", PROMPT, "a dog on a red sofa, oil painting", "a cat"]
    model.batch_size = 3  # two image batches: 3 + 1
    matrix = model.score_matrix(prompts, PATHS)
    assert matrix.shape == (4, 4) and matrix.dtype == torch.float32
    pairs = model.score_batch(
        [p for p in prompts for _ in PATHS], [i for _ in prompts for i in PATHS]
    )
    assert matrix.flatten().tolist() == pytest.approx(pairs, abs=1e-5)
    assert torch.equal(matrix[0], matrix[3])  # a repeated prompt is scored once
    assert matrix[:3].std(dim=0).min() > 1e-3  # and the prompt matters


def test_score_matrix_in_chunks_of_prompts(model, monkeypatch):
    from imagereward.scoring import image_reward

    prompts = [f"prompt number {i}" for i in range(7)]
    whole = model.score_matrix(prompts, PATHS)
    monkeypatch.setattr(image_reward, "GRID_ROWS", 5)  # 4 images -> one prompt per pass
    assert (model.score_matrix(prompts, PATHS) - whole).abs().max() < 1e-5


def test_score_matrix_bad_arguments(model):
    with pytest.raises(TypeError, match="list or tuple of str"):
        model.score_matrix(PROMPT, PATHS)
    with pytest.raises(ValueError, match="prompts is empty"):
        model.score_matrix([], PATHS)
    with pytest.raises(FileNotFoundError, match="nope.png"):
        model.score_matrix([PROMPT], [PATHS[0], "nope.png"])


def test_text_rows_must_split_over_images(model):
    tokens = model.tokenizer(["a", "b", "c"])
    image_tokens = model.encode_images(torch.zeros(2, 3, 32, 32))
    with pytest.raises(ValueError, match="3 text rows cannot be split evenly over 2 images"):
        model.blip.multimodal_cls(tokens["input_ids"], tokens["attention_mask"], image_tokens)


def test_prompt_changes_reward(model):
    assert model.score("a cat", PATHS[0]) != pytest.approx(model.score(PROMPT, PATHS[0]), abs=1e-4)


def test_ties_keep_input_order():
    assert ranks_from_rewards([0.5, 0.9, 0.5, 0.1]) == [2, 1, 3, 4]
    assert ranks_from_rewards([float("nan"), 1.0, 0.0]) == [3, 1, 2]


def test_identical_images_tie(model):
    model.batch_size = 1  # within one batch, blocked matmuls may differ in the last bit
    ranking, rewards = model.inference_rank(PROMPT, [PATHS[0], PATHS[0]])
    assert rewards[0] == rewards[1] and ranking == [1, 2]


def test_missing_path_is_named_before_any_work(model, tmp_path):
    missing = str(tmp_path / "nope.png")
    with pytest.raises(FileNotFoundError, match="nope.png"):
        model.inference_rank(PROMPT, [PATHS[0], missing])
    with pytest.raises(FileNotFoundError, match="nope.png"):
        model.score(PROMPT, missing)


def test_corrupt_image_is_named(model, tmp_path):
    bad = tmp_path / "bad.webp"
    bad.write_bytes(b"RIFF0000WEBPjunk")
    with pytest.raises(ImageLoadError, match="bad.webp"):
        model.inference_rank(PROMPT, [PATHS[0], str(bad)])


def test_bad_arguments(model):
    with pytest.raises(ValueError, match="empty"):
        model.inference_rank(PROMPT, [])
    with pytest.raises(TypeError, match="prompt must be a str, got int"):
        model.score(3, PATHS[0])
    with pytest.raises(TypeError, match="prompt must be a str, got NoneType"):
        model.inference_rank(None, PATHS)
    with pytest.raises(TypeError, match="got int"):
        model.score(PROMPT, 42)
    with pytest.raises(TypeError, match="list or tuple"):
        model.inference_rank(PROMPT, PATHS[0])


def test_score_tensors_is_differentiable_and_matches_pil_path(model):
    with Image.open(PATHS[0]) as handle:
        array = np.asarray(handle.convert("RGB").resize((32, 32), Image.BICUBIC))
    pixels = (torch.from_numpy(array.copy()).permute(2, 0, 1)[None].float() / 255).requires_grad_(True)
    reward = model.score_tensors(pixels, PROMPT)
    reward.sum().backward()
    assert pixels.grad is not None and pixels.grad.abs().sum() > 0
    assert reward.item() == pytest.approx(model.score(PROMPT, array), abs=1e-4)


def test_score_tensors_any_size_and_prompt_list(model):
    pixels = torch.rand(3, 3, 50, 70, requires_grad=True)
    rewards = model.score_tensors(pixels, ["a", "b", "c"])
    assert rewards.shape == (3,)
    (-rewards.mean()).backward()
    assert pixels.grad.shape == pixels.shape
    with pytest.raises(ValueError, match="2 prompts for 3 images"):
        model.score_tensors(pixels, ["a", "b"])


def test_score_tensors_refuses_pixels_outside_0_1_and_swapped_arguments(model):
    from imagereward.errors import InputError

    with pytest.raises(InputError, match=r"\[0, 1\].*divide 0-255 pixels by 255"):
        model.score_tensors(torch.rand(2, 3, 32, 32) * 255, "a cat")
    with pytest.raises(InputError, match="map \\[-1, 1\\] pixels"):
        model.score_tensors(torch.rand(2, 3, 32, 32, requires_grad=True) * 2 - 1, "a cat")
    with pytest.raises(InputError, match="pixels first, then prompts"):
        model.score_tensors("a cat", torch.rand(2, 3, 32, 32))
    with pytest.raises(InputError, match=r"\[N, 3, H, W\]"):
        model.score_tensors(torch.rand(3, 32, 32), "a cat")
    model.score_tensors(torch.rand(2, 3, 32, 32) * 1.02 - 0.01, "a cat")  # resampling overshoot is fine


def test_score_gard_compatibility(model):
    tokens = model.tokenizer([PROMPT, PROMPT])
    image = torch.stack([model.preprocess(PATHS[0]), model.preprocess(PATHS[1])]).requires_grad_(True)
    out = model.score_gard(tokens["input_ids"], tokens["attention_mask"], image)
    assert out.shape == (2, 1) and out.requires_grad
    assert out[:, 0].tolist() == pytest.approx(model.inference_rank(PROMPT, PATHS[:2])[1], abs=1e-5)


class _Seen(Exception):
    """Raised by a spy once it has recorded what the engine handed to the model."""


def _spy(monkeypatch, model, method: str, record: dict) -> None:
    """Make ``model.<method>`` record its tensors' devices and dtypes, then stop the call."""

    def spy(*args):
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        tensors += [v for a in args if isinstance(a, dict) for v in a.values()]
        record[method] = {(t.device, t.dtype if t.is_floating_point() else None) for t in tensors}
        raise _Seen

    monkeypatch.setattr(model, method, spy)


def test_inputs_follow_the_model(model, monkeypatch):
    """After ``.to()``, pixels and token rows go to the model's new device and dtype."""
    expected = model.score(PROMPT, PATHS[0])
    model.to(torch.float64)  # float32 pixels would fail in the first float64 layer
    assert model.score(PROMPT, PATHS[0]) == pytest.approx(expected, abs=1e-5)
    model.to("meta")  # a second device on any machine: the spies stop before any result is read
    seen: dict = {}
    _spy(monkeypatch, model.network, "score_rows", seen)
    _spy(monkeypatch, model.network, "image_features", seen)
    with pytest.raises(_Seen):
        model.score(PROMPT, PATHS[0])
    with pytest.raises(_Seen):
        model.score_matrix([PROMPT], PATHS[:1])
    meta = torch.device("meta")
    assert seen["score_rows"] == {(meta, torch.float64), (meta, None)}  # pixels; ids and mask
    assert seen["image_features"] == {(meta, torch.float64)}


def test_scoring_keeps_no_graph(model, monkeypatch):
    """Scoring runs under ``torch.inference_mode`` even where gradients are on."""
    modes = []
    for method in ("score_rows", "score_grid"):
        original = getattr(model.network, method)

        def recorder(*args, _original=original):
            modes.append((torch.is_inference_mode_enabled(), torch.is_grad_enabled()))
            return _original(*args)

        monkeypatch.setattr(model.network, method, recorder)
    assert all(p.requires_grad for p in model.parameters())
    with torch.enable_grad():
        model.score(PROMPT, PATHS[0])
        model.score_batch([PROMPT, "a cat"], PATHS[:2])
        matrix = model.score_matrix([PROMPT], PATHS[:2])
    assert len(modes) == 3 and set(modes) == {(True, False)}
    assert matrix.grad_fn is None and not matrix.requires_grad
    assert all(p.grad is None for p in model.parameters())


def test_drop_in_module(checkpoint, config):
    import ImageReward as reward

    assert reward.available_models() == ["ImageReward-v1.0"]
    model = reward.load(str(checkpoint), config=config, device="cpu")
    assert isinstance(model, imagereward.RewardScorer) and isinstance(model.network, imagereward.ImageReward)
    assert isinstance(model, torch.nn.Module)
    ranking, rewards = model.inference_rank(PROMPT, PATHS)
    assert len(ranking) == len(rewards) == 4
    assert set(model.state_dict()) <= set(torch.load(checkpoint))


def test_compiled_encoders_give_the_same_rewards(checkpoint, config):
    from torch._dynamo.utils import counters

    eager = imagereward.load(str(checkpoint), config=config, device="cpu")
    compiled = imagereward.load(str(checkpoint), config=config, device="cpu", compile=True)
    assert list(compiled.state_dict()) == list(eager.state_dict())
    before = counters["stats"]["unique_graphs"]
    expected = eager.score(PROMPT, PATHS)
    assert compiled.score(PROMPT, PATHS) == pytest.approx(expected, abs=1e-5)
    assert counters["stats"]["unique_graphs"] >= before + 2  # both encoders went through dynamo


def test_casts_keep_the_compute_dtype_of_the_encoders(model):
    expected = model.score(PROMPT, PATHS[0])
    model.double()
    assert model.compute_dtype == torch.float64
    assert model.score(PROMPT, PATHS[0]) == pytest.approx(expected, abs=1e-5)
    model.to(torch.bfloat16)
    assert model.compute_dtype == torch.bfloat16 and model.mlp.layers[0].weight.dtype == torch.float32
    model.float()  # (the bf16 round trip has rounded the encoders' weights)
    assert model.compute_dtype == torch.float32 and isinstance(model.score(PROMPT, PATHS[0]), float)


def test_warm_up_scores_a_blank_pair_and_changes_nothing(model):
    images = [Image.open(path) for path in ASSETS[:2]]
    before = model.score_batch(["a cat", "a dog"], images)
    calls = []
    original = model.score_pixels

    def recording(prompts, pixels):
        calls.append((list(prompts), tuple(pixels.shape)))
        return original(prompts, pixels)

    model.score_pixels = recording
    model.warm_up()
    size = model.preprocess.config.image_size
    assert calls == [([""], (1, 3, size, size))]
    del model.score_pixels
    assert model.score_batch(["a cat", "a dog"], images) == before
