"""Runs inside the reference environment (image-reward 1.5). Not imported by the product.

Usage: python reference_side.py COMMAND REQUEST.json REPLY.json
"""

from __future__ import annotations

import hashlib
import json
import sys
import time

import torch

from reference_import import import_reference


def _scale_head(mlp_layers: torch.nn.Sequential, head_scale: float) -> None:
    """Random BLIP weights give nearly equal features; a wide head makes rewards differ."""
    linears = [m for m in mlp_layers if isinstance(m, torch.nn.Linear)]
    with torch.no_grad():
        for layer in linears:
            layer.weight.normal_(0.0, layer.in_features ** -0.5)
            layer.bias.normal_(0.0, 0.01)
        linears[-1].weight.mul_(head_scale)


def make_imagereward(req):
    """A random-weight ``ImageReward.pt`` written by the reference's own classes."""
    import_reference()
    from ImageReward.ImageReward import ImageReward

    torch.manual_seed(req["seed"])
    model = ImageReward(med_config=req["med_config"], device="cpu")
    _scale_head(model.mlp.layers, req["head_scale"])
    state = model.state_dict()
    torch.save(state, req["out"])
    return {"keys": len(state), "parameters": sum(v.numel() for v in state.values())}


def _rank_all(model, req, load_seconds: float):
    """``inference_rank`` of every prompt over all images, and ``score`` of one pair."""
    results = []
    with torch.no_grad():
        for prompt in req["prompts"]:
            start = time.perf_counter()
            ranking, rewards = model.inference_rank(prompt, req["images"])
            results.append(
                {"prompt": prompt, "ranking": ranking, "rewards": rewards,
                 "seconds": time.perf_counter() - start}
            )
        single = model.score(req["prompts"][0], req["images"][0])
    return {"load_seconds": load_seconds, "results": results, "single": single}


def score_imagereward(req):
    RM = import_reference()
    torch.set_num_threads(req.get("threads", torch.get_num_threads()))
    start = time.perf_counter()
    model = RM.load(req["checkpoint"], device="cpu", med_config=req["med_config"])
    return _rank_all(model, req, time.perf_counter() - start)


def _file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def make_clip(req):
    """A random ViT-L/14 as a TorchScript archive with fp16 tensors, like OpenAI's ViT-L-14.pt.

    OpenAI's CLIP module cannot be scripted (its LayerNorm calls super()), so it is traced.
    """
    import clip

    torch.manual_seed(req["seed"])
    model = clip.model.CLIP(768, 224, 24, 1024, 14, 77, 49408, 768, 12, 12).eval()
    example = (torch.randn(1, 3, 224, 224), clip.tokenize(["a photo of a cat"]))
    traced = torch.jit.trace(model, example, check_trace=False)
    torch.jit.save(traced.half(), req["out"])
    return {"sha256": _file_sha256(req["out"])}


def make_blip(req):
    """BLIP-large pretraining weights under ``"model"``, with some of the unused extras."""
    import_reference()
    from ImageReward.models.BLIP.blip_pretrain import BLIP_Pretrain

    torch.manual_seed(req["seed"])
    blip = BLIP_Pretrain(med_config=req["med_config"], image_size=224, vit="large")
    state = blip.state_dict()
    extras = {
        "vision_proj_m.weight": state["vision_proj.weight"].clone(),
        "text_proj_m.bias": state["text_proj.bias"].clone(),
        "visual_encoder_m.norm.weight": state["visual_encoder.norm.weight"].clone(),
        "text_encoder_m.embeddings.LayerNorm.bias": torch.zeros(768),
        "text_decoder.cls.predictions.bias": torch.zeros(30524),
        "itm_head.weight": torch.randn(2, 768),
        "itm_head.bias": torch.zeros(2),
        "temp": torch.tensor(0.07),
        "image_queue": torch.randn(256, 57600),
        "text_queue": torch.randn(256, 57600),
        "queue_ptr": torch.zeros(1, dtype=torch.long),
    }
    torch.save({"model": {**state, **extras}}, req["out"])
    return {"keys": len(state) + len(extras)}


def make_aesthetic(req):
    """A random aesthetic MLP state dict (``layers.*`` keys) for 768-wide CLIP features."""
    import_reference()
    from ImageReward.models.AestheticScore import MLP

    torch.manual_seed(req["seed"])
    mlp = MLP(768)
    _scale_head(mlp.layers, req["head_scale"])
    torch.save(mlp.state_dict(), req["out"])
    return {"keys": len(mlp.state_dict())}


def score_baseline(req):
    """``load_score(name)`` on a download root that already holds the files.

    ``clip.load`` checks the SHA-256 in its URL table: point it at the fixture's hash.
    """
    import clip

    RM = import_reference()
    torch.set_num_threads(req.get("threads", torch.get_num_threads()))
    clip.clip._MODELS["ViT-L/14"] = (
        f"https://openaipublic.azureedge.net/clip/models/{req['clip_sha256']}/ViT-L-14.pt"
    )
    start = time.perf_counter()
    model = RM.load_score(req["name"], device="cpu", download_root=req["root"])
    return _rank_all(model, req, time.perf_counter() - start)


COMMANDS = {
    "make-imagereward": make_imagereward,
    "score-imagereward": score_imagereward,
    "make-clip": make_clip,
    "make-blip": make_blip,
    "make-aesthetic": make_aesthetic,
    "score-clip": score_baseline,
    "score-blip": score_baseline,
    "score-aesthetic": score_baseline,
}


def main() -> None:
    command, request, reply = sys.argv[1:4]
    with open(request) as handle:
        req = json.load(handle)
    result = COMMANDS[command](req)
    with open(reply, "w") as handle:
        json.dump(result, handle)


if __name__ == "__main__":
    main()
