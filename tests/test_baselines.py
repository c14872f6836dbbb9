"""The CLIP, BLIP and Aesthetic baselines on tiny random-weight files in the original formats."""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import imagereward
from helpers import ASSETS, BERT_VOCAB, CLIP_BPE, RecordingLinearOp, tiny_config
from imagereward import registry
from imagereward.checkpoints import CheckpointError, read_clip_checkpoint
from imagereward.factory import load_score
from imagereward.config import BLIPScoreConfig, CLIPConfig
from imagereward.hub import DownloadError, fetch_weights, sha256_file
from imagereward.models.blip import BLIPBackbone
from imagereward.models.clip import CLIPModel
from imagereward.models.head import RewardHead
from imagereward.tokenizers.clip_bpe import BPE_ENV
from openai_clip import load_openai_module

PROMPT = "a painting of an ocean with clouds and birds"
TINY_CLIP = CLIPConfig(
    embed_dim=64, image_size=32, patch_size=16, vision_width=128, vision_layers=2,
    vision_heads=2, text_width=128, text_layers=2, text_heads=2,
)
IMAGES = [str(p) for p in ASSETS]


@pytest.fixture(autouse=True)
def _bpe(monkeypatch):
    monkeypatch.setenv(BPE_ENV, str(CLIP_BPE))


def _perturb(module: torch.nn.Module, seed: int) -> None:
    """Random weights everywhere, LayerNorms included, so that every wire matters."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.05)


def _openai_clip(config: CLIPConfig, seed: int = 0):
    """OpenAI's own CLIP module with random weights, or None without the oracle."""
    module = load_openai_module("model")
    if module is None:
        return None
    torch.manual_seed(seed)
    model = module.CLIP(
        config.embed_dim, config.image_size, config.vision_layers, config.vision_width,
        config.patch_size, config.context_length, config.vocab_size, config.text_width,
        config.text_heads, config.text_layers,
    )
    _perturb(model, seed)
    return model.eval()


def write_clip_archive(path: Path, config: CLIPConfig = TINY_CLIP, seed: int = 0) -> Path:
    """A TorchScript archive with fp16 tensors, as OpenAI ships ``ViT-L-14.pt``."""
    pixels = torch.randn(1, 3, config.image_size, config.image_size)
    ids = torch.randint(0, config.vocab_size, (1, config.context_length))
    reference = _openai_clip(config, seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if reference is not None:
            traced = torch.jit.trace(reference, (pixels, ids), check_trace=False)
        else:  # our own model has the same keys
            model = CLIPModel(config).eval()
            _perturb(model, seed)
            traced = torch.jit.trace_module(
                model, {"encode_image": pixels, "encode_text": ids}, check_trace=False
            )
        torch.jit.save(traced.half(), str(path))
    return path


@pytest.fixture(scope="module")
def clip_archive(tmp_path_factory):
    return write_clip_archive(tmp_path_factory.mktemp("clip") / "ViT-L-14.pt")


@pytest.fixture(scope="module")
def aesthetic_file(tmp_path_factory):
    torch.manual_seed(1)
    head = RewardHead(TINY_CLIP.embed_dim)
    head.reset_parameters()
    _perturb(head, 1)
    path = tmp_path_factory.mktemp("aesthetic") / "sac+logos+ava1-l14-linearMSE.pth"
    torch.save(head.state_dict(), path)
    return path


def tiny_blip_config() -> BLIPScoreConfig:
    tiny = tiny_config()
    return BLIPScoreConfig(vision=tiny.vision, text=tiny.text)


def blip_pretrain_state(config: BLIPScoreConfig, seed: int = 2) -> dict:
    """BLIP pretraining weights with the momentum copies, queues and decoder it also holds."""
    torch.manual_seed(seed)
    backbone = BLIPBackbone(config.vision, config.text, with_projections=True)
    _perturb(backbone, seed)
    state = dict(backbone.state_dict())
    for name, value in list(state.items()):
        prefix, rest = name.split(".", 1)
        state[f"{prefix}_m.{rest}"] = value.clone()
        if prefix == "text_encoder":
            state[f"text_decoder.bert.{rest}"] = value.clone()
    width = config.text.hidden_size
    state.update({
        "text_encoder.embeddings.position_ids": torch.arange(config.text.max_position_embeddings)[None],
        "text_decoder.cls.predictions.bias": torch.zeros(config.text.vocab_size),
        "itm_head.weight": torch.randn(2, width),
        "itm_head.bias": torch.zeros(2),
        "temp": torch.tensor(0.07),
        "image_queue": torch.randn(256, 8),
        "text_queue": torch.randn(256, 8),
        "queue_ptr": torch.zeros(1, dtype=torch.long),
    })
    return state


@pytest.fixture(scope="module")
def blip_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("blip") / "model_large.pth"
    torch.save({"model": blip_pretrain_state(tiny_blip_config()), "epoch": 19}, path)
    return path


# Module-scoped fixtures run before the per-test offline settings: give every file explicitly.
@pytest.fixture(scope="module")
def clip_score(clip_archive):
    return load_score(
        "CLIP", device="cpu", checkpoint=str(clip_archive), bpe_file=str(CLIP_BPE), num_workers=0
    )


@pytest.fixture(scope="module")
def blip_score(blip_file):
    return load_score(
        "BLIP", device="cpu", checkpoint=str(blip_file), config=tiny_blip_config(),
        vocab_file=str(BERT_VOCAB),
    )


@pytest.fixture(scope="module")
def aesthetic_score(aesthetic_file, clip_archive):
    return load_score(
        "Aesthetic", device="cpu", checkpoint=str(aesthetic_file), clip_checkpoint=str(clip_archive)
    )


# -- registry and errors ---------------------------------------------------------------


def test_available_scores_and_unknown_name():
    assert imagereward.available_scores() == ["CLIP", "BLIP", "Aesthetic", "PickScore", "HPSv2", "HPSv2.1", "MPS", "HPSv3"]
    with pytest.raises(RuntimeError, match=r"Score CLAP not found; available scores = \['CLIP'"):
        load_score("CLAP")


def test_top_level_exports():
    from imagereward.scoring.aesthetic_score import AestheticScore
    from imagereward.scoring.blip_score import BLIPScore
    from imagereward.scoring.clip_score import CLIPScore

    assert imagereward.CLIPScore is CLIPScore
    assert imagereward.BLIPScore is BLIPScore
    assert imagereward.AestheticScore is AestheticScore
    assert imagereward.load_score is load_score


def test_config_of_the_wrong_kind(blip_file):
    with pytest.raises(TypeError, match="BLIPScoreConfig"):
        load_score("BLIP", checkpoint=str(blip_file), config=TINY_CLIP)


# -- CLIP ---------------------------------------------------------------------------------


def test_clip_reads_torchscript_archive(clip_archive, clip_score):
    state = read_clip_checkpoint(str(clip_archive))
    assert all(v.dtype == torch.float16 for v in state.values())
    assert set(state) == set(clip_score.clip_model.state_dict())
    assert clip_score.config == TINY_CLIP  # sizes read from the weights
    assert clip_score.compute_dtype == torch.float32


def test_clip_matches_openai_model(clip_archive, clip_score):
    reference = _openai_clip(TINY_CLIP)
    if reference is None:
        pytest.skip("OpenAI's clip/model.py is not installed")
    state = read_clip_checkpoint(str(clip_archive))
    reference.load_state_dict({k: v.float() for k, v in state.items()})
    ids = clip_score.tokenizer([PROMPT, "a cat", "word " * 100])
    pixels = torch.stack([clip_score.preprocess(p) for p in IMAGES])
    with torch.no_grad():
        ours_text = clip_score.clip_model.encode_text(ids)
        ours_image = clip_score.clip_model.encode_image(pixels)
        torch.testing.assert_close(ours_text, reference.encode_text(ids), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(ours_image, reference.encode_image(pixels), atol=1e-5, rtol=1e-4)
        expected = (F.normalize(reference.encode_text(ids[:1])) * F.normalize(reference.encode_image(pixels))).sum(1)
    assert clip_score.score(PROMPT, IMAGES) == pytest.approx(expected.tolist(), abs=1e-5)


def test_clip_accepts_plain_state_dict(tmp_path, clip_archive, clip_score):
    state = read_clip_checkpoint(str(clip_archive))
    state["input_resolution"] = torch.tensor(TINY_CLIP.image_size)
    state["context_length"] = torch.tensor(77)
    path = tmp_path / "plain.pt"
    torch.save(state, path)
    model = load_score("CLIP", device="cpu", checkpoint=str(path), config=TINY_CLIP)
    assert model.score(PROMPT, IMAGES[0]) == pytest.approx(clip_score.score(PROMPT, IMAGES[0]), abs=1e-6)


def test_clip_rejects_bad_files(tmp_path):
    legacy = tmp_path / "legacy.pt"
    legacy.write_bytes(b"\x80\x02not a zip archive")
    with pytest.raises(CheckpointError, match="not a CLIP checkpoint"):
        load_score("CLIP", device="cpu", checkpoint=str(legacy))
    other = tmp_path / "other.pt"
    torch.save({"weight": torch.zeros(2)}, other)
    with pytest.raises(CheckpointError, match="not an OpenAI ViT CLIP checkpoint"):
        load_score("CLIP", device="cpu", checkpoint=str(other))


def test_clip_strict_about_shapes(clip_archive):
    wrong = dataclasses.replace(TINY_CLIP, embed_dim=32)
    with pytest.raises(CheckpointError, match="shape mismatches: text_projection"):
        load_score("CLIP", device="cpu", checkpoint=str(clip_archive), config=wrong)


def test_clip_reduced_precision(clip_archive, clip_score):
    expected = clip_score.score(PROMPT, IMAGES)
    cpu = load_score("CLIP", device=torch.device("cpu"), checkpoint=str(clip_archive))
    assert cpu.compute_dtype == torch.float32  # never fp16 on the CPU unless asked
    half = load_score("CLIP", device="cpu", checkpoint=str(clip_archive), dtype="bf16")
    assert half.compute_dtype == torch.bfloat16
    assert half.clip_model.ln_final.weight.dtype == torch.bfloat16
    assert half.score(PROMPT, IMAGES) == pytest.approx(expected, abs=0.05)


# -- scoring contract (shared by all three) ---------------------------------------------------


@pytest.mark.parametrize("name", ["clip_score", "blip_score", "aesthetic_score"])
def test_paths_pil_and_batching_agree(name, request):
    model = request.getfixturevalue(name)
    pil = [Image.open(p) for p in IMAGES]
    old = model.batch_size, model.num_workers
    try:
        model.batch_size, model.num_workers = 1, 0
        one_by_one = model.score(PROMPT, IMAGES)
        model.batch_size, model.num_workers = 3, 2
        batched = model.score(PROMPT, pil)
    finally:
        model.batch_size, model.num_workers = old
    assert batched == pytest.approx(one_by_one, abs=1e-5)
    assert model.score(PROMPT, IMAGES[1]) == pytest.approx(one_by_one[1], abs=1e-5)
    assert len(set(round(r, 5) for r in one_by_one)) == len(IMAGES)


@pytest.mark.parametrize("name", ["clip_score", "blip_score", "aesthetic_score"])
def test_ranking_semantics(name, request):
    model = request.getfixturevalue(name)
    ranking, rewards = model.inference_rank(PROMPT, IMAGES)
    order = sorted(range(len(rewards)), key=lambda i: -rewards[i])
    assert [ranking[i] for i in order] == [1, 2, 3, 4]
    assert model.inference_rank(PROMPT, IMAGES[:1]) == (1, pytest.approx(rewards[0], abs=1e-5))
    with pytest.raises(FileNotFoundError):
        model.inference_rank(PROMPT, [IMAGES[0], "missing.png"])


@pytest.mark.parametrize("name", ["clip_score", "blip_score"])
def test_prompt_matters_and_score_batch(name, request):
    model = request.getfixturevalue(name)
    prompts = [PROMPT, "a red sports car", PROMPT]
    images = IMAGES[:3]
    batch = model.score_batch(prompts, images)
    single = [model.score(p, i) for p, i in zip(prompts, images)]
    assert batch == pytest.approx(single, abs=1e-5)
    assert model.score("a red sports car", IMAGES[0]) != pytest.approx(batch[0], abs=1e-6)


@pytest.mark.parametrize("name", ["clip_score", "blip_score", "aesthetic_score"])
def test_score_matrix_equals_every_pair(name, request):
    model = request.getfixturevalue(name)
    prompts = [PROMPT, "a red sports car", "two birds"]
    matrix = model.score_matrix(prompts, IMAGES)
    assert matrix.shape == (3, len(IMAGES))
    pairs = model.score_batch(
        [p for p in prompts for _ in IMAGES], [i for _ in prompts for i in IMAGES]
    )
    assert matrix.flatten().tolist() == pytest.approx(pairs, abs=1e-5)


@pytest.mark.parametrize("name", ["clip_score", "blip_score", "aesthetic_score"])
def test_score_tensors_is_differentiable(name, request):
    model = request.getfixturevalue(name)
    pixels = torch.rand(2, 3, 40, 48, requires_grad=True)
    scores = model.score_tensors(pixels, PROMPT)
    assert scores.shape == (2,) and scores.dtype == torch.float32
    scores.sum().backward()
    assert pixels.grad is not None and pixels.grad.abs().sum() > 0


# -- BLIP -------------------------------------------------------------------------------------


def test_blip_is_cosine_of_unimodal_projections(blip_score):
    blip = blip_score.blip
    tokens = blip_score.tokenizer([PROMPT])
    assert tokens["input_ids"][0, 0] == 101  # [CLS], not [ENC]
    pixels = blip_score.preprocess(IMAGES[0])[None]
    with torch.no_grad():
        text = blip.text_encoder(tokens["input_ids"], tokens["attention_mask"], mode="text")
        text = F.normalize(blip.text_proj(text[:, 0]), dim=-1)
        image = F.normalize(blip.vision_proj(blip.visual_encoder(pixels)[:, 0]), dim=-1)
        # cross-attention plays no part in text-only mode
        blip.text_encoder.encoder.layer[0].crossattention.self.query.weight.mul_(3.0)
        score = blip_score.score(PROMPT, IMAGES[0])
        blip.text_encoder.encoder.layer[0].crossattention.self.query.weight.div_(3.0)
    assert score == pytest.approx((text * image).sum().item(), abs=1e-6)


def test_blip_strict_about_used_keys(tmp_path):
    config = tiny_blip_config()
    state = blip_pretrain_state(config)
    del state["text_proj.weight"]
    missing = tmp_path / "missing.pth"
    torch.save({"model": state}, missing)
    with pytest.raises(CheckpointError, match=r"missing keys: text_proj\.weight"):
        load_score("BLIP", checkpoint=str(missing), config=config)
    state = blip_pretrain_state(config)
    state["surprise.weight"] = torch.zeros(1)
    extra = tmp_path / "extra.pth"
    torch.save({"model": state}, extra)
    with pytest.raises(CheckpointError, match=r"unexpected keys: surprise\.weight"):
        load_score("BLIP", checkpoint=str(extra), config=config)
    bare = tmp_path / "bare.pth"
    torch.save(blip_pretrain_state(config), bare)
    with pytest.raises(CheckpointError, match="no 'model' entry"):
        load_score("BLIP", checkpoint=str(bare), config=config)


# -- Aesthetic ----------------------------------------------------------------------------------


def test_aesthetic_ignores_prompt_and_uses_normalised_clip_features(aesthetic_score, clip_score):
    a = aesthetic_score.score("anything", IMAGES)
    assert aesthetic_score.score("something else entirely", IMAGES) == a
    pixels = torch.stack([clip_score.preprocess(p) for p in IMAGES])
    with torch.no_grad():
        features = F.normalize(clip_score.clip_model.encode_image(pixels), dim=-1)
        expected = aesthetic_score.mlp(features).squeeze(-1)
    assert a == pytest.approx(expected.tolist(), abs=1e-5)


def test_aesthetic_head_stays_fp32(aesthetic_file, clip_archive):
    model = load_score(
        "Aesthetic", device="cpu", checkpoint=str(aesthetic_file),
        clip_checkpoint=str(clip_archive), dtype=torch.bfloat16,
    )
    assert model.compute_dtype == torch.bfloat16
    assert model.mlp.layers[0].weight.dtype == torch.float32
    assert isinstance(model.score("x", IMAGES[0]), float)


# -- downloads and caches ---------------------------------------------------------------------


def _serve(monkeypatch, filename: str, path: Path, sha256=None) -> None:
    """Point every registry entry's file named ``filename`` at a ``file://`` URL (never the network)."""
    for name, entry in list(registry._REGISTRY.items()):
        files = {
            role: dataclasses.replace(spec, url=path.resolve().as_uri(), sha256=sha256)
            if spec.filename == filename else spec
            for role, spec in entry.files.items()
        }
        monkeypatch.setitem(registry._REGISTRY, name, dataclasses.replace(entry, files=files))


def test_checksum_mismatch_downloads_again(tmp_path, monkeypatch, clip_archive):
    _serve(monkeypatch, "ViT-L-14.pt", clip_archive, sha256_file(str(clip_archive)))
    root = tmp_path / "root"
    root.mkdir()
    (root / "ViT-L-14.pt").write_bytes(b"truncated download")
    with pytest.raises(DownloadError, match="offline"):
        load_score("CLIP", device="cpu", download_root=str(root))
    monkeypatch.delenv("IMAGEREWARD_OFFLINE")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    model = load_score("CLIP", device="cpu", download_root=str(root))
    assert sha256_file(str(root / "ViT-L-14.pt")) == sha256_file(str(clip_archive))
    assert model.config == TINY_CLIP


def test_download_with_wrong_checksum_is_discarded(tmp_path, monkeypatch, clip_archive):
    _serve(monkeypatch, "ViT-L-14.pt", clip_archive, "0" * 64)
    monkeypatch.delenv("IMAGEREWARD_OFFLINE")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    root = tmp_path / "root"
    with pytest.raises(DownloadError, match="does not match"):
        fetch_weights(registry.get_entry("CLIP").files["weights"], str(root))
    assert list(root.iterdir()) == []


def test_original_cache_is_reused(tmp_path, monkeypatch, clip_archive, aesthetic_file):
    """Files under the original names (URL-encoded aesthetic name included), offline."""
    _serve(monkeypatch, "ViT-L-14.pt", clip_archive, sha256_file(str(clip_archive)))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("IMAGEREWARD_CACHE", str(tmp_path / "own-cache"))
    legacy = tmp_path / ".cache" / "ImageReward"
    legacy.mkdir(parents=True)
    (legacy / "ViT-L-14.pt").write_bytes(clip_archive.read_bytes())
    (legacy / "sac%2Blogos%2Bava1-l14-linearMSE.pth").write_bytes(aesthetic_file.read_bytes())
    model = load_score("Aesthetic", device="cpu")
    assert model.score("x", IMAGES[0]) == pytest.approx(
        load_score("Aesthetic", device="cpu", download_root=str(legacy)).score("x", IMAGES[0])
    )
    assert not (tmp_path / "own-cache").exists()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_clip_quick_gelu_in_place_is_bitwise_the_module_and_keeps_gradients(dtype, monkeypatch):
    """OpenAI CLIP's MLP applies QuickGELU in place to c_fc's output in inference (one
    temporary instead of three); the values are bitwise those of ``x * sigmoid(1.702 * x)``.
    (bf16 on AMX takes oneDNN's swish post-op instead: the next test.)"""
    from imagereward.models import clip
    from imagereward.models.clip import FeedForward, QuickGELU

    monkeypatch.setattr(clip, "fuses_post_ops", lambda dtype: False)

    x = torch.randn(3, 9, 4096, generator=torch.Generator().manual_seed(0)).to(dtype) * 4
    assert torch.equal(QuickGELU.inplace(x.clone()), QuickGELU()(x))
    torch.manual_seed(1)
    mlp = FeedForward(64, "quick_gelu").to(dtype)
    inputs = torch.randn(2, 5, 64).to(dtype)
    with torch.no_grad():
        expected = mlp.c_proj(QuickGELU()(mlp.c_fc(inputs)))
        calls = []
        handle = mlp.gelu.register_forward_hook(lambda *_: calls.append(1))  # the module is not called
        try:
            assert torch.equal(mlp(inputs), expected)
        finally:
            handle.remove()
    assert calls == []
    out = mlp(inputs.requires_grad_())  # with gradients: the module, not in place (F.linear)
    out.float().sum().backward()
    assert inputs.grad is not None
    assert torch.allclose(out.detach().float(), expected.float(), atol=1e-5 if dtype == torch.float32 else 0.05)


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="no oneDNN in this torch")
def test_clip_quick_gelu_runs_as_onednn_swish_with_scaled_weights_in_bf16_on_amx(monkeypatch):
    """On AMX, OpenAI CLIP's bf16 MLP runs QuickGELU inside c_fc's product as oneDNN's swish
    post-op on weights scaled by 1.702 (and c_proj's by 1 / 1.702), small products from packed
    copies and large ones as ``packs_weight`` says; the values are the module's within bf16
    rounding. The scaled copies follow in-place updates of the parameters and are not pickled."""
    import copy
    import pickle

    from imagereward.models import clip, layers
    from imagereward.models.clip import FeedForward, QuickGELU

    if not layers._onednn_bf16_available():
        pytest.skip("oneDNN takes no bf16 products on this CPU")
    monkeypatch.setattr(clip, "fuses_post_ops", lambda dtype: dtype == torch.bfloat16)
    recording = RecordingLinearOp(torch.ops.mkldnn._linear_pointwise)
    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", recording)
    torch.manual_seed(3)
    mlp = FeedForward(64, "quick_gelu").bfloat16()
    generator = torch.Generator().manual_seed(4)
    for rows in (7, layers.PLAIN_WEIGHT_ROWS):  # c_proj packed, then from its plain (scaled) weight
        x = torch.randn(1, rows, 64, generator=generator).bfloat16()
        residual = torch.randn(1, rows, 64, generator=generator).bfloat16()
        exact = mlp.float().c_proj(QuickGELU()(mlp.c_fc(x.float())))
        mlp.bfloat16()
        for extra in (None, residual):
            recording.post_ops.clear()
            with torch.no_grad():
                got = mlp(x, residual=extra)
            assert recording.post_ops == ["swish", "none" if extra is None else "add"]
            expected = exact if extra is None else exact + residual.float()
            assert torch.allclose(got.float(), expected, atol=0.03, rtol=0.02), (got.float() - expected).abs().max()
    with torch.no_grad():
        mlp.c_fc.weight.mul_(2)  # an in-place update: the scaled copies are made again
        x = torch.randn(1, 5, 64, generator=generator).bfloat16()
        expected = mlp.float().c_proj(QuickGELU()(mlp.c_fc(x.float())))
        got = mlp.bfloat16()(x)
    assert torch.allclose(got.float(), expected, atol=0.03, rtol=0.02)
    assert layers.DERIVED in mlp.__dict__
    assert layers.DERIVED not in copy.deepcopy(mlp).__dict__
    assert layers.DERIVED not in pickle.loads(pickle.dumps(mlp)).__dict__
    recording.post_ops.clear()
    with torch.no_grad():
        mlp.float()(x.float())  # float32: QuickGELU after the product, as before
    assert "swish" not in recording.post_ops


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="no oneDNN in this torch")
@pytest.mark.parametrize("amx", [False, True])
def test_clip_quick_gelu_runs_as_silu_between_mkl_products_in_float32_on_amx(amx, monkeypatch):
    """On AMX, where OpenAI CLIP's float32 MLP products are large enough for MKL, QuickGELU
    runs as one in-place SiLU over ``c_fc``'s output, its 1.702 given to ``c_fc``'s product as
    sgemm's alpha (and to its bias) and 1 / 1.702 to ``c_proj``'s; the values are the
    module's within float32 rounding. Smaller products, CPUs without AMX and autograd keep
    QuickGELU after the product, bitwise the module."""
    from imagereward.models import clip, layers
    from imagereward.models.clip import QUICK_GELU_SCALE, FeedForward, QuickGELU

    monkeypatch.setattr(layers, "cpu_has_amx", lambda: amx)
    products = []
    real_product = clip.mkl_product

    def recording_product(x, weight, bias, **kwargs):
        products.append(kwargs.get("alpha", 1.0))
        return real_product(x, weight, bias, **kwargs)

    monkeypatch.setattr(clip, "mkl_product", recording_product)
    torch.manual_seed(5)
    mlp = FeedForward(64, "quick_gelu")
    generator = torch.Generator().manual_seed(6)
    for rows in (layers.MKL_FLOAT32_ROWS - 2, layers.MKL_FLOAT32_ROWS):
        x = torch.randn(2, rows // 2, 64, generator=generator) * 3
        residual = torch.randn(2, rows // 2, 64, generator=generator)
        with torch.no_grad():
            module = mlp.c_proj(QuickGELU()(mlp.c_fc(x)))
            for extra in (None, residual, residual[:, :1]):  # the last one broadcast: added after
                products.clear()
                got = mlp(x, residual=extra)
                expected = module if extra is None else module + extra
                if amx and rows >= layers.MKL_FLOAT32_ROWS:
                    assert products == [QUICK_GELU_SCALE, 1 / QUICK_GELU_SCALE]
                    assert torch.allclose(got, expected, atol=2e-6, rtol=1e-5), (got - expected).abs().max()
                else:
                    assert products == []
                    if extra is None:
                        assert torch.equal(got, expected)
    products.clear()
    x = torch.randn(2, layers.MKL_FLOAT32_ROWS // 2, 64, generator=generator, requires_grad=True)
    out = mlp(x)  # with gradients: the module's path
    out.sum().backward()
    assert products == [] and x.grad is not None


def test_clip_layer_norm_computes_in_float32_for_half_precision_inputs():
    """CLIP's LayerNorm computes in float32 whatever the input (as OpenAI's code does);
    bf16 inputs take ATen's mixed-precision kernel instead of float32 copies."""
    from imagereward.models.clip import LayerNormFP32

    generator = torch.Generator().manual_seed(2)
    norm = LayerNormFP32(256)
    with torch.no_grad():
        norm.weight.copy_(1 + 0.3 * torch.randn(256, generator=generator))
        norm.bias.copy_(0.1 * torch.randn(256, generator=generator))
    x = 3 * torch.randn(4, 33, 256, generator=generator) + 1
    assert torch.equal(norm(x), F.layer_norm(x, (256,), norm.weight, norm.bias, norm.eps))
    half = LayerNormFP32(256).bfloat16()
    half.load_state_dict(norm.state_dict())
    got = half(x.bfloat16())
    in_float32 = F.layer_norm(x.bfloat16().float(), (256,), half.weight.float(), half.bias.float(), norm.eps)
    assert got.dtype == torch.bfloat16
    # within one bfloat16 rounding step of the float32 result (a bf16 computation is several)
    assert ((got.float() - in_float32).abs() <= in_float32.abs() * 2**-8 + 1e-6).all()
