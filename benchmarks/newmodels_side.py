"""The originals of MPS and HPSv3, run in their own environment (see parity_newmodels.py).

    python newmodels_side.py COMMAND request.json reply.json

Commands: ``make-mps`` (MPS's own ``trainer.models.clip_model.CLIPModel`` on a random
Hugging Face ``CLIPModel``, perturbed, saved whole with ``torch.save(model)`` as the
released checkpoint is), ``score-mps`` (MPS's ``infer_one_sample`` from
``eval_overall_mps_on_imagereward.py``, one image at a time), ``make-hpsv3`` (a random
tiny or full ``Qwen2VLRewardModelBT`` from the ``hpsv3`` package, saved as safetensors,
with a processor folder) and ``score-hpsv3`` (``hpsv3.inference.HPSv3RewardInferencer``).
Nothing here is imported by the package.
"""

from __future__ import annotations

import functools
import json
import math
import sys
import time
import types
from pathlib import Path
from typing import Any, Dict, List

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from prefmodels_side import VIT_H_TEXT, VIT_H_VISION, hf_tokenizer_files, perturb, versions  # noqa: E402


# -- MPS ----------------------------------------------------------------------------------
def _mps_imports(repo: str) -> types.ModuleType:
    """MPS's scoring script as a module; it imports OpenCV for nothing it uses here."""
    sys.path.insert(0, repo)
    sys.modules.setdefault("cv2", types.ModuleType("cv2"))
    import eval_overall_mps_on_imagereward as script

    return script


def make_mps(req: Dict[str, Any]) -> Dict[str, Any]:
    from transformers import CLIPConfig
    from transformers import CLIPModel as HFCLIPModel

    _mps_imports(req["repo"])
    from trainer.models.clip_model import CLIPModel

    sizes = req["sizes"]
    torch.manual_seed(req["seed"])
    config = CLIPConfig(
        text_config={**VIT_H_TEXT, **sizes.get("text", {})},
        vision_config={**VIT_H_VISION, **sizes.get("vision", {})},
        projection_dim=1024,  # MPS's cross model is 1024 wide
        logit_scale_init_value=math.log(100.0),
    )
    folder = Path(req["out"]).with_suffix(".hf")
    HFCLIPModel(config).save_pretrained(folder)
    model = CLIPModel(str(folder)).eval()  # MPS's class: XCLIPModel.from_pretrained + Cross_model
    perturb(model, req["seed"], req["noise"])
    if req.get("half"):
        model.half()  # the released file holds a float16 model
    torch.save(model, req["out"])
    return {"checkpoint": req["out"], "keys": len(model.state_dict())}


def score_mps(req: Dict[str, Any]) -> Dict[str, Any]:
    from transformers import CLIPImageProcessor, CLIPTokenizerFast

    script = _mps_imports(req["repo"])
    model = torch.load(req["checkpoint"], map_location="cpu", weights_only=False).float().eval()
    files = hf_tokenizer_files(req["bpe"], Path(req["workdir"]) / "hf-tokenizer")
    # laion/CLIP-ViT-H-14-laion2B-s32B-b79K's tokenizer and image processor.
    tokenizer = CLIPTokenizerFast(**files, model_max_length=77, pad_token="<|endoftext|>")
    processor = CLIPImageProcessor()
    # The script casts its inputs to float16 for its float16 model; the model runs in
    # float32 here, so the casts are made no-ops while it runs.
    half = torch.Tensor.half
    torch.Tensor.half = lambda self, *args, **kwargs: self  # type: ignore[method-assign]
    rows: List[List[float]] = []
    start = time.perf_counter()
    try:
        for prompt in req["prompts"]:
            rows.append([
                float(script.infer_one_sample(path, prompt, model, processor, tokenizer, "cpu"))
                for path in req["images"]
            ])
    finally:
        torch.Tensor.half = half  # type: ignore[method-assign]
    seconds = time.perf_counter() - start
    ids = tokenizer(req["token_prompts"], padding="max_length", truncation=True, max_length=77).input_ids
    from PIL import Image

    pixels = [processor(Image.open(p).convert("RGB"), return_tensors="pt")["pixel_values"] for p in req["images"]]
    return {"scores": rows, "seconds": seconds, "token_ids": ids,
            "pixel_sums": [float(p.double().sum()) for p in pixels],
            "scale": float(model.logit_scale.exp())}


# -- HPSv3 ------------------------------------------------------------------------------------
# Qwen2-VL-Instruct's chat template (its chat_template.json).
QWEN2_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture "
    "{{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video "
    "{{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _tests_path() -> None:
    sys.path.insert(0, str(HERE.parent / "tests"))


def hpsv3_folder(out: Path, tokenizer_file: Path, vlm: Dict[str, Any]) -> int:
    """What hpsv3 reads as ``model_name_or_path`` (Qwen2-VL's processor with the given
    tokenizer, a Qwen2-VL of config ``vlm``) and its settings file ``hpsv3.yaml``; returns
    the vocabulary size of the reward model (the tokenizer's, plus ``<|Reward|>``)."""
    import yaml
    from transformers import Qwen2TokenizerFast, Qwen2VLConfig, Qwen2VLForConditionalGeneration
    from transformers import Qwen2VLImageProcessor, Qwen2VLProcessor

    out.mkdir(parents=True, exist_ok=True)
    tokenizer = Qwen2TokenizerFast(tokenizer_file=str(tokenizer_file), pad_token="<|endoftext|>",
                                   eos_token="<|im_end|>", unk_token=None, bos_token=None)
    processor = Qwen2VLProcessor(image_processor=Qwen2VLImageProcessor(), tokenizer=tokenizer,
                                 chat_template=QWEN2_VL_CHAT_TEMPLATE)
    processor.save_pretrained(out)
    base = Qwen2VLConfig(**{**vlm, "vocab_size": len(tokenizer)})
    Qwen2VLForConditionalGeneration(base).save_pretrained(out)  # replaced by the checkpoint's tensors
    settings = yaml.safe_load((HERE / "hpsv3_parity.yaml").read_text())
    settings["model_name_or_path"] = str(out)
    (out / "hpsv3.yaml").write_text(yaml.safe_dump(settings))
    return len(tokenizer) + 1


def make_hpsv3(req: Dict[str, Any]) -> Dict[str, Any]:
    """A tiny Qwen2-VL folder for hpsv3, and a random reward model's own state dict as
    ``HPSv3.safetensors`` (the keys of the released file), written by hpsv3's class."""
    from safetensors.torch import save_file
    from transformers import Qwen2VLConfig

    _tests_path()
    from qwen_files import full_width_vlm_config, tiny_vlm_config, write_config, write_tokenizer

    from hpsv3.model.qwen2vl_trainer import Qwen2VLRewardModelBT

    sizes = full_width_vlm_config if req.get("size") == "full" else tiny_vlm_config
    out = Path(req["out"])
    ids = write_tokenizer(out / "tokenizer.json")
    vocab = hpsv3_folder(out, out / "tokenizer.json", sizes(ids, 0))
    vlm = sizes(ids, vocab)
    torch.manual_seed(req["seed"])
    model = Qwen2VLRewardModelBT(Qwen2VLConfig(**vlm), output_dim=2, reward_token="special",
                                 special_token_ids=[vocab - 1], rm_head_type="ranknet")
    perturb(model, req["seed"], req["noise"])
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / "HPSv3.safetensors"))
    write_config(out / "model-config.json", vlm)
    return {"checkpoint": str(out / "HPSv3.safetensors"), "keys": len(state), "vocab": vocab}


def hpsv3_rewards(out: Path, checkpoint: Path, prompts: List[str], images: List[str]) -> List[List[List[float]]]:
    """hpsv3's ``HPSv3RewardInferencer.reward`` of every image for each prompt: ``[mu, log sigma]``."""
    inferencer = _inferencer(str(out), str(checkpoint))
    with torch.no_grad():
        return [inferencer.reward(list(images), [prompt] * len(images)).tolist() for prompt in prompts]


@functools.lru_cache(maxsize=None)
def _inferencer(out: str, checkpoint: str) -> Any:
    from hpsv3.inference import HPSv3RewardInferencer

    return HPSv3RewardInferencer(str(Path(out) / "hpsv3.yaml"), checkpoint, device="cpu")


def score_hpsv3(req: Dict[str, Any]) -> Dict[str, Any]:
    from hpsv3.inference import HPSv3RewardInferencer

    out = Path(req["out"])
    inferencer = HPSv3RewardInferencer(str(out / "hpsv3.yaml"), str(out / "HPSv3.safetensors"), device="cpu")
    rows, sigmas = [], []
    start = time.perf_counter()
    with torch.no_grad():
        for prompt in req["prompts"]:
            rewards = inferencer.reward(list(req["images"]), [prompt] * len(req["images"]))
            rows.append(rewards[:, 0].tolist())
            sigmas.append(rewards[:, 1].exp().tolist())
    seconds = time.perf_counter() - start
    batch = inferencer.prepare_batch(list(req["images"][:1]) * len(req["token_prompts"]), req["token_prompts"])
    ids = [row[mask.bool()].tolist() for row, mask in zip(batch["input_ids"], batch["attention_mask"])]
    single = inferencer.prepare_batch(list(req["images"]), [req["prompts"][0]] * len(req["images"]))
    return {"scores": rows, "sigmas": sigmas, "seconds": seconds, "token_ids": ids,
            "pixel_sums": [], "patch_sum": float(single["pixel_values"].double().sum()),
            "grids": single["image_grid_thw"].tolist(), "scale": 1.0}


COMMANDS = {"make-mps": make_mps, "score-mps": score_mps, "make-hpsv3": make_hpsv3, "score-hpsv3": score_hpsv3}


def main() -> None:
    command, request, reply = sys.argv[1:4]
    req = json.loads(Path(request).read_text())
    torch.set_num_threads(req.get("threads", torch.get_num_threads()))
    result = COMMANDS[command](req)
    result["versions"] = {**versions(), **_more_versions()}
    Path(reply).write_text(json.dumps(result))


def _more_versions() -> Dict[str, str]:
    import importlib.metadata as md

    found = {}
    for name in ("hpsv3", "einops", "qwen-vl-utils"):
        try:
            found[name] = md.version(name)
        except md.PackageNotFoundError:
            found[name] = "absent"
    return found


if __name__ == "__main__":
    main()
