"""One three-model server against three one-model servers, on the same requests, in one run.

    flock /tmp/imagereward-cpu.lock python benchmarks/multi_serve.py
    python benchmarks/multi_serve.py --requests 8 --clients 4          # smoke run

The models are ImageReward-v1.0, PickScore and HPSv2.1 with tiny random weights (the
serving cost is what differs between the two set-ups; the models' own compute is the
same on both), fed ``--images-per-request`` raw 512 px images per request (a GRPO
group) by ``--clients`` concurrent clients, ``--requests`` requests in all:

- **one server**: one ``/rewards`` request naming the three models (each image sent
  once, decoded once, its pixels fanned out to the three model deployments);
- **three servers**: three ``imagereward serve``-style applications, one model each;
  every request goes to all three at once (each image sent and decoded three times)
  and is done when the slowest answers.

Both run in one private Ray with the same CPUs, one after the other, for ``--rounds``
rounds in alternation (the best round of each counts). Every model replica has one
torch thread. The scores of the two set-ups are checked equal. Printed as JSON.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Dict, List


HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))

from helpers import BERT_VOCAB, CLIP_BPE  # noqa: E402
from serve import free_port, machine, make_images, percentile  # noqa: E402

MODELS = ["ImageReward-v1.0", "PickScore", "HPSv2.1"]
PROMPTS = [
    "a painting of an ocean with clouds and birds, day time, low depth field effect",
    "a red bicycle leaning on a brick wall",
    "an astronaut riding a horse, photorealistic",
    "a bowl of ramen, studio lighting",
]


def save_models(workdir: Path) -> Dict[str, str]:
    """The three tiny random-weight scorers as saved folders."""
    import imagereward
    from scorer_files import write_all

    originals = write_all(workdir / "originals")
    folders = {}
    for name in MODELS:
        files, options = originals[name]
        model = imagereward.load(name, files=files, device="cpu", **options)
        folders[name] = imagereward.save_pretrained(model, str(workdir / "saved" / name))
    return folders


def request_bodies(args: argparse.Namespace) -> List[Dict[str, Any]]:
    images = make_images(args.images_per_request * 4, size=512)
    raw = [{"data": base64.b64encode(x.tobytes()).decode(), "shape": list(x.shape)} for x in images]
    bodies = []
    for index in range(args.requests):
        start = (index % 4) * args.images_per_request
        count = args.images_per_request
        bodies.append({"prompts": [PROMPTS[(index + i) % len(PROMPTS)] for i in range(count)],
                       "images": raw[start:start + count]})
    return bodies


def deploy(setup: str, folders: Dict[str, str], args: argparse.Namespace) -> Dict[str, str]:
    """The application(s) of ``setup``; returns the URL of each model's endpoint."""
    from ray import serve

    from imagereward.runners.serve import build_app

    common = dict(cpus_per_replica=0, gpus_per_replica=0, ingress_cpus=0, max_batch_size=args.max_batch_size,
                  batch_wait_ms=args.batch_wait_ms, max_pairs=256)
    if setup == "one server":
        models = [{"model": name, "checkpoint": folders[name]} for name in MODELS]
        serve.run(build_app(dict(common, models=models)), name="multi", route_prefix="/multi")
        return {name: "/multi" for name in MODELS}
    for index, name in enumerate(MODELS):
        serve.run(build_app(dict(common, model=name, checkpoint=folders[name])),
                  name=f"single{index}", route_prefix=f"/single{index}")
    return {name: f"/single{index}" for index, name in enumerate(MODELS)}


def undeploy(setup: str) -> None:
    from ray import serve

    for name in (["multi"] if setup == "one server" else [f"single{i}" for i in range(len(MODELS))]):
        serve.delete(name, _blocking=True)


def run_load(setup: str, base: str, routes: Dict[str, str], bodies: List[Dict[str, Any]],
             args: argparse.Namespace) -> Dict[str, Any]:
    import httpx

    encoded = {
        "one server": [json.dumps(dict(body, models=MODELS)).encode() for body in bodies],
        "three servers": [json.dumps(body).encode() for body in bodies],
    }[setup]
    latencies: List[float] = [0.0] * len(bodies)
    scores: List[Dict[str, List[float]]] = [{}] * len(bodies)
    next_index = iter(range(len(bodies)))
    lock = threading.Lock()
    headers = {"content-type": "application/json"}

    def client() -> None:
        with httpx.Client(base_url=base, timeout=300) as http, ThreadPoolExecutor(len(MODELS)) as fan:
            while True:
                with lock:
                    index = next(next_index, None)
                if index is None:
                    return
                start = time.perf_counter()
                if setup == "one server":
                    reply = http.post(routes[MODELS[0]] + "/rewards", content=encoded[index], headers=headers)
                    reply.raise_for_status()
                    answer = reply.json()["scores"]
                else:
                    replies = list(fan.map(
                        lambda name: http.post(routes[name] + "/score", content=encoded[index], headers=headers),
                        MODELS))
                    for reply in replies:
                        reply.raise_for_status()
                    answer = {name: reply.json()["scores"] for name, reply in zip(MODELS, replies)}
                latencies[index] = time.perf_counter() - start
                scores[index] = answer

    started = time.perf_counter()
    with ThreadPoolExecutor(args.clients) as pool:
        for worker in [pool.submit(client) for _ in range(args.clients)]:
            worker.result()
    seconds = time.perf_counter() - started
    images = len(bodies) * args.images_per_request
    return {
        "seconds": seconds,
        "images_per_second": images / seconds,  # each image scored by all three models
        "p50_ms": 1000 * percentile(latencies, 50),
        "p99_ms": 1000 * percentile(latencies, 99),
        "scores": scores,
    }


def decoded_images(base: str, route: str) -> float:
    import httpx

    for line in httpx.get(base + route + "/metrics", timeout=10).text.splitlines():
        if line.startswith("imagereward_images_decoded_total "):
            return float(line.split()[1])
    return 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=96)
    parser.add_argument("--images-per-request", type=int, default=8)
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--batch-wait-ms", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args()

    from imagereward.tokenizers.clip_bpe import BPE_ENV

    env = {"IMAGEREWARD_BERT_VOCAB": str(BERT_VOCAB), BPE_ENV: str(CLIP_BPE), "HF_HUB_OFFLINE": "1",
           "IMAGEREWARD_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    os.environ.update(env)
    import ray
    from ray import serve

    workdir = Path(tempfile.mkdtemp(prefix="imagereward-multi-serve-"))
    folders = save_models(workdir)
    bodies = request_bodies(args)
    ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, object_store_memory=300 * 2**20,
             runtime_env={"env_vars": env}, log_to_driver=False)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    report: Dict[str, Any] = {"machine": machine(1), "settings": vars(args), "rounds": []}
    best: Dict[str, Dict[str, Any]] = {}
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        for round_index in range(args.rounds):
            setups = ["one server", "three servers"] if round_index % 2 == 0 else ["three servers", "one server"]
            for setup in setups:
                routes = deploy(setup, folders, args)
                run_load(setup, base, routes, bodies[: max(2, args.clients)], args)  # warm-up
                before = decoded_images(base, routes[MODELS[0]]) if setup == "one server" else None
                result = run_load(setup, base, routes, bodies, args)
                if before is not None:
                    result["images_decoded_per_image"] = (
                        (decoded_images(base, routes[MODELS[0]]) - before) / (len(bodies) * args.images_per_request))
                undeploy(setup)
                report["rounds"].append({"setup": setup, **{k: v for k, v in result.items() if k != "scores"}})
                if setup not in best or result["images_per_second"] > best[setup]["images_per_second"]:
                    best[setup] = result
    finally:
        serve.shutdown()
        ray.shutdown()
        shutil.rmtree(workdir, ignore_errors=True)  # three full-size checkpoints
    one, three = best["one server"], best["three servers"]
    difference = max(abs(a - b) for x, y in zip(one["scores"], three["scores"]) for name in MODELS
                     for a, b in zip(x[name], y[name]))
    report["best"] = {setup: {k: v for k, v in result.items() if k != "scores"} for setup, result in best.items()}
    report["one_vs_three"] = {
        "throughput_ratio": one["images_per_second"] / three["images_per_second"],
        "p50_ratio": one["p50_ms"] / three["p50_ms"],
        "p99_ratio": one["p99_ms"] / three["p99_ms"],
        "max_abs_score_difference": difference,
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
