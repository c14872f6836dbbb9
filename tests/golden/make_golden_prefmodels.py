"""Golden outputs of PickScore's and HPSv2's own code on seeded tiny checkpoints.

Run ONLY in the preference-model reference environment (never in CI; the tests read
what it writes):

    ~/.cache/imagereward-bench/prefvenv/bin/python tests/golden/make_golden_prefmodels.py

(``benchmarks/parity_prefmodels.py`` creates that environment: torch 2.14.1,
transformers 4.44.2, hpsv2 1.2.0.) For each scorer it writes the checkpoint that
``weights.py`` builds in the original's file format, loads it through the original
code, and records the score of every prompt with every image (and the ranking) and
single (prompt, image) scores in ``tests/data/golden/<scorer>.json``, like
``make_golden.py`` does for image-reward 1.5's scorers:

- PickScore: a Hugging Face folder (``config.json`` + ``model.safetensors``) read by
  ``transformers.CLIPModel.from_pretrained``, scored with PickScore's published code
  (``CLIPProcessor``, ``get_image_features``/``get_text_features``, ``logit_scale.exp()
  * cos``) as ``benchmarks/prefmodels_side.py`` runs it;
- HPSv2 and HPSv2.1: ``{"state_dict": ...}`` read by ``hpsv2.img_score.score`` itself,
  on an OpenCLIP model from hpsv2's own factory (its ViT-H-14 at tiny sizes). hpsv2
  cannot read RGBA images (4 channels reach conv1), so those are given converted to
  RGB, which is what our chain does first.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Callable, Dict, List

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path[:0] = [str(HERE), str(REPO / "benchmarks")]

import torch  # noqa: E402
from PIL import Image  # noqa: E402

import inputs  # noqa: E402
import prefmodels_side  # noqa: E402
import weights  # noqa: E402
from make_golden import PAIRS, check_gaps, golden_record, versions, write_goldens  # noqa: E402

SHARED = Path(os.environ.get("IMAGEREWARD_SHARED", REPO.parent / "shared"))
BPE = SHARED / "data" / "bpe_simple_vocab_16e6.txt.gz"
OUT = REPO / "tests" / "data" / "golden"

CONFIGS: Dict[str, Dict] = {
    "PickScore": {"seed": 5, "clip": weights.TINY_VIT_H},
    "HPSv2": {"seed": 6, "clip": weights.TINY_VIT_H},
    "HPSv2.1": {"seed": 7, "clip": weights.TINY_VIT_H},
}
FORMATS = {"PickScore": "model.safetensors", "HPSv2": "HPS_v2_compressed.pt",
           "HPSv2.1": "HPS_v2.1_compressed.pt"}
VERSIONS = ("torch", "torchvision", "transformers", "tokenizers", "hpsv2", "pillow", "numpy", "ftfy")
HPS_MODEL = "ViT-H-14-tiny-golden"


def write_checkpoint(scorer: str, state: Dict, folder: Path, clip: Dict) -> Path:
    """The file as the original reads it (PickScore: with its config.json beside it)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / FORMATS[scorer]
    if scorer == "PickScore":
        from safetensors.torch import save_file

        (folder / "config.json").write_text(json.dumps(weights.hf_clip_config(clip)))
        save_file(state, str(path), metadata={"format": "pt"})
    else:
        torch.save(state, path)
    return path


def pickscore_scorer(path: Path, config: Dict, workdir: Path) -> Callable[[str, List[str]], List[float]]:
    from transformers import CLIPModel

    model, info = CLIPModel.from_pretrained(str(path.parent), output_loading_info=True)
    stray = [k for k in info["missing_keys"] + info["unexpected_keys"] if not k.endswith("position_ids")]
    if stray or info["mismatched_keys"]:
        raise SystemExit(f"PickScore: the seeded checkpoint does not fit CLIPModel: {info}")
    model.eval()
    processor = prefmodels_side.pickscore_processor(str(BPE), workdir)

    def score(prompt: str, images: List[str]) -> List[float]:
        return prefmodels_side.pickscore_scores(model, processor, prompt, [Image.open(p) for p in images])

    return score


def hps_scorer(path: Path, config: Dict, workdir: Path) -> Callable[[str, List[str]], List[float]]:
    from hpsv2 import img_score

    request = {"model_name": HPS_MODEL, "model_config": weights.openclip_config(config["clip"])}
    model, _, preprocess_val = prefmodels_side._hps_factory(request)
    state = torch.load(path, map_location="cpu")["state_dict"]
    result = model.load_state_dict(state, strict=True)  # what img_score.score does, strictly
    assert not result.missing_keys and not result.unexpected_keys, result
    img_score.model_dict["model"] = model
    img_score.model_dict["preprocess_val"] = preprocess_val

    def score(prompt: str, images: List[str]) -> List[float]:
        given = [Image.open(p).convert("RGB") if Image.open(p).mode == "RGBA" else p for p in images]
        return [float(x) for x in img_score.score(given, prompt, cp=str(path))]

    return score


SCORERS = {"PickScore": pickscore_scorer, "HPSv2": hps_scorer, "HPSv2.1": hps_scorer}


def _ranking(rewards: List[float]) -> List[int]:
    order = sorted(range(len(rewards)), key=lambda i: -rewards[i])
    ranks = [0] * len(rewards)
    for position, index in enumerate(order):
        ranks[index] = position + 1
    return ranks


def make(scorer: str, workdir: Path, images: List[Path]) -> Dict:
    config = CONFIGS[scorer]
    state = weights.build(scorer, config)["checkpoint"]
    path = write_checkpoint(scorer, state, workdir / scorer, config["clip"])
    score = SCORERS[scorer](path, config, workdir)
    paths = [str(p) for p in images]
    rows = []
    for index, prompt in enumerate(inputs.PROMPTS):
        rewards = score(prompt, paths)
        rows.append({"prompt": index, "ranking": _ranking(rewards), "rewards": rewards})
    pairs = [{"prompt": p, "image": i, "score": score(inputs.PROMPTS[p], [paths[i]])[0]} for p, i in PAIRS]
    for row in rows:  # a gap relative to the row's scale (PickScore's is about 100)
        check_gaps([row], scorer, scale=max(1.0, max(abs(v) for v in row["rewards"])))
    print(f"{scorer}: score spread per prompt "
          f"{[round(max(r['rewards']) - min(r['rewards']), 4) for r in rows]}")
    made_by = "tests/golden/make_golden_prefmodels.py (the originals' own code; see its docstring)"
    checkpoints = {"checkpoint": {"format": FORMATS[scorer],
                                  "tensors_sha256": weights.tensor_digest(weights.file_state(state)),
                                  "keys": len(weights.file_state(state))}}
    return golden_record(scorer, made_by, versions(VERSIONS), config, checkpoints, images, rows, pairs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--only", default=",".join(CONFIGS), help="comma-separated scorers")
    args = parser.parse_args()
    torch.set_num_threads(1)
    os.environ.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        write_goldens(make, args.only.split(","), args.out, workdir)


if __name__ == "__main__":
    main()
