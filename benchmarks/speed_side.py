"""One timed workload in a fresh process, for either implementation.

    python speed_side.py COMMAND REQUEST.json REPLY.json

Runs under the reference environment (``impl: reference``) or ours (``impl: ours``).
Both go through the original API, ``import ImageReward as RM`` (ours is the drop-in
shim), so the code timed is what a user of either package would write.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any, Dict, List


def _peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM; ru_maxrss would count the parent's)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError("no VmHWM in /proc/self/status")


def _load(req: Dict[str, Any]):
    import torch
    import ImageReward as RM

    torch.set_num_threads(req["threads"])
    kwargs: Dict[str, Any] = {}
    if req["impl"] == "ours":
        kwargs = {"dtype": req.get("dtype", "fp32"), "batch_size": req.get("batch_size", 16)}
    if req.get("med_config"):
        kwargs["med_config"] = req["med_config"]
    start = time.perf_counter()
    model = RM.load(req["checkpoint"], device="cpu", **kwargs)
    return model, time.perf_counter() - start


def load(req: Dict[str, Any]) -> Dict[str, Any]:
    import torch  # noqa: F401  (imports are not part of the load time)
    import ImageReward  # noqa: F401

    before = _peak_rss_mb()
    _, seconds = _load(req)
    return {"seconds": seconds, "peak_rss_mb": _peak_rss_mb(), "rss_before_load_mb": before}


def rank(req: Dict[str, Any]) -> Dict[str, Any]:
    import torch

    model, _ = _load(req)
    images: List[str] = req["images"]
    with torch.no_grad():
        model.inference_rank(req["prompt"], images[:2])  # warm-up
        timings, rewards = [], None
        for _ in range(req["repeats"]):
            start = time.perf_counter()
            _, rewards = model.inference_rank(req["prompt"], images)
            timings.append(time.perf_counter() - start)
    best = min(timings)
    return {"seconds": timings, "images_per_second": len(images) / best, "rewards": rewards}


def evaluate(req: Dict[str, Any]) -> Dict[str, Any]:
    import torch

    model, _ = _load(req)
    rewards = []
    with torch.no_grad():
        model.inference_rank(req["items"][0]["prompt"], req["items"][0]["images"][:2])  # warm-up
        start = time.perf_counter()
        for item in req["items"]:
            rewards.append(model.inference_rank(item["prompt"], item["images"])[1])
        seconds = time.perf_counter() - start
    count = sum(len(item["images"]) for item in req["items"])
    return {"seconds": seconds, "images": count, "images_per_second": count / seconds, "rewards": rewards}


COMMANDS = {"load": load, "rank": rank, "eval": evaluate}


def main() -> None:
    command, request, reply = sys.argv[1:4]
    with open(request) as handle:
        req = json.load(handle)
    with open(reply, "w") as handle:
        json.dump(COMMANDS[command](req), handle)


if __name__ == "__main__":
    main()
