"""Every scorer against outputs that its original code computed.

``tests/data/golden/<scorer>.json`` holds what the original returned for seeded tiny
checkpoints, made in reference environments, never here: image-reward 1.5 for
ImageReward, BLIP, CLIP and Aesthetic (``tests/golden/make_golden.py``); transformers'
``CLIPModel`` with PickScore's scoring code, and the ``hpsv2`` package, for PickScore,
HPSv2 and HPSv2.1 (``tests/golden/make_golden_prefmodels.py``); MPS's repository code
and the ``hpsv3`` package (with its own transformers 4.45.2) for MPS and HPSv3
(``tests/golden/make_golden_newmodels.py``; HPSv3's goldens also hold its uncertainty). Each test regenerates the checkpoint, checks that its
tensors are the ones the golden outputs came from, loads it through the public API
and compares ``inference_rank``, ``score``, ``score_batch`` and ``score_matrix``:
values within 1e-5, rankings identical.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List

import pytest
import torch

import imagereward
from golden import inputs, weights
from helpers import BERT_VOCAB, CLIP_BPE, REFERENCE_DATA
from imagereward.config import BLIPScoreConfig, CLIPConfig, ImageRewardConfig, MPSConfig, TextConfig, VisionConfig

GOLDEN = Path(__file__).resolve().parent / "data" / "golden"
SCORERS = ["ImageReward", "BLIP", "CLIP", "Aesthetic", "PickScore", "HPSv2", "HPSv2.1", "MPS", "HPSv3"]
PREFERENCE_MODELS = ("PickScore", "HPSv2", "HPSv2.1")
NEW_MODELS = ("MPS", "HPSv3")
HPSV3_TOKENIZER = "HPSv3-tokenizer.json"
TOLERANCE = 1e-5  # relative to the scores' scale (PickScore's are about 100 x a cosine)


def regenerate(scorer: str) -> str:
    if scorer in NEW_MODELS:
        return "~/.cache/imagereward-bench/hps3venv/bin/python tests/golden/make_golden_newmodels.py"
    if scorer in PREFERENCE_MODELS:
        return "~/.cache/imagereward-bench/prefvenv/bin/python tests/golden/make_golden_prefmodels.py"
    return "~/.cache/imagereward-bench/refvenv/bin/python tests/golden/make_golden.py"


@dataclass
class Golden:
    scorer: str
    data: Dict
    model: torch.nn.Module
    images: List[str]

    @property
    def prompts(self) -> List[str]:
        return self.data["prompts"]


def blip_sizes(blip: Dict):
    vision, text = blip["vision"], blip["text"]
    return (
        VisionConfig(**vision),
        TextConfig(**text, encoder_width=vision["width"]),
    )


def load_ours(scorer: str, config: Dict, files: Dict[str, Path]) -> torch.nn.Module:
    """The scorer as a user loads it: the public API, a local checkpoint, a config where needed."""
    if scorer == "ImageReward":
        vision, text = blip_sizes(config["blip"])
        return imagereward.load(
            str(files["checkpoint"]), device="cpu", vocab_file=str(BERT_VOCAB),
            config=ImageRewardConfig(vision=vision, text=text),
        )
    if scorer == "BLIP":
        vision, text = blip_sizes(config["blip"])
        return imagereward.load_score(
            "BLIP", device="cpu", checkpoint=str(files["checkpoint"]), vocab_file=str(BERT_VOCAB),
            config=BLIPScoreConfig(vision=vision, text=text),
        )
    if scorer == "MPS":  # CLIP sizes from the weights; the cross model's from the config
        cross = config["mps"]["cross"]
        return imagereward.load("MPS", device="cpu", checkpoint=str(files["checkpoint"]), bpe_file=str(CLIP_BPE),
                                config=MPSConfig(clip=_vit_h(config["mps"]["clip"]), cross_layers=cross["layers"],
                                                 cross_heads=cross["heads"], cross_head_width=cross["head_dim"],
                                                 cross_ff_mult=cross["ff_mult"]))
    if scorer == "HPSv3":  # the Qwen2-VL config.json beside the weights, the golden run's tokenizer
        return imagereward.load("HPSv3", device="cpu", batch_size=4,
                                files={"weights": str(files["checkpoint"]), "tokenizer": str(GOLDEN / HPSV3_TOKENIZER)})
    if scorer in PREFERENCE_MODELS:  # sizes from config.json (PickScore) or the weights (HPS)
        return imagereward.load(scorer, device="cpu", checkpoint=str(files["checkpoint"]),
                                bpe_file=str(CLIP_BPE))
    # CLIP sizes come from the weights, as with OpenAI's builder.
    return imagereward.load_score(
        scorer, device="cpu", checkpoint=str(files["checkpoint"]), bpe_file=str(CLIP_BPE),
        clip_checkpoint=str(files["clip_checkpoint"]) if "clip_checkpoint" in files else None,
    )


@pytest.fixture(scope="module", params=SCORERS)
def golden(request, tmp_path_factory) -> Golden:
    scorer = request.param
    data = json.loads((GOLDEN / f"{scorer}.json").read_text(encoding="utf-8"))
    root = tmp_path_factory.mktemp(scorer)
    files = {}
    for role, checkpoint in weights.build(scorer, data["config"]).items():
        expected = data["checkpoints"][role]
        digest = weights.tensor_digest(weights.file_state(checkpoint))
        if digest != expected["tensors_sha256"]:
            pytest.fail(
                f"{scorer} {role}: the seeded checkpoint is not the one the golden outputs were "
                f"made with (tensor sha256 {digest}, golden {expected['tensors_sha256']}): "
                "tests/golden/weights.py or torch's random numbers changed. Nothing was compared; "
                f"regenerate the golden files with `{regenerate(scorer)}`."
            )
        files[role] = write_checkpoint(scorer, checkpoint, root, expected["format"], data["config"])
    images = inputs.write_images(root / "images", REFERENCE_DATA / "assets")
    for path, described in zip(images, data["images"]):
        if inputs.pixel_digest(path) != described["pixels_sha256"]:
            pytest.fail(
                f"{scorer}: input image {path.name} decodes to other pixels than the golden run "
                f"saw (numpy, PIL or the shared assets changed); regenerate with `{regenerate(scorer)}`."
            )
    model = load_ours(scorer, data["config"], files)
    return Golden(scorer, data, model, [str(p) for p in images])


def _vit_h(clip: Dict) -> CLIPConfig:
    sizes = {k: v for k, v in clip.items() if k not in ("vision_head_width", "text_heads")}
    return CLIPConfig.from_widths(vision_head_width=clip["vision_head_width"],
                                  text_head_width=clip["text_width"] // clip["text_heads"], act="gelu", **sizes)


def write_checkpoint(scorer: str, checkpoint, root: Path, name: str, config: Dict) -> Path:
    """The file in the original's format: PickScore's with its Hugging Face config.json;
    MPS's as a state dict of its model's keys (the whole-model pickle needs MPS's classes
    to write; its reading is tested in test_newmodels.py); HPSv3's with Qwen2-VL's config.json."""
    path = root / name
    if scorer == "HPSv3":
        from safetensors.torch import save_file

        (root / "config.json").write_text(json.dumps(config["vlm"]))
        save_file({k: v.contiguous() for k, v in checkpoint.items()}, str(path))
        return path
    if scorer == "PickScore":
        from safetensors.torch import save_file

        (root / "config.json").write_text(json.dumps(weights.hf_clip_config(config["clip"])))
        save_file(checkpoint, str(path), metadata={"format": "pt"})
    else:
        torch.save(checkpoint, path)
    return path


def assert_close(ours: List[float], golden: List[float], what: str) -> None:
    assert len(ours) == len(golden), what
    worst = max(abs(a - b) for a, b in zip(ours, golden))
    bound = TOLERANCE * max(1.0, max(abs(v) for v in golden))
    assert worst <= bound, f"{what}: max |ours - original| = {worst:.3e} > {bound:.1e}"


def test_inference_rank_matches_the_original(golden):
    for row in golden.data["inference_rank"]:
        prompt = golden.prompts[row["prompt"]]
        ranking, rewards = golden.model.inference_rank(prompt, golden.images)
        assert ranking == row["ranking"], f"{golden.scorer}, prompt {row['prompt']}"
        assert_close(rewards, row["rewards"], f"{golden.scorer} inference_rank, prompt {row['prompt']}")
        if "sigmas" in row:  # HPSv3's uncertainty
            sigma = golden.model.score_details([prompt] * len(golden.images), golden.images)["sigma"]
            assert_close(sigma, row["sigmas"], f"{golden.scorer} sigma, prompt {row['prompt']}")
    assert golden.model.score(prompt, golden.images) == rewards  # the list form of score


def test_single_score_matches_the_original(golden):
    for pair in golden.data["score"]:
        ours = golden.model.score(golden.prompts[pair["prompt"]], golden.images[pair["image"]])
        assert_close([ours], [pair["score"]], f"{golden.scorer} score, pair {pair}")


def test_score_batch_matches_the_original(golden):
    pairs = golden.data["score"]
    ours = golden.model.score_batch(
        [golden.prompts[p["prompt"]] for p in pairs], [golden.images[p["image"]] for p in pairs]
    )
    assert_close(ours, [p["score"] for p in pairs], f"{golden.scorer} score_batch")


def test_score_matrix_matches_the_original(golden):
    rows = golden.data["inference_rank"]
    matrix = golden.model.score_matrix([golden.prompts[r["prompt"]] for r in rows], golden.images)
    assert matrix.shape == (len(rows), len(golden.images))
    for row, ours in zip(rows, matrix.tolist()):
        assert_close(ours, row["rewards"], f"{golden.scorer} score_matrix, prompt {row['prompt']}")


def test_golden_files_cover_the_odd_inputs(golden):
    """What the golden run saw: every prompt and image kind, and the reference's versions."""
    data = golden.data
    assert data["prompts"] == inputs.PROMPTS
    assert {"RGBA", "P", "L", "RGB"} <= {image["mode"] for image in data["images"]}
    versions = data["reference_versions"]
    if golden.scorer in NEW_MODELS:
        assert versions["transformers"] == "4.45.2" and versions["hpsv3"] == "1.0.0"
    elif golden.scorer == "PickScore":
        assert versions["transformers"] != "absent"
    elif golden.scorer in PREFERENCE_MODELS:
        assert versions["hpsv2"] != "absent"
    else:
        assert versions["image-reward"] == "1.5"
    assert len(data["inference_rank"]) == len(inputs.PROMPTS)

