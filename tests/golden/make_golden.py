"""Golden outputs of image-reward 1.5's own code on seeded tiny checkpoints.

Run ONLY in the reference environment (never in CI; the tests read what it writes):

    ~/.cache/imagereward-bench/refvenv/bin/python tests/golden/make_golden.py

For each scorer it builds the checkpoint with ``weights.py``, loads it through the
original package and records ``inference_rank`` of every prompt over every image
and ``score`` of single (prompt, image) pairs in ``tests/data/golden/<scorer>.json``,
with the configuration, the checkpoint's tensor digest, the inputs' pixel digests
and the reference environment's versions.

CLIP and Aesthetic go through the original ``load_score`` unchanged (OpenAI's
``build_model`` reads the sizes from the weights). ImageReward and BLIP hard-code
ViT-large, so the original objects are built and their ``visual_encoder``,
``text_encoder``, projections and head are replaced by the original classes at tiny
sizes; tokenizer, preprocessing, ``score``/``inference_rank``, normalisation and
the checkpoint loading (``load_state_dict(strict=False)``) are the original's.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import os
import platform
import sys
import tempfile
from pathlib import Path
from typing import Callable, Dict, List, Tuple

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path[:0] = [str(HERE), str(REPO / "benchmarks")]

import torch  # noqa: E402

import inputs  # noqa: E402
import weights  # noqa: E402
from refenv import REFERENCE_DATA, offline_env  # noqa: E402

OUT = REPO / "tests" / "data" / "golden"
MIN_GAP = 1e-4  # rewards of one prompt differ by more: 10x the tests' 1e-5, so rankings are unambiguous

CONFIGS: Dict[str, Dict] = {
    "ImageReward": {"seed": 1, "blip": weights.TINY_BLIP, "head_gain": 1.0},
    "BLIP": {"seed": 2, "blip": weights.TINY_BLIP},
    "CLIP": {"seed": 3, "clip": weights.TINY_CLIP},
    "Aesthetic": {"seed": 4, "clip": weights.TINY_CLIP, "head_gain": 30.0},
}
# (prompt, image) pairs scored one at a time with ``score``: every image once.
PAIRS = [(i % len(inputs.PROMPTS), i) for i in range(len(inputs.ASSET_NAMES) + len(inputs.SYNTHETIC))]
VERSIONS = ("image-reward", "torch", "torchvision", "transformers", "timm", "fairscale",
            "clip-anytorch", "pillow", "numpy", "tokenizers", "huggingface_hub")


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _tiny_med_config(workdir: Path, text: Dict) -> Path:
    """BLIP's ``med_config.json`` with tiny sizes (``encoder_width`` is set by the code)."""
    med = {
        "architectures": ["BertModel"], "attention_probs_dropout_prob": 0.1, "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1, "hidden_size": text["hidden_size"], "initializer_range": 0.02,
        "intermediate_size": text["intermediate_size"], "layer_norm_eps": 1e-12,
        "max_position_embeddings": text["max_position_embeddings"], "model_type": "bert",
        "num_attention_heads": text["num_heads"], "num_hidden_layers": text["num_layers"],
        "pad_token_id": 0, "type_vocab_size": 2, "vocab_size": text["vocab_size"],
        "encoder_width": 768, "add_cross_attention": True,
    }
    path = workdir / "med_config.json"
    path.write_text(json.dumps(med, indent=2))
    return path


def _shrink_blip(blip: torch.nn.Module, config: Dict, med_config: Path) -> None:
    """Swap the hard-coded ViT-large and its BERT for the original classes at tiny sizes."""
    from ImageReward.models.BLIP.med import BertConfig, BertModel
    from ImageReward.models.BLIP.vit import VisionTransformer

    vision, text = config["vision"], config["text"]
    blip.visual_encoder = VisionTransformer(
        img_size=vision["image_size"], patch_size=vision["patch_size"], embed_dim=vision["width"],
        depth=vision["depth"], num_heads=vision["heads"], mlp_ratio=vision["mlp_ratio"],
    )
    bert = BertConfig.from_json_file(str(med_config))
    bert.encoder_width = vision["width"]  # as BLIP_Pretrain sets it from the ViT
    blip.text_encoder = BertModel(config=bert, add_pooling_layer=False)
    blip.vision_proj = torch.nn.Linear(vision["width"], weights.BLIP_EMBED_DIM)
    blip.text_proj = torch.nn.Linear(text["hidden_size"], weights.BLIP_EMBED_DIM)


def _check_load(result, expected_unexpected: List[str], what: str) -> None:
    """``load_state_dict(strict=False)`` as the original calls it, but nothing may be missed."""
    stray = sorted(set(result.unexpected_keys) - set(expected_unexpected))
    if result.missing_keys or sorted(result.unexpected_keys) != sorted(expected_unexpected):
        raise SystemExit(
            f"{what}: the seeded checkpoint does not fit the original model: missing "
            f"{result.missing_keys}, unexpected {stray}"
        )


def _check_equal(module: torch.nn.Module, state: Dict[str, torch.Tensor], what: str) -> None:
    """Every tensor of the checkpoint arrived in ``module`` (up to the dtype cast)."""
    mine = module.state_dict()
    for key, value in state.items():
        if key not in mine or not torch.equal(mine[key].float(), value.float()):
            raise SystemExit(f"{what}: {key} was not loaded as written")


def load_imagereward(config: Dict, files: Dict[str, Path], workdir: Path):
    from ImageReward.ImageReward import MLP, ImageReward

    med = _tiny_med_config(workdir, config["blip"]["text"])
    model = ImageReward(med_config=str(med), device="cpu")
    _shrink_blip(model.blip, config["blip"], med)
    model.mlp = MLP(config["blip"]["text"]["hidden_size"])
    state = torch.load(files["checkpoint"], map_location="cpu")  # as ImageReward.utils.load
    _check_load(model.load_state_dict(state, strict=False), [], "ImageReward")
    return model.eval()


def load_blip(config: Dict, files: Dict[str, Path], workdir: Path):
    from ImageReward.models.BLIPScore import BLIPScore

    med = _tiny_med_config(workdir, config["blip"]["text"])
    model = BLIPScore(med_config=str(med), device="cpu")
    _shrink_blip(model.blip, config["blip"], med)
    state = torch.load(files["checkpoint"], map_location="cpu")["model"]  # as load_score
    used = set(model.blip.state_dict())
    _check_load(model.blip.load_state_dict(state, strict=False), sorted(set(state) - used), "BLIP")
    return model.eval()


def _point_clip_at(sha256: str) -> None:
    """``clip.load`` checks the SHA-256 in its URL table: make it the seeded file's."""
    import clip

    clip.clip._MODELS["ViT-L/14"] = (
        f"https://openaipublic.azureedge.net/clip/models/{sha256}/ViT-L-14.pt"
    )


def load_clip(config: Dict, files: Dict[str, Path], workdir: Path):
    import ImageReward as RM

    _point_clip_at(_file_sha256(files["checkpoint"]))
    model = RM.load_score("CLIP", device="cpu", download_root=str(files["checkpoint"].parent))
    state = torch.load(files["checkpoint"], map_location="cpu")
    _check_equal(model.clip_model, {k: v for k, v in state.items() if v.is_floating_point()}, "CLIP")
    return model


def load_aesthetic(config: Dict, files: Dict[str, Path], workdir: Path):
    import ImageReward as RM

    _point_clip_at(_file_sha256(files["clip_checkpoint"]))
    model = RM.load_score("Aesthetic", device="cpu", download_root=str(files["checkpoint"].parent))
    _check_equal(model.mlp, torch.load(files["checkpoint"], map_location="cpu"), "Aesthetic MLP")
    clip_state = torch.load(files["clip_checkpoint"], map_location="cpu")
    _check_equal(model.clip_model, {k: v for k, v in clip_state.items() if v.is_floating_point()},
                 "Aesthetic CLIP")
    return model


LOADERS: Dict[str, Callable] = {
    "ImageReward": load_imagereward, "BLIP": load_blip, "CLIP": load_clip,
    "Aesthetic": load_aesthetic,
}
# The names under which the original looks for the files in its download root.
FILE_NAMES = {
    "ImageReward": {"checkpoint": "ImageReward.pt"},
    "BLIP": {"checkpoint": "model_large.pth"},
    "CLIP": {"checkpoint": "ViT-L-14.pt"},
    "Aesthetic": {
        "checkpoint": "sac%2Blogos%2Bava1-l14-linearMSE.pth", "clip_checkpoint": "ViT-L-14.pt",
    },
}


def versions(packages: Tuple[str, ...] = VERSIONS) -> Dict[str, str]:
    """The reference environment's Python and package versions, as golden files record them."""
    found = {"python": platform.python_version()}
    for name in packages:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "absent"
    return found


def check_gaps(rows: List[Dict], scorer: str, scale: float = 1.0) -> None:
    """Refuse golden rankings whose rewards differ by less than ``MIN_GAP`` times ``scale``."""
    for row in rows:
        ordered = sorted(row["rewards"])
        gap = min(b - a for a, b in zip(ordered, ordered[1:]))
        if gap < MIN_GAP * scale:
            print(row)
            raise SystemExit(f"{scorer}: two rewards of one prompt differ by only {gap:.2e}: "
                             "rankings would be fragile; change the seed or the gains")


def make(scorer: str, workdir: Path, images: List[Path]) -> Dict:
    config = CONFIGS[scorer]
    root = workdir / scorer
    root.mkdir()
    files = {}
    digests = {}
    for role, checkpoint in weights.build(scorer, config).items():
        files[role] = root / FILE_NAMES[scorer][role]
        torch.save(checkpoint, files[role])
        digests[role] = {
            "format": FILE_NAMES[scorer][role],
            "tensors_sha256": weights.tensor_digest(weights.file_state(checkpoint)),
            "keys": len(weights.file_state(checkpoint)),
        }
    model = LOADERS[scorer](config, files, root)
    paths = [str(p) for p in images]
    with torch.no_grad():
        rows = []
        for index, prompt in enumerate(inputs.PROMPTS):
            ranking, rewards = model.inference_rank(prompt, paths)
            rows.append({"prompt": index, "ranking": ranking, "rewards": rewards})
        pairs = [
            {"prompt": p, "image": i, "score": model.score(inputs.PROMPTS[p], paths[i])}
            for p, i in PAIRS
        ]
    spread = [max(r["rewards"]) - min(r["rewards"]) for r in rows]
    print(f"{scorer}: rewards spread per prompt {[round(s, 4) for s in spread]}")
    check_gaps(rows, scorer)
    made_by = "tests/golden/make_golden.py (image-reward 1.5's own code; see its docstring)"
    return golden_record(scorer, made_by, versions(), config, digests, images, rows, pairs)


def golden_record(scorer: str, made_by: str, versions: Dict, config: Dict, checkpoints: Dict,
                  images: List[Path], rows: List[Dict], pairs: List[Dict]) -> Dict:
    """What a golden file holds (the layout ``tests/test_golden.py`` reads)."""
    return {
        "scorer": scorer,
        "made_by": made_by,
        "reference_versions": versions,
        "config": config,
        "checkpoints": checkpoints,
        "prompts": inputs.PROMPTS,
        "images": [inputs.describe(p) for p in images],
        "inference_rank": rows,
        "score": pairs,
    }


def write_goldens(make: Callable[[str, Path, List[Path]], Dict], scorers: List[str], out: Path,
                  workdir: Path) -> None:
    """``make`` each scorer's golden outputs on the golden images and write them to ``out``."""
    images = inputs.write_images(workdir / "images", REFERENCE_DATA / "assets")
    out.mkdir(parents=True, exist_ok=True)
    for scorer in scorers:
        golden = make(scorer, workdir, images)
        path = out / f"{scorer}.json"
        path.write_text(json.dumps(golden, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"wrote {path} ({path.stat().st_size} bytes)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--only", default=",".join(CONFIGS), help="comma-separated scorers")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)  # the swapped-in modules are initialised, then overwritten by the checkpoint
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        os.environ.update(offline_env(workdir))  # before transformers is imported
        import ImageReward  # noqa: F401  (the original package; needs the offline HF cache)

        write_goldens(make, args.only.split(","), args.out, workdir)


if __name__ == "__main__":
    main()
