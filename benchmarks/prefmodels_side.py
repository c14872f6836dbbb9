"""The originals of PickScore and HPSv2, run in their own environment (prefvenv).

    python prefmodels_side.py COMMAND request.json reply.json

Commands: ``make-pickscore`` (a random Hugging Face ``CLIPModel`` written with
``save_pretrained``, safetensors and ``pytorch_model.bin``), ``make-hps`` (a random
OpenCLIP model from hpsv2's own factory saved as ``{"state_dict": ...}``),
``score-pickscore`` (PickScore's published inference code: ``CLIPProcessor`` +
``get_image_features`` / ``get_text_features``, ``logit_scale.exp() * cos``) and
``score-hps`` (``hpsv2.img_score.score`` itself). Nothing here is imported by the package.
"""

from __future__ import annotations

import gzip
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

import torch
from PIL import Image

# The laion/CLIP-ViT-H-14 processor: CLIPImageProcessor defaults (shortest_edge 224,
# bicubic, centre crop 224, OpenAI mean/std, RGB conversion) and the CLIP BPE vocabulary.
VIT_H_TEXT = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                  num_attention_heads=16, hidden_act="gelu")
VIT_H_VISION = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                    num_attention_heads=16, image_size=224, patch_size=14, hidden_act="gelu")


def perturb(model: torch.nn.Module, seed: int, scale: float) -> None:
    """Noise on every parameter (LayerNorms included), so that every wire matters."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.ndim > 0:
                param.add_(torch.randn(param.shape, generator=generator) * scale)


def hf_tokenizer_files(bpe_gz: str, folder: Path) -> Dict[str, str]:
    """vocab.json and merges.txt of the CLIP BPE, in Hugging Face's format."""
    lines = gzip.open(bpe_gz).read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    merges = [tuple(line.split()) for line in lines]
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    symbols = [chr(c) for c in cs]
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    return {"vocab_file": str(folder / "vocab.json"), "merges_file": str(folder / "merges.txt")}


def pickscore_processor(bpe_gz: str, workdir: Path):
    from transformers import CLIPImageProcessor, CLIPProcessor, CLIPTokenizerFast

    files = hf_tokenizer_files(bpe_gz, workdir / "hf-tokenizer")
    tokenizer = CLIPTokenizerFast(**files, model_max_length=77)
    return CLIPProcessor(image_processor=CLIPImageProcessor(), tokenizer=tokenizer)


def make_pickscore(req: Dict[str, Any]) -> Dict[str, Any]:
    from transformers import CLIPConfig, CLIPModel

    sizes = req["sizes"]
    torch.manual_seed(req["seed"])
    config = CLIPConfig(
        text_config={**VIT_H_TEXT, **sizes.get("text", {})},
        vision_config={**VIT_H_VISION, **sizes.get("vision", {})},
        projection_dim=sizes.get("projection_dim", 1024),
        logit_scale_init_value=math.log(100.0),  # PickScore's trained temperature is at the clamp
    )
    model = CLIPModel(config).eval()
    perturb(model, req["seed"], req["noise"])
    out = Path(req["out"])
    for layout in req.get("layouts", ["safetensors", "bin"]):
        model.save_pretrained(out / layout, safe_serialization=layout == "safetensors")
    return {"folders": [str(out / layout) for layout in req.get("layouts", [])]}


def pickscore_scores(model: Any, processor: Any, prompt: str, images: List[Any]) -> List[float]:
    """The PickScore README's ``calc_probs``, without the softmax: ``logit_scale.exp() * cos``."""
    image_inputs = processor(images=images, padding=True, truncation=True, max_length=77, return_tensors="pt")
    text_inputs = processor(text=prompt, padding=True, truncation=True, max_length=77, return_tensors="pt")
    with torch.no_grad():
        image_embs = model.get_image_features(**image_inputs)
        image_embs = image_embs / torch.norm(image_embs, dim=-1, keepdim=True)
        text_embs = model.get_text_features(**text_inputs)
        text_embs = text_embs / torch.norm(text_embs, dim=-1, keepdim=True)
        return (model.logit_scale.exp() * (text_embs @ image_embs.T)[0]).tolist()


def score_pickscore(req: Dict[str, Any]) -> Dict[str, Any]:
    from transformers import CLIPModel

    processor = pickscore_processor(req["bpe"], Path(req["workdir"]))
    model = CLIPModel.from_pretrained(req["folder"]).eval()
    images = [Image.open(p) for p in req["images"]]
    rows: List[List[float]] = []
    start = time.perf_counter()
    for prompt in req["prompts"]:
        rows.append(pickscore_scores(model, processor, prompt, images))
    seconds = time.perf_counter() - start
    ids = processor.tokenizer(req["token_prompts"], padding="max_length", truncation=True,
                              max_length=77).input_ids
    pixels = processor(images=images, return_tensors="pt")["pixel_values"]
    return {"scores": rows, "seconds": seconds, "token_ids": ids,
            "pixel_sums": pixels.double().sum(dim=(1, 2, 3)).tolist(),
            "scale": float(model.logit_scale.exp())}


def _hps_factory(req: Dict[str, Any]):
    from hpsv2.src.open_clip import create_model_and_transforms
    from hpsv2.src.open_clip.factory import _MODEL_CONFIGS

    name = req["model_name"]
    if name not in _MODEL_CONFIGS:
        _MODEL_CONFIGS[name] = req["model_config"]
    # hpsv2.img_score.initialize_model's arguments, without the LAION download.
    return create_model_and_transforms(
        name, None, precision="amp", device="cpu", jit=False, force_quick_gelu=False,
        force_custom_text=False, force_patch_dropout=False, force_image_size=None,
        pretrained_image=False, image_mean=None, image_std=None, light_augmentation=True,
        aug_cfg={}, output_dict=True, with_score_predictor=False, with_region_predictor=False,
    )


def make_hps(req: Dict[str, Any]) -> Dict[str, Any]:
    torch.manual_seed(req["seed"])
    model, _, _ = _hps_factory(req)
    perturb(model, req["seed"], req["noise"])
    state = model.state_dict()
    if req.get("half"):  # the released files are fp16 ("compressed"); hpsv2 casts on loading
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    torch.save({"state_dict": state}, req["out"])
    return {"checkpoint": req["out"], "keys": len(model.state_dict())}


def score_hps(req: Dict[str, Any]) -> Dict[str, Any]:
    from hpsv2 import img_score
    from hpsv2.src.open_clip import get_tokenizer

    model, _, preprocess_val = _hps_factory(req)
    img_score.model_dict["model"] = model
    img_score.model_dict["preprocess_val"] = preprocess_val
    inputs, converted = [], []
    for path in req["images"]:
        image = Image.open(path)
        if image.mode == "RGBA":  # hpsv2 keeps RGBA as 4 channels and then fails in conv1
            inputs.append(image.convert("RGB"))
            converted.append(path)
        else:
            inputs.append(path)
    rows = []
    start = time.perf_counter()
    for prompt in req["prompts"]:
        rows.append([float(x) for x in img_score.score(inputs, prompt, cp=req["checkpoint"])])
    seconds = time.perf_counter() - start
    tokenizer = get_tokenizer("ViT-H-14")
    ids = tokenizer(req["token_prompts"]).tolist()
    pixels = [preprocess_val(Image.open(p) if p not in converted else Image.open(p).convert("RGB"))
              for p in req["images"]]
    return {"scores": rows, "seconds": seconds, "token_ids": ids, "converted_rgba": converted,
            "pixel_sums": [float(p.double().sum()) for p in pixels], "scale": 1.0}


def versions() -> Dict[str, str]:
    import importlib.metadata as md

    found = {}
    for name in ("torch", "torchvision", "transformers", "tokenizers", "hpsv2", "pillow", "ftfy"):
        try:
            found[name] = md.version(name)
        except md.PackageNotFoundError:
            found[name] = "absent"
    return found


COMMANDS = {"make-pickscore": make_pickscore, "score-pickscore": score_pickscore,
            "make-hps": make_hps, "score-hps": score_hps}


def main() -> None:
    command, request, reply = sys.argv[1:4]
    req = json.loads(Path(request).read_text())
    torch.set_num_threads(req.get("threads", torch.get_num_threads()))
    result = COMMANDS[command](req)
    result["versions"] = versions()
    Path(reply).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
