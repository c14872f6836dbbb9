"""One timed workload in a fresh process, for either implementation.

    python speed_side.py COMMAND REQUEST.json REPLY.json

Runs under the reference environment (``impl: reference``) or ours (``impl: ours``).
Both go through the original API, ``import ImageReward as RM`` (ours is the drop-in
shim), so the code timed is what a user of either package would write. On a GPU
every timing ends with a device synchronisation.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any, Callable, Dict, List, Tuple

from reference_import import import_reference


def _peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM; ru_maxrss would count the parent's)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError("no VmHWM in /proc/self/status")


def _package(req: Dict[str, Any]):
    if req["impl"] == "reference":
        return import_reference()
    import ImageReward

    return ImageReward


def _load(req: Dict[str, Any]):
    import torch

    RM = _package(req)
    torch.set_num_threads(req["threads"])
    kwargs: Dict[str, Any] = {}
    if req["impl"] == "ours":
        kwargs = {
            "dtype": req.get("dtype", "fp32"),
            "batch_size": req.get("batch_size", 16),
            "compile": req.get("compile", False),
        }
    if req.get("med_config"):
        kwargs["med_config"] = req["med_config"]
    start = time.perf_counter()
    model = RM.load(req["checkpoint"], device=req.get("device", "cpu"), **kwargs)
    _sync(req)
    return model, time.perf_counter() - start


def _sync(req: Dict[str, Any]) -> None:
    if str(req.get("device", "cpu")).startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def _timed(req: Dict[str, Any], work: Callable[[], Any], repeats: int) -> Tuple[List[float], Any]:
    timings, result = [], None
    for _ in range(repeats):
        _sync(req)
        start = time.perf_counter()
        result = work()
        _sync(req)
        timings.append(time.perf_counter() - start)
    return timings, result


def _reply(
    timings: List[float], count: int, unit: str, rewards: Any, req: Dict[str, Any]
) -> Dict[str, Any]:
    """Timings of ``count`` items (images or pairs) and the rate of the best timing."""
    return {"seconds": timings, "count": count, "unit": unit,
            f"{unit}_per_second": count / min(timings), "rewards": rewards, **_gpu_memory(req)}


def _gpu_memory(req: Dict[str, Any]) -> Dict[str, float]:
    if not str(req.get("device", "cpu")).startswith("cuda"):
        return {}
    import torch

    return {"peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20}


def load(req: Dict[str, Any]) -> Dict[str, Any]:
    import torch  # noqa: F401  (imports are not part of the load time)

    _package(req)
    before = _peak_rss_mb()
    _, seconds = _load(req)
    return {"seconds": seconds, "peak_rss_mb": _peak_rss_mb(), "rss_before_load_mb": before}


def rank(req: Dict[str, Any]) -> Dict[str, Any]:
    """``inference_rank`` of one prompt over a list of image files (decode included)."""
    import torch

    model, _ = _load(req)
    images: List[str] = req["images"]
    with torch.no_grad():
        model.inference_rank(req["prompt"], images[: req.get("warmup_images", 2)])
        timings, (_, rewards) = _timed(
            req, lambda: model.inference_rank(req["prompt"], images), req["repeats"]
        )
    return _reply(timings, len(images), "images", rewards, req)


def evaluate(req: Dict[str, Any]) -> Dict[str, Any]:
    """``inference_rank`` of each prompt over its own images, one pass (decode included)."""
    import torch

    model, _ = _load(req)
    items = req["items"]
    with torch.no_grad():
        model.inference_rank(items[0]["prompt"], items[0]["images"][:2])  # warm-up
        timings, rewards = _timed(
            req, lambda: [model.inference_rank(i["prompt"], i["images"])[1] for i in items], 1
        )
    return _reply(timings, sum(len(item["images"]) for item in items), "images", rewards, req)


def matrix(req: Dict[str, Any]) -> Dict[str, Any]:
    """Every prompt with every image: one ``inference_rank`` per prompt, or ``score_matrix``."""
    import torch

    model, _ = _load(req)
    prompts, images = req["prompts"], req["images"]
    with torch.no_grad():
        model.inference_rank(prompts[0], images[:2])  # warm-up
        if req["impl"] == "reference":
            work = lambda: [model.inference_rank(p, images)[1] for p in prompts]  # noqa: E731
        else:
            work = lambda: model.score_matrix(prompts, images).tolist()  # noqa: E731
        timings, rewards = _timed(req, work, 1)
    return _reply(timings, len(prompts) * len(images), "pairs", rewards, req)


def model_alone(req: Dict[str, Any]) -> Dict[str, Any]:
    """The network on preprocessed pixels already on the device: no decoding, no resizing.

    The reference as its ``inference_rank`` runs it (one image per forward; with
    ``"batched": true``, the whole set in one ``score_gard`` call); ours in batches
    of ``batch_size`` through ``score_gard``, the original's tensor API.
    """
    import torch

    model, _ = _load(req)
    device = req.get("device", "cpu")
    count, size = req["count"], req.get("image_size", 224)
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randn(count, 3, size, size, generator=generator)
    if req["impl"] == "reference":
        tokens = model.blip.tokenizer(req["prompt"], padding="max_length", truncation=True,
                                      max_length=35, return_tensors="pt")
        pixels = pixels.to(device)
        step = count if req.get("batched") else 1
    else:
        tokens = model.tokenizer([req["prompt"]])
        pixels = pixels.to(device=device, dtype=model.compute_dtype)
        step = req.get("batch_size", 16)
    ids, mask = tokens["input_ids"].to(device), tokens["attention_mask"].to(device)

    def run() -> List[float]:
        out = []
        for start in range(0, count, step):
            batch = pixels[start : start + step]
            rows = batch.shape[0]
            scores = model.score_gard(ids.expand(rows, -1), mask.expand(rows, -1), batch)
            out.append(scores.reshape(-1).float())
        return torch.cat(out).cpu().tolist()

    with torch.no_grad():
        run()  # warm-up
        timings, rewards = _timed(req, run, req.get("repeats", 3))
    return _reply(timings, count, "images", rewards, req)


COMMANDS = {"load": load, "rank": rank, "eval": evaluate, "matrix": matrix, "model": model_alone}


def main() -> None:
    command, request, reply = sys.argv[1:4]
    with open(request) as handle:
        req = json.load(handle)
    with open(reply, "w") as handle:
        json.dump(COMMANDS[command](req), handle)


if __name__ == "__main__":
    main()
