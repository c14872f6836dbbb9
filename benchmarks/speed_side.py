"""One timed workload in a fresh process, for either implementation.

    python speed_side.py COMMAND REQUEST.json REPLY.json

Runs under the reference environment (``impl: reference``), imscore's
(``impl: imscore``) or ours (``impl: ours``). The reference and ours go through the
original API, ``import ImageReward as RM`` (ours is the drop-in shim), so the code
timed is what a user of either package would write; imscore through its own
``ImageReward`` module and its batched ``score``. On a GPU every timing ends with a
device synchronisation.
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


DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def _load(req: Dict[str, Any]):
    import torch

    if req["impl"] == "imscore":
        return _load_imscore(req)
    RM = _package(req)
    torch.set_num_threads(req["threads"])
    kwargs: Dict[str, Any] = {}
    if req["impl"] == "ours":
        int8 = req.get("dtype") == "int8"  # int8 linear layers on the bf16 model
        kwargs = {
            "dtype": "bf16" if int8 else req.get("dtype", "fp32"),
            "batch_size": req.get("batch_size", 16),
            "compile": req.get("compile", False),
        }
        if int8:
            kwargs["int8"] = req["int8_calibration"]
    if req.get("med_config"):
        kwargs["med_config"] = req["med_config"]
    start = time.perf_counter()
    model = RM.load(req["checkpoint"], device=req.get("device", "cpu"), **kwargs)
    _sync(req)
    return model, time.perf_counter() - start


def _load_imscore(req: Dict[str, Any]):
    """imscore's ``ImageReward`` with the original ``ImageReward.pt`` state dict, strictly."""
    import torch
    from imscore.imreward.model import ImageReward

    torch.set_num_threads(req["threads"])
    start = time.perf_counter()
    model = ImageReward()
    state = torch.load(req["checkpoint"], map_location="cpu", weights_only=True, mmap=True)
    model.load_state_dict(state, strict=True)
    dtype = getattr(torch, DTYPES[req.get("dtype", "fp32")])
    model = model.to(device=req.get("device", "cpu"), dtype=dtype).eval()
    _sync(req)
    return model, time.perf_counter() - start


def _sync(req: Dict[str, Any]) -> None:
    if str(req.get("device", "cpu")).startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def _timed(req: Dict[str, Any], work: Callable[[], Any], repeats: int) -> Tuple[List[float], Any]:
    timings, result = [], None
    cpu = req.setdefault("_cpu_seconds", [])
    for _ in range(repeats):
        _sync(req)
        start, start_cpu = time.perf_counter(), time.process_time()
        result = work()
        _sync(req)
        timings.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return timings, result


def _reply(
    timings: List[float], count: int, unit: str, rewards: Any, req: Dict[str, Any]
) -> Dict[str, Any]:
    """Timings of ``count`` items (images or pairs) and the rate of the best timing.

    ``cpu_seconds``: this process's CPU time (all threads) in each timed call, which
    other load on a shared machine disturbs less than the wall time."""
    return {"seconds": timings, "cpu_seconds": req.get("_cpu_seconds", [])[-len(timings):],
            "count": count, "unit": unit, f"{unit}_per_second": count / min(timings),
            "rewards": rewards, **_gpu_memory(req)}


def _gpu_memory(req: Dict[str, Any]) -> Dict[str, float]:
    if not str(req.get("device", "cpu")).startswith("cuda"):
        return {}
    import torch

    return {"peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20}


def load(req: Dict[str, Any]) -> Dict[str, Any]:
    import torch  # noqa: F401  (imports are not part of the load time)

    if req["impl"] == "imscore":
        import imscore.imreward.model  # noqa: F401
    else:
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


def _score_batch(model, req: Dict[str, Any], pixels_or_images: Any, prompt: str) -> List[float]:
    """One batched call: imscore's ``score`` on [0, 1] tensors, our ``inference_rank``
    on PIL images or ``score_tensors`` on [0, 1] tensors."""
    if req["impl"] == "imscore":
        scores = model.score(pixels_or_images, [prompt] * len(pixels_or_images))
        return scores.float().reshape(-1).tolist()
    if isinstance(pixels_or_images, list):
        return model.inference_rank(prompt, pixels_or_images)[1]
    return model.score_tensors(pixels_or_images, prompt).float().tolist()


def batch(req: Dict[str, Any]) -> Dict[str, Any]:
    """End to end on decoded images: ``count`` files of one size, one prompt, one call.

    imscore gets them as one ``[N, 3, H, W]`` tensor in [0, 1] (in its dtype, on the
    device), as its ``score`` expects; ours as the PIL images ``inference_rank`` takes.
    Both resize, crop, normalise, tokenise and run the model inside the timed call.
    """
    import numpy as np
    import torch
    from PIL import Image

    model, _ = _load(req)
    images = [Image.open(path).convert("RGB") for path in req["images"]]
    if req["impl"] == "imscore":
        arrays = np.stack([np.asarray(image) for image in images])
        inputs: Any = torch.from_numpy(arrays).permute(0, 3, 1, 2).float().div(255)
        inputs = inputs.to(req.get("device", "cpu"), dtype=next(model.parameters()).dtype)
    else:
        inputs = images
    return _timed_batches(model, req, inputs)


def tensors(req: Dict[str, Any]) -> Dict[str, Any]:
    """The whole model on ``count`` pre-made ``image_size`` px tensors in [0, 1], one prompt."""
    import torch

    model, _ = _load(req)
    size = req.get("image_size", 224)
    generator = torch.Generator().manual_seed(0)
    pixels = torch.rand(req["count"], 3, size, size, generator=generator)
    dtype = next(model.parameters()).dtype if req["impl"] == "imscore" else torch.float32
    return _timed_batches(model, req, pixels.to(req.get("device", "cpu"), dtype=dtype))


def _timed_batches(model, req: Dict[str, Any], inputs: Any) -> Dict[str, Any]:
    import torch

    prompt = req["prompt"]
    with torch.no_grad():
        _score_batch(model, req, inputs[:2], prompt)  # warm-up
        timings, rewards = _timed(
            req, lambda: _score_batch(model, req, inputs, prompt), req.get("repeats", 3)
        )
    return _reply(timings, len(inputs), "images", rewards, req)


def flops(req: Dict[str, Any]) -> Dict[str, Any]:
    """FLOPs that one (prompt, image) pair executes, counted by torch's FlopCounterMode
    (matrix products and attention) on the loaded model."""
    import os

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    # The counter knows aten's products, not oneDNN's private linear op: count ours on
    # the plain path (the same products).
    os.environ["IMAGEREWARD_ONEDNN_LINEAR"] = "0"
    model, _ = _load(req)
    dtype = next(model.parameters()).dtype if req["impl"] == "imscore" else torch.float32
    pixels = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    pixels = pixels.to(req.get("device", "cpu"), dtype=dtype)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        _score_batch(model, req, pixels, req["prompt"])
    return {"flops_per_pair": counter.get_total_flops()}


def gemm(req: Dict[str, Any]) -> Dict[str, Any]:
    """The machine's matrix-product ceiling: the four linear layers of a ViT-L block on
    ``rows`` tokens (8 images of 197), each dtype, through ``F.linear`` (MKL for
    float32, oneDNN for bfloat16), through oneDNN's linear op, and through oneDNN's
    linear op on a weight packed beforehand into its blocked layout; best of
    ``repeats`` after a warm-up. The ceiling of a dtype is the fastest of the three."""
    import torch
    import torch.nn.functional as F

    from imagereward.dtypes import cpu_has_fast

    torch.set_num_threads(req["threads"])
    rows, width = req.get("rows", 8 * 197), 1024
    shapes = {"qkv": (width, 3 * width), "proj": (width, width),
              "fc1": (width, 4 * width), "fc2": (4 * width, width)}
    # path -> (the weight as that path takes it, the linear op)
    unchanged = lambda w: w  # noqa: E731
    paths = {"F.linear": (unchanged, F.linear)}
    try:
        onednn = torch.ops.mkldnn._linear_pointwise
        pack = torch.ops.mkldnn._reorder_linear_weight
        onednn_linear = lambda x, w, b: onednn(x, w, b, "none", [], "")  # noqa: E731
        paths["onednn"] = (unchanged, onednn_linear)
        paths["onednn-packed"] = (lambda w: pack(w, None), onednn_linear)
    except (AttributeError, RuntimeError):
        pass
    generator = torch.Generator().manual_seed(0)
    out: Dict[str, Any] = {}
    for name in req["dtypes"]:
        dtype = getattr(torch, DTYPES[name])
        entry: Dict[str, Any] = {}
        for path, (prepare, linear) in paths.items():
            if path != "F.linear" and dtype != torch.float32 and not cpu_has_fast(dtype):
                continue  # oneDNN refuses half precision without AVX-512 (or AVX-NE-CONVERT)
            per_shape, total_flops, total_seconds, total_cpu = {}, 0.0, 0.0, 0.0
            for shape, (fan_in, fan_out) in shapes.items():
                x = torch.randn(rows, fan_in, generator=generator).to(dtype)
                weight = torch.randn(fan_out, fan_in, generator=generator)
                weight = weight.mul(fan_in**-0.5).to(dtype)
                bias = torch.zeros(fan_out, dtype=dtype)
                with torch.no_grad():
                    weight = prepare(weight)
                    linear(x, weight, bias)
                    work = lambda: linear(x, weight, bias)  # noqa: E731
                    repeats = req.get("repeats", 5)
                    best = min(_timed(req, work, repeats)[0])
                    best_cpu = min(req["_cpu_seconds"][-repeats:])
                count = 2.0 * rows * fan_in * fan_out
                per_shape[shape] = count / best / 1e9
                total_flops, total_seconds = total_flops + count, total_seconds + best
                total_cpu += best_cpu
            # Per CPU-second: comparable with the sides' CPU times (one thread: the same).
            entry[path] = {"gflops": total_flops / total_seconds / 1e9,
                           "gflops_per_cpu_second": total_flops / total_cpu / 1e9,
                           "per_shape_gflops": per_shape}
        best_path = max(entry, key=lambda k: entry[k]["gflops"])
        out[name] = {"gflops": entry[best_path]["gflops"], "path": best_path, "paths": entry}
    return {"ceiling": out, "torch": torch.__version__, "threads": req["threads"]}


def calibrate(req: Dict[str, Any]) -> Dict[str, Any]:
    """Our int8 calibration of the checkpoint (bf16), on ``images`` with ``prompt``."""
    from imagereward.int8 import calibrate as calibrate_int8

    model, _ = _load(dict(req, dtype="bf16"))
    calibration = calibrate_int8(model, [req["prompt"]] * len(req["images"]), req["images"])
    calibration.save(req["output"])
    return {"layers": len(calibration.ranges), "pairs": calibration.pairs}


def versions(req: Dict[str, Any]) -> Dict[str, Any]:
    """This side's torch build and the CPU features it reports."""
    import torch

    info = {"torch": torch.__version__, "python": sys.version.split()[0],
            "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    if req["impl"] == "imscore":
        import importlib.metadata as metadata

        info.update({name: metadata.version(name)
                     for name in ("imscore", "transformers", "torchvision")})
    return info


COMMANDS = {"load": load, "rank": rank, "eval": evaluate, "matrix": matrix, "model": model_alone,
            "batch": batch, "tensors": tensors, "flops": flops, "gemm": gemm, "versions": versions,
            "calibrate": calibrate}


def main() -> None:
    command, request, reply = sys.argv[1:4]
    with open(request) as handle:
        req = json.load(handle)
    with open(reply, "w") as handle:
        json.dump(COMMANDS[command](req), handle)


if __name__ == "__main__":
    main()
