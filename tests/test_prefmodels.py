"""PickScore, HPSv2 and HPSv2.1: loading both layouts strictly, tokenizers, preprocessing, gradients.

Checkpoints are tiny random models written in the original layouts (a Hugging Face
``CLIPModel`` state dict + ``config.json``; OpenCLIP's ``{"state_dict": ...}``). Parity
with the original code on full-size shapes is benchmarks/parity_prefmodels.py's job.
"""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import imagereward
from helpers import ASSETS, CLIP_BPE
from imagereward.checkpoints import CheckpointError
from imagereward.config import CLIPConfig, PreprocessConfig
from imagereward.errors import DownloadError
from imagereward.models.clip import CLIPModel, hf_clip_names
from imagereward.factory import load
from imagereward import registry
from imagereward.registry import get_entry
from imagereward.preprocess import ImagePreprocessor
from imagereward.tokenizers.clip_bpe import BPE_ENV, CLIPTokenizer
from openai_clip import load_openai_module, oracle_tokenize, varied_prompts

DATA = Path(__file__).resolve().parent / "data"
PICKSCORE_PREPROCESS = get_entry("PickScore").preprocess
HPS_PREPROCESS = get_entry("HPSv2").preprocess


def load_pickscore(checkpoint=None, **options):
    return load("PickScore", checkpoint=checkpoint, **options)


def load_hps(name, checkpoint=None, **options):
    return load(name, checkpoint=checkpoint, **options)

PROMPT = "a painting of an ocean with clouds and birds"
# ViT-H-14's peculiarities at toy size: 80-wide image heads, 64-wide text heads, GELU.
TINY = CLIPConfig(
    embed_dim=32, image_size=32, patch_size=16, vision_width=160, vision_layers=2,
    vision_heads=2, vision_head_width=80, text_width=128, text_layers=2, text_heads=2,
    text_head_width=64, act="gelu",
)
HF_CONFIG = {
    "model_type": "clip",
    "projection_dim": 32,
    "text_config": {"hidden_size": 128, "intermediate_size": 512, "num_hidden_layers": 2,
                    "num_attention_heads": 2, "hidden_act": "gelu"},
    "vision_config": {"hidden_size": 160, "intermediate_size": 640, "num_hidden_layers": 2,
                      "num_attention_heads": 2, "image_size": 32, "patch_size": 16,
                      "hidden_act": "gelu"},
}


@pytest.fixture(autouse=True)
def _bpe(monkeypatch):
    monkeypatch.setenv(BPE_ENV, str(CLIP_BPE))


def random_clip(config: CLIPConfig = TINY, seed: int = 0) -> CLIPModel:
    torch.manual_seed(seed)
    model = CLIPModel(config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.05)
        model.logit_scale.fill_(math.log(100.0))
    return model.eval()


def to_hf(model: CLIPModel) -> dict:
    """Our weights in the Hugging Face ``CLIPModel`` layout, buffers included."""
    state = {}
    for key, value in model.state_dict().items():
        names = hf_clip_names(key)
        if len(names) == 3:
            state.update(zip(names, (v.clone() for v in value.chunk(3))))
        elif key in ("visual.proj", "text_projection"):
            state[names[0]] = value.t().contiguous()
        else:
            state[names[0]] = value.clone()
    state["text_model.embeddings.position_ids"] = torch.arange(77)[None]
    state["vision_model.embeddings.position_ids"] = torch.arange(TINY.num_patches + 1)[None]
    return state


def write_pickscore(folder: Path, state: dict, weights: str = "model.safetensors") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(HF_CONFIG))
    if weights.endswith(".safetensors"):
        from safetensors.torch import save_file

        save_file(state, str(folder / weights), metadata={"format": "pt"})
    else:
        torch.save(state, folder / weights)
    return folder


def write_hps(path: Path, state: dict, wrap: bool = True) -> Path:
    torch.save({"state_dict": state} if wrap else state, path)
    return path


def reference_features(state: dict, ids: torch.Tensor, pixels: torch.Tensor):
    """Text and image features straight from Hugging Face-named tensors: separate q/k/v,
    explicit softmax attention, exact GELU; written independently of our modules."""

    def layer_norm(x, prefix):
        return F.layer_norm(x, x.shape[-1:], state[prefix + ".weight"], state[prefix + ".bias"], 1e-5)

    def linear(x, prefix):
        return x @ state[prefix + ".weight"].t() + state[prefix + ".bias"]

    def encoder(x, prefix, layers, heads, causal):
        for i in range(layers):
            p = f"{prefix}.encoder.layers.{i}."
            h = layer_norm(x, p + "layer_norm1")
            q, k, v = (linear(h, p + f"self_attn.{n}_proj") for n in "qkv")
            b, n, w = q.shape
            q, k, v = (t.view(b, n, heads, w // heads).transpose(1, 2) for t in (q, k, v))
            logits = q @ k.transpose(-1, -2) / math.sqrt(w // heads)
            if causal:
                logits = logits + torch.full((n, n), float("-inf")).triu(1)
            attn = (logits.softmax(-1) @ v).transpose(1, 2).reshape(b, n, w)
            x = x + linear(attn, p + "self_attn.out_proj")
            h = layer_norm(x, p + "layer_norm2")
            x = x + linear(F.gelu(linear(h, p + "mlp.fc1")), p + "mlp.fc2")
        return x

    t = state["text_model.embeddings.token_embedding.weight"][ids]
    t = t + state["text_model.embeddings.position_embedding.weight"][: ids.shape[1]]
    t = layer_norm(encoder(t, "text_model", 2, 2, True), "text_model.final_layer_norm")
    text = t[torch.arange(len(ids)), ids.argmax(-1)] @ state["text_projection.weight"].t()
    x = F.conv2d(pixels, state["vision_model.embeddings.patch_embedding.weight"], stride=16)
    x = x.flatten(2).transpose(1, 2)
    cls = state["vision_model.embeddings.class_embedding"].expand(len(x), 1, -1)
    x = torch.cat([cls, x], 1) + state["vision_model.embeddings.position_embedding.weight"]
    x = encoder(layer_norm(x, "vision_model.pre_layrnorm"), "vision_model", 2, 2, False)
    image = layer_norm(x[:, 0], "vision_model.post_layernorm") @ state["visual_projection.weight"].t()
    return text, image


# -- configuration -------------------------------------------------------------------------


def test_clip_config_checks_heads_and_activation():
    assert CLIPConfig().act == "quick_gelu" and CLIPConfig().vision_head_width == 64
    with pytest.raises(ValueError, match="vision tower: 16 heads of width 64"):
        CLIPConfig(vision_width=1280)
    with pytest.raises(ValueError, match="act must be"):
        CLIPConfig(act="relu")
    config = CLIPConfig.from_widths(vision_head_width=80, vision_width=1280)
    assert config.vision_heads == 16 and config.text_heads == 12


# -- PickScore: Hugging Face layout ---------------------------------------------------------


@pytest.mark.parametrize("weights", ["model.safetensors", "pytorch_model.bin"])
def test_pickscore_loads_hf_layout_and_matches_direct_computation(tmp_path, weights):
    source = random_clip()
    state = to_hf(source)
    folder = write_pickscore(tmp_path / "pick", state, weights)
    model = load_pickscore(str(folder / weights), device="cpu")
    assert model.config == TINY
    for key, value in source.state_dict().items():
        assert torch.equal(model.clip_model.state_dict()[key], value), key
    ids = model.tokenizer([PROMPT, "", "a cat"])
    pixels = torch.stack([model.preprocess(p) for p in ASSETS[:3]])
    text, image = reference_features(state, ids, pixels)
    with torch.no_grad():
        assert torch.allclose(model.clip_model.encode_text(ids), text, atol=1e-5)
        assert torch.allclose(model.clip_model.encode_image(pixels), image, atol=1e-5)
    expected = 100.0 * F.cosine_similarity(text, image)
    got = torch.tensor(model.score_batch([PROMPT, "", "a cat"], [str(p) for p in ASSETS[:3]]))
    assert torch.allclose(got, expected, atol=1e-3)
    matrix = model.score_matrix([PROMPT, "a cat"], [str(p) for p in ASSETS])
    assert torch.allclose(matrix[0], torch.tensor(model.score(PROMPT, [str(p) for p in ASSETS])), atol=1e-4)


def _error(tmp_path, state):
    write_pickscore(tmp_path / "bad", state)
    with pytest.raises(CheckpointError) as info:
        load_pickscore(str(tmp_path / "bad" / "model.safetensors"), device="cpu")
    return str(info.value)


def test_pickscore_strict_loading_names_hf_keys(tmp_path):
    good = to_hf(random_clip())
    missing = dict(good)
    del missing["vision_model.encoder.layers.1.self_attn.k_proj.weight"]
    message = _error(tmp_path, missing)
    assert "missing keys" in message and "layers.1.self_attn.k_proj.weight" in message
    assert "unexpected keys" in message  # the orphaned q and v projections

    shaped = dict(good)
    shaped["text_model.final_layer_norm.weight"] = torch.ones(64)
    message = _error(tmp_path, shaped)
    assert "shape mismatches: text_model.final_layer_norm.weight" in message

    extra = dict(good, **{"text_model.pooler.weight": torch.zeros(2)})
    assert "unexpected keys: text_model.pooler.weight" in _error(tmp_path, extra)


def test_pickscore_missing_files_and_offline_download(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_pickscore(str(tmp_path / "nowhere.safetensors"), device="cpu")
    with pytest.raises(DownloadError, match="offline mode.*model.safetensors"):
        load_pickscore(device="cpu", download_root=str(tmp_path / "cache"))


def test_pickscore_uses_files_in_the_download_root(tmp_path):
    write_pickscore(tmp_path / "cache", to_hf(random_clip()))
    model = load_pickscore(device="cpu", download_root=str(tmp_path / "cache"))
    assert model.config == TINY  # from the config.json beside the weights
    bare = tmp_path / "bare"
    write_pickscore(bare, to_hf(random_clip()))
    (bare / "config.json").unlink()
    with pytest.raises(CheckpointError, match="shape mismatches"):  # full ViT-H-14 assumed
        load_pickscore(str(bare / "model.safetensors"), device="cpu")
    assert load_pickscore(str(bare / "model.safetensors"), device="cpu", config=TINY).config == TINY


# -- HPSv2: OpenCLIP layout ------------------------------------------------------------------


def test_hps_loads_openclip_layout_with_inferred_sizes(tmp_path):
    source = random_clip(seed=1)
    ddp = {"module." + k: v for k, v in source.state_dict().items()}
    path = write_hps(tmp_path / "HPS_v2.1_compressed.pt", ddp)
    model = load_hps("HPSv2.1", str(path), device="cpu")
    assert model.config == TINY  # head widths 80 / 64 and GELU: OpenCLIP ViT-H-14's
    ids = model.tokenizer([PROMPT])
    pixels = model.preprocess(ASSETS[0])[None]
    with torch.no_grad():
        expected = F.cosine_similarity(source.encode_text(ids), source.encode_image(pixels)).item()
    assert model.score(PROMPT, str(ASSETS[0])) == pytest.approx(expected, abs=1e-6)
    cached = load_hps("HPSv2.1", device="cpu", download_root=str(tmp_path))
    assert cached.score(PROMPT, str(ASSETS[0])) == pytest.approx(expected, abs=1e-6)


def test_hps_strict_loading(tmp_path):
    state = random_clip().state_dict()
    missing = {k: v for k, v in state.items() if k != "visual.transformer.resblocks.0.ln_1.bias"}
    with pytest.raises(CheckpointError, match="missing keys: visual.transformer.resblocks.0.ln_1.bias"):
        load_hps("HPSv2", str(write_hps(tmp_path / "a.pt", missing)), device="cpu", config=TINY)
    shaped = dict(state, **{"visual.proj": torch.zeros(160, 16)})
    with pytest.raises(CheckpointError, match=r"shape mismatches: visual.proj \(checkpoint \(160, 16\)"):
        load_hps("HPSv2", str(write_hps(tmp_path / "b.pt", shaped)), device="cpu", config=TINY)
    extra = dict(state, **{"logit_bias": torch.zeros(())})
    with pytest.raises(CheckpointError, match="unexpected keys: logit_bias"):
        load_hps("HPSv2", str(write_hps(tmp_path / "c.pt", extra)), device="cpu")
    with pytest.raises(CheckpointError, match="no 'state_dict' entry"):
        load_hps("HPSv2", str(write_hps(tmp_path / "d.pt", state, wrap=False)), device="cpu")
    with pytest.raises(CheckpointError, match="not a multiple of the head width 80"):
        bad = random_clip(CLIPConfig(embed_dim=32, image_size=32, patch_size=16, vision_width=128,
                                     vision_layers=1, vision_heads=2, text_width=128,
                                     text_layers=1, text_heads=2)).state_dict()
        load_hps("HPSv2", str(write_hps(tmp_path / "e.pt", bad)), device="cpu")
    with pytest.raises(DownloadError, match="HPS_v2_compressed.pt"):
        load_hps("HPSv2", device="cpu", download_root=str(tmp_path / "empty"))
    with pytest.raises(imagereward.UnknownModelError, match="HPSv2.1"):
        load_hps("HPSv4", device="cpu")


# -- gradients and dtypes --------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["pickscore", "hps"])
def test_score_tensors_is_differentiable_and_matches_scoring(tmp_path, kind):
    source = random_clip()
    if kind == "pickscore":
        folder = write_pickscore(tmp_path / "p", to_hf(source))
        model = load_pickscore(str(folder / "model.safetensors"), device="cpu")
    else:
        model = load_hps("HPSv2", str(write_hps(tmp_path / "h.pt", source.state_dict())), device="cpu")
    image = Image.open(ASSETS[1]).convert("RGB").resize((48, 40))
    pixels = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float().div(255)[None]
    pixels.requires_grad_(True)
    scores = model.score_tensors(pixels, PROMPT)
    scores.sum().backward()
    assert pixels.grad is not None and pixels.grad.abs().sum() > 0
    assert torch.isfinite(pixels.grad).all()
    if kind == "hps":  # float resizing either way: the tensor chain is the PIL chain
        assert scores.item() == pytest.approx(model.score(PROMPT, image), abs=1e-5)
    else:
        assert scores.item() == pytest.approx(model.score(PROMPT, image), abs=0.5)


def test_pickscore_bf16_keeps_its_temperature_in_float32(tmp_path):
    folder = write_pickscore(tmp_path / "p", to_hf(random_clip()))
    model = load_pickscore(str(folder / "model.safetensors"), device="cpu", dtype="bf16")
    assert model.compute_dtype == torch.bfloat16
    assert model.clip_model.logit_scale.dtype == torch.float32
    assert model.similarity_scale().item() == pytest.approx(100.0, rel=1e-6)


def test_bf16_scores_close_to_fp32(tmp_path):
    path = write_hps(tmp_path / "h.pt", random_clip().state_dict())
    fp32 = load_hps("HPSv2", str(path), device="cpu").score(PROMPT, [str(p) for p in ASSETS])
    bf16 = load_hps("HPSv2", str(path), device="cpu", dtype="bf16")
    assert bf16.compute_dtype == torch.bfloat16
    assert np.allclose(bf16.score(PROMPT, [str(p) for p in ASSETS]), fp32, atol=0.05)


# -- tokenizers ------------------------------------------------------------------------------


def test_open_clip_tokenizer_is_openai_with_its_own_special_spelling():
    module = load_openai_module("simple_tokenizer")
    if module is None:
        pytest.skip("OpenAI's clip package (clip-anytorch) is not installed")
    oracle = module.SimpleTokenizer(str(CLIP_BPE))
    ours = CLIPTokenizer(str(CLIP_BPE), text_style="open_clip")
    prompts = [p for p in varied_prompts(300, seed=3) if "<|" not in p and "_of_text>" not in p]
    assert torch.equal(ours(prompts), oracle_tokenize(oracle, prompts))
    ids = ours(["a <end_of_text> b", "a <|endoftext|> b", "<START_OF_TEXT>"])
    assert ids[0, :4].tolist() == [49406, 320, 49407, 321]
    assert 49407 not in ids[1, 1:5].tolist()  # OpenAI's spelling is just text here
    assert ids[2, :3].tolist() == [49406, 49406, 49407]


def test_hf_tokenizer_matches_the_original_fast_tokenizer():
    """Ids of Hugging Face's CLIPTokenizerFast (PickScore's processor), recorded by
    benchmarks/parity_prefmodels.py from transformers itself."""
    recorded = json.loads((DATA / "hf_clip_token_ids.json").read_text(encoding="utf-8"))
    ours = CLIPTokenizer(str(CLIP_BPE), text_style="hf")
    ids = [row[: row.index(49407) + 1] for row in ours(recorded["prompts"]).tolist()]
    wrong = [p for p, a, b in zip(recorded["prompts"], ids, recorded["input_ids"]) if a != b]
    assert not wrong, wrong[:5]
    assert len(recorded["prompts"]) >= 100


def test_hf_and_openai_cleaning_differ_where_the_originals_do():
    hf = CLIPTokenizer(str(CLIP_BPE), text_style="hf")
    openai = CLIPTokenizer(str(CLIP_BPE))
    for text in ("salt &amp; pepper", "\u201ccurly\u201d", "\ufb01sh"):  # html, quotes, ligature
        assert hf.encode(text) != openai.encode(text)
    assert hf.encode("A  Cat\t") == openai.encode("a cat")
    assert hf.encode("<|ENDOFTEXT|>") == openai.encode("<|ENDOFTEXT|>") == [49407]
    assert hf.encode("!<|endoftext|>") == [256, 49407]  # "!</w>", then the end token
    assert 49407 not in openai.encode("!<|endoftext|>")


# -- preprocessing ---------------------------------------------------------------------------


def odd_images():
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (37, 53, 3), dtype=np.uint8))
    return [
        Image.open(ASSETS[0]), rgb, rgb.convert("L"), rgb.convert("P", palette=Image.ADAPTIVE),
        Image.fromarray(rng.integers(0, 255, (29, 30, 4), dtype=np.uint8), "RGBA"),
        rgb.convert("CMYK"), rgb.resize((7, 90)), rgb.resize((224, 100)), rgb.resize((300, 300)),
    ]


@pytest.mark.parametrize("index", range(9))
def test_pickscore_preprocessing_is_hf_clip_image_processor(index):
    image = odd_images()[index]
    ours = ImagePreprocessor(PICKSCORE_PREPROCESS)
    rgb = image.convert("RGB")  # CLIPImageProcessor converts first
    w, h = rgb.size
    size = (224, int(224 * h / w)) if w <= h else (int(224 * w / h), 224)
    resized = np.asarray(rgb.resize(size, Image.BICUBIC) if size != rgb.size else rgb)
    top, left = (resized.shape[0] - 224) // 2, (resized.shape[1] - 224) // 2
    crop = resized[top : top + 224, left : left + 224].astype(np.float64) * (1 / 255)
    mean, std = np.array(PICKSCORE_PREPROCESS.mean), np.array(PICKSCORE_PREPROCESS.std)
    expected = torch.from_numpy(((crop.astype(np.float32) - mean.astype(np.float32)) / std.astype(np.float32)))
    got = ours(image).permute(1, 2, 0)
    assert torch.allclose(got, expected.float(), atol=1e-6)


@pytest.mark.parametrize("index", range(9))
def test_hps_preprocessing_resizes_longer_side_and_pads(index):
    image = odd_images()[index]
    ours = ImagePreprocessor(HPS_PREPROCESS)
    pixels = torch.from_numpy(np.asarray(image.convert("RGB")).copy()).permute(2, 0, 1).float() / 255
    h, w = pixels.shape[1:]
    scale = 224 / float(max(h, w))
    new_h, new_w = round(h * scale), round(w * scale)
    if (new_h, new_w) != (h, w):
        pixels = F.interpolate(pixels[None], size=(new_h, new_w), mode="bicubic",
                               align_corners=False, antialias=True)[0]
    canvas = torch.zeros(3, 224, 224)
    top, left = (224 - new_h) // 2, (224 - new_w) // 2
    canvas[:, top : top + new_h, left : left + new_w] = pixels
    mean = torch.tensor(HPS_PREPROCESS.mean).view(3, 1, 1)
    std = torch.tensor(HPS_PREPROCESS.std).view(3, 1, 1)
    assert torch.equal(ours(image), (canvas - mean) / std)
    tensor_chain = ours.tensor_transform(
        torch.from_numpy(np.asarray(image.convert("RGB")).copy()).permute(2, 0, 1)[None].float() / 255
    )[0]
    assert torch.allclose(tensor_chain, ours(image), atol=1e-6)


def test_crop_rounding_differs_between_torchvision_and_hf():
    image = Image.new("RGB", (231, 224))  # 7 extra columns: torchvision offsets 4, HF 3
    image.putpixel((3, 0), (255, 255, 255))
    hf = ImagePreprocessor(PreprocessConfig(crop="center_floor")).to_pixels(image)
    tv = ImagePreprocessor(PreprocessConfig()).to_pixels(image)
    assert hf[:, 0, 0].tolist() == [255, 255, 255] and tv[:, 0, 0].tolist() == [0, 0, 0]


# -- names everywhere: load_score, the CLI, eval ---------------------------------------------


def test_names_are_listed_and_load_score_takes_them(tmp_path):
    for name in ("PickScore", "HPSv2", "HPSv2.1"):
        assert name in imagereward.available_scores() and name in imagereward.available_models()
    write_hps(tmp_path / "HPS_v2_compressed.pt", random_clip().state_dict())
    model = imagereward.load_score("hpsv2", device="cpu", download_root=str(tmp_path))
    assert model.name == "HPSv2" and type(model.network).__name__ == "HPSv2Score"


def test_eval_runs_imagereward_pickscore_and_hps_on_the_test_set_layout(tmp_path, capsys):
    from helpers import TEST_JSON, save_tiny_model
    from imagereward import cli
    from test_eval import write_images

    items = json.loads(TEST_JSON.read_text(encoding="utf-8"))[:4]
    (tmp_path / "test.json").write_text(json.dumps(items), encoding="utf-8")
    write_images(tmp_path / "images", [g for item in items for g in item["generations"]])
    root = tmp_path / "weights"
    write_pickscore(root, to_hf(random_clip(seed=2)))
    write_hps(root / "HPS_v2.1_compressed.pt", random_clip(seed=3).state_dict())
    tiny_ir = save_tiny_model(tmp_path, seed=1)
    out = tmp_path / "results"
    code = cli.main([
        "eval", "--data", str(tmp_path / "test.json"), "--images", str(tmp_path / "images"),
        "--output-dir", str(out), "--no-progress", "--bootstrap", "50", "--no-plot",
        "--models", "ImageReward-v1.0,PickScore,HPSv2.1", "--checkpoint", tiny_ir,
        "--download-root", str(root), "--offline",
    ])
    table, err = capsys.readouterr()
    assert code == 0, err
    summary = json.loads((out / "accuracy.json").read_text())
    assert set(summary["models"]) == {"ImageReward-v1.0", "PickScore", "HPSv2.1"}
    for name, published in (("PickScore", 62.9), ("HPSv2.1", 66.8)):
        predictions = json.loads((out / f"test_{name}.json").read_text(encoding="utf-8"))
        assert [len(p["rewards"]) for p in predictions] == [len(i["generations"]) for i in items]
        assert f"| {name} " in table
        assert registry.published_accuracies()[name] == published  # shown on the official test set
