"""The reward server against in-process scoring, in one run, on this machine.

    flock /tmp/imagereward-cpu.lock python benchmarks/serve.py            # full-size random ImageReward
    python benchmarks/serve.py --tiny                                     # smoke run, tiny model
    python benchmarks/serve.py --tiny --soak 600                          # soak: memory and errors

Throughput: the same (prompt, image) pairs scored by ``score_batch`` in this process
(batched, all cores, malloc set by ``keep_freed_memory`` as in the replicas) and by the
server (one replica with all cores) fed by
``--clients`` concurrent clients sending ``--pairs-per-request`` pairs each; the
server's scores are checked against the in-process ones. Latency: single 1-pair
requests, one at a time, against single 1-pair ``score_batch`` calls; the added
latency is the server's percentile minus the in-process one. Both sides are loaded
once and alternate for ``--rounds`` rounds, so that a drift in the machine's speed
on a shared host hits both: the ratio of each round (its in-process phase and the
server phase right after it) is reported, with their median, and the best of each
side. (The in-process model idles while the server runs; both hold their weights.)

Where the CPU goes: the CPU time of every process on the machine during the server's
throughput phase (the model replica, the ingress, Serve's proxy and controller, Ray's
daemons, and this process, whose threads are the clients), per pair. The clients send
``--wire`` bodies (msgpack, ``RewardClient``'s default, or JSON); what a body costs
each side per image, in both formats, is timed alone first (``wire_cost``).

Soak (``--soak SECONDS``): clients score continuously; every ``--sample`` seconds
the replica's resident memory and the error counters are read from ``/metrics``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import queue
import random
import socket
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "tests"))

from helpers import BERT_VOCAB, random_state_dict, tiny_config  # noqa: E402

PROMPTS = [
    "a painting of an ocean with clouds and birds, day time, low depth field effect",
    "a red bicycle leaning on a brick wall",
    "an astronaut riding a horse, photorealistic",
    "a bowl of ramen, studio lighting",
]


# -- inputs -------------------------------------------------------------------------------
def make_model(workdir: Path, tiny: bool) -> str:
    """A random-weight ImageReward (full size unless ``tiny``) saved as a folder; cached."""
    import torch

    import imagereward
    from imagereward.config import ImageRewardConfig

    folder = workdir / ("tiny-model" if tiny else "full-model")
    if (folder / "model.safetensors").is_file():
        return str(folder)
    config = tiny_config(image_size=224) if tiny else ImageRewardConfig()
    path = workdir / ("tiny.pt" if tiny else "full.pt")
    torch.save(random_state_dict(config, head_scale=30.0), path)
    gc.collect()
    model = imagereward.load(str(path), config=config, device="cpu", vocab_file=str(BERT_VOCAB))
    imagereward.save_pretrained(model, str(folder))
    path.unlink()
    return str(folder)


def make_images(count: int, size: int = 512) -> List[np.ndarray]:
    """Distinct noisy wave patterns, as a generator would hand them over (uint8 HWC)."""
    images = []
    for seed in range(count):
        rng = np.random.default_rng(seed)
        y, x = np.mgrid[0:size, 0:size] / size
        freq, phase = rng.uniform(0.5, 6, (2, 3)), rng.uniform(0, 6.3, 3)
        wave = 0.5 + 0.5 * np.sin(2 * np.pi * (freq[0] * x[..., None] + freq[1] * y[..., None]) + phase)
        noisy = wave + rng.normal(0, 0.08, wave.shape)
        images.append((np.clip(noisy, 0, 1) * 255).astype(np.uint8))
    return images


def percentile(values: List[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def machine(threads: int) -> Dict[str, Any]:
    import ray
    import torch

    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_int8", "amx_tile")
                flags = " ".join(f for f in line.split(":", 1)[1].split() if f in wanted)
                break
    except OSError:
        pass
    return {
        "platform": platform.platform(),
        "cores": os.cpu_count(),
        "threads": threads,
        "cpu_flags": flags,
        "torch": torch.__version__,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "ray": ray.__version__,
        "load_average_at_start": os.getloadavg(),
    }


# -- in-process side ------------------------------------------------------------------------
def load_in_process(folder: str, args: argparse.Namespace) -> Any:
    import torch

    import imagereward
    from imagereward.allocator import keep_freed_memory

    torch.set_num_threads(args.threads)
    keep_freed_memory()  # as the server's replicas and the commands set malloc (a plain load() does not)
    model = imagereward.load(folder, device="cpu", vocab_file=str(BERT_VOCAB), batch_size=args.max_batch_size,
                             dtype=args.dtype)
    model.score_batch([PROMPTS[0]] * 2, make_images(2, 64))  # warm-up
    return model


def in_process(model: Any, pairs: List[Tuple[str, np.ndarray]]) -> Dict[str, Any]:
    prompts, images = [p for p, _ in pairs], [i for _, i in pairs]
    start = time.perf_counter()
    scores = model.score_batch(prompts, images)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "pairs_per_second": len(pairs) / seconds, "scores": scores}


def latencies(score: Any, pairs: List[Tuple[str, np.ndarray]], count: int) -> List[float]:
    """Seconds of ``count`` single-pair calls ``score([prompt], [image])``, one at a time."""
    seconds = []
    for index in range(count):
        prompt, image = pairs[index % len(pairs)]
        t0 = time.perf_counter()
        score([prompt], [image])
        seconds.append(time.perf_counter() - t0)
    return seconds


# -- server side ----------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(folder: str, args: argparse.Namespace) -> str:
    import ray
    from ray import serve

    from imagereward.runners.serve import build_app

    env = {"IMAGEREWARD_BERT_VOCAB": str(BERT_VOCAB), "HF_HUB_OFFLINE": "1", "IMAGEREWARD_OFFLINE": "1"}
    ray.init(address="local", num_cpus=args.threads, include_dashboard=False,
             object_store_memory=200 * 2**20, runtime_env={"env_vars": env}, log_to_driver=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(dict(
        checkpoint=folder, cpus_per_replica=args.threads, gpus_per_replica=0, ingress_cpus=0,
        max_batch_size=args.max_batch_size, batch_wait_ms=args.batch_wait_ms, dtype=args.dtype,
    )), name="bench", route_prefix="/")
    return f"http://127.0.0.1:{port}"


def stop_server() -> None:
    import ray
    from ray import serve

    serve.shutdown()
    ray.shutdown()


def process_cpu_seconds() -> Dict[int, Tuple[str, float]]:
    """Each process's name (Ray's actors by their title) and CPU seconds so far."""
    import psutil

    seconds = {}
    for process in psutil.process_iter(["cmdline", "name"]):
        try:
            times = process.cpu_times()
            command = " ".join(process.info["cmdline"] or []) or process.info["name"]
        except psutil.Error:
            continue
        seconds[process.pid] = (command, times.user + times.system)
    return seconds


def process_role(pid: int, command: str) -> str:
    if pid == os.getpid():
        return "clients (this process)"
    for marker, role in (("Model-", "model replica"), ("RewardServer", "ingress"), ("ProxyActor", "Serve proxy"),
                         ("ServeController", "Serve controller"), ("gcs_server", "Ray GCS"),
                         ("raylet", "raylet"), ("ray", "other Ray processes")):
        if marker in command:
            return role
    return "other processes"


def cpu_per_pair(before: Dict[int, Tuple[str, float]], after: Dict[int, Tuple[str, float]], pairs: int,
                 seconds: float) -> Dict[str, Any]:
    """CPU milliseconds per pair of each role between two snapshots, and the cores kept busy."""
    roles: Dict[str, float] = {}
    for pid, (command, total) in after.items():
        used = total - before.get(pid, (command, 0.0))[1]
        role = process_role(pid, command)
        roles[role] = roles.get(role, 0.0) + used
    busy = sum(roles.values())
    return {"ms_per_pair": {role: round(1000 * used / pairs, 2) for role, used in sorted(roles.items(), key=lambda kv: -kv[1])},
            "cores_busy": busy / seconds}


def time_ms(run: Any, repeats: int) -> float:
    """Mean milliseconds of ``run()`` after one warm-up call."""
    run()
    start = time.perf_counter()
    for _ in range(repeats):
        run()
    return 1000 * (time.perf_counter() - start) / repeats


def read_images(content: bytes, msgpack: bool) -> None:
    """What the ingress does with a body before decoding: parse and check it, read each image."""
    from imagereward.runners.serve.app import Body, parse_body
    from imagereward.runners.serve.schemas import ScoreRequest
    from imagereward.wire import read_payload

    for item in parse_body(Body(content, msgpack), ScoreRequest).images:
        read_payload({"data": item.data, "shape": item.shape})


def wire_cost(image: np.ndarray, repeats: int = 20) -> Dict[str, Dict[str, float]]:
    """Milliseconds per image, in each body format: the client's encoding (``encode_body``)
    and the ingress's parsing and checking (``parse_body`` and ``read_payload``), and bytes."""
    from functools import partial

    from imagereward.wire import encode_body, raw_image

    count = 2
    body = {"prompts": [PROMPTS[0]] * count, "images": [raw_image(image)] * count}
    costs = {}
    for wire in ("json", "msgpack"):
        content, _ = encode_body(body, wire)
        costs[wire] = {
            "client_encode_ms": time_ms(partial(encode_body, body, wire), repeats) / count,
            "server_parse_ms": time_ms(partial(read_images, content, wire == "msgpack"), repeats) / count,
            "bytes_per_image": len(content) / count,
        }
    return costs


def server_side(url: str, pairs: List[Tuple[str, np.ndarray]], args: argparse.Namespace) -> Dict[str, Any]:
    from imagereward.client import RewardClient

    requests: "queue.Queue[Tuple[int, int]]" = queue.Queue()
    for start in range(0, len(pairs), args.pairs_per_request):
        requests.put((start, min(start + args.pairs_per_request, len(pairs))))
    scores: List[float] = [float("nan")] * len(pairs)

    def client_loop() -> None:
        with RewardClient(url, timeout=600, wire=args.wire) as client:
            while True:
                try:
                    lo, hi = requests.get_nowait()
                except queue.Empty:
                    return
                chunk = pairs[lo:hi]
                scores[lo:hi] = client.score([p for p, _ in chunk], [i for _, i in chunk])

    cpu_before = process_cpu_seconds()
    before = metric_values(url)
    start = time.perf_counter()
    with ThreadPoolExecutor(args.clients) as pool:
        for future in [pool.submit(client_loop) for _ in range(args.clients)]:
            future.result()
    seconds = time.perf_counter() - start
    cpu = cpu_per_pair(cpu_before, process_cpu_seconds(), len(pairs), seconds)
    after = metric_values(url)

    def grown(name: str) -> float:
        return metric_sum(after, name) - metric_sum(before, name)

    busy = grown("imagereward_forward_seconds_sum")
    return {"seconds": seconds, "pairs_per_second": len(pairs) / seconds, "scores": scores,
            "pairs_per_forward": grown("imagereward_batch_size_sum") / grown("imagereward_batch_size_count"),
            "cpu": cpu, "model_busy_share": busy / seconds, "forward_seconds_per_pair": busy / len(pairs)}


def throughput(args: argparse.Namespace) -> Dict[str, Any]:
    workdir = args.workdir
    folder = make_model(workdir, args.tiny)
    images = make_images(args.images, args.image_size)
    pairs = [(PROMPTS[i % len(PROMPTS)], images[i % len(images)]) for i in range(args.pairs)]
    results: Dict[str, Any] = {"machine": machine(args.threads), "model": "tiny" if args.tiny else "full-size ImageReward (random weights)",
                               "settings": {k: v for k, v in vars(args).items() if k != "workdir"}, "rounds": [],
                               "wire_cost": wire_cost(images[0])}
    print(f"[serve-bench] wire cost per {args.image_size} px raw image: {json.dumps(results['wire_cost'])}", flush=True)
    from imagereward.client import RewardClient

    model = load_in_process(folder, args)
    url = start_server(folder, args)
    try:
        with RewardClient(url, timeout=600, wire=args.wire) as client:
            client.score([pairs[0][0]], [pairs[0][1]])  # warm-up through the whole stack
            for round_index in range(args.rounds):
                print(f"[serve-bench] round {round_index + 1}: in-process, then the server", flush=True)
                local = in_process(model, pairs)
                remote = server_side(url, pairs, args)
                report_round(results, local, remote)
            latency = {"in_process": latencies(model.score_batch, pairs, args.latency_requests),
                       "server": latencies(client.score, pairs, args.latency_requests)}
    finally:
        stop_server()
    ratios = [r["server"]["pairs_per_second"] / r["in_process"]["pairs_per_second"] for r in results["rounds"]]
    best_local = max(r["in_process"]["pairs_per_second"] for r in results["rounds"])
    best_remote = max(r["server"]["pairs_per_second"] for r in results["rounds"])
    lat_local, lat_remote = latency["in_process"] or [float("nan")], latency["server"] or [float("nan")]
    best_round = max(results["rounds"], key=lambda r: r["server"]["pairs_per_second"])
    summary = {
        "wire": args.wire,
        "server_over_in_process_by_round": ratios,
        "server_over_in_process_median": statistics.median(ratios),
        "in_process_pairs_per_second": best_local,
        "server_pairs_per_second": best_remote,
        "server_over_in_process": best_remote / best_local,
        "max_abs_diff": max(r["max_abs_diff"] for r in results["rounds"]),
        "server_cpu_ms_per_pair": best_round["server"]["cpu"]["ms_per_pair"],
        "wire_cost": results["wire_cost"],
        "latency_ms": {
            "in_process_p50": 1000 * percentile(lat_local, 50), "in_process_p99": 1000 * percentile(lat_local, 99),
            "server_p50": 1000 * percentile(lat_remote, 50), "server_p99": 1000 * percentile(lat_remote, 99),
        },
    }
    lat = summary["latency_ms"]
    lat["added_p50"] = lat["server_p50"] - lat["in_process_p50"]
    lat["added_p99"] = lat["server_p99"] - lat["in_process_p99"]
    results["summary"] = summary
    return results


def report_round(results: Dict[str, Any], local: Dict[str, Any], remote: Dict[str, Any]) -> None:
    diff = float(np.max(np.abs(np.asarray(remote["scores"]) - np.asarray(local["scores"]))))
    results["rounds"].append({"in_process": local, "server": remote, "max_abs_diff": diff})
    print(f"[serve-bench]   in-process {local['pairs_per_second']:.3f} pairs/s, "
          f"server {remote['pairs_per_second']:.3f} pairs/s "
          f"({remote['pairs_per_second'] / local['pairs_per_second']:.2f}x; {remote['pairs_per_forward']:.1f} pairs "
          f"per forward pass, the model busy {remote['model_busy_share']:.0%} of the time at "
          f"{remote['forward_seconds_per_pair']:.3f} s per pair against {1 / local['pairs_per_second']:.3f} "
          f"in-process), max |diff| {diff:.2e}", flush=True)
    print(f"[serve-bench]   CPU ms per pair during the server run: {json.dumps(remote['cpu']['ms_per_pair'])}, "
          f"{remote['cpu']['cores_busy']:.2f} cores busy", flush=True)


def metric_sum(values: Dict[str, float], name: str) -> float:
    return sum(v for k, v in values.items() if k.startswith(name + "{"))


# -- soak -----------------------------------------------------------------------------------
def metric_values(url: str) -> Dict[str, float]:
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    values: Dict[str, float] = {}
    for family in text_string_to_metric_families(httpx.get(url + "/metrics", timeout=30).text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            values[f"{sample.name}{{{labels}}}"] = sample.value
    return values


def soak(args: argparse.Namespace) -> Dict[str, Any]:
    from imagereward.client import RewardClient

    folder = make_model(args.workdir, args.tiny)
    images = make_images(16, size=256)
    url = start_server(folder, args)
    stop = threading.Event()
    client_errors: List[str] = []
    counts = {"requests": 0, "pairs": 0}
    lock = threading.Lock()

    def client_loop(seed: int) -> None:
        rng = random.Random(seed)
        with RewardClient(url, timeout=120, wire=args.wire) as client:
            while not stop.is_set():
                k = rng.randint(1, 8)
                try:
                    client.score([rng.choice(PROMPTS) for _ in range(k)], [rng.choice(images) for _ in range(k)])
                    with lock:
                        counts["requests"] += 1
                        counts["pairs"] += k
                except Exception as error:  # recorded, and the soak goes on
                    client_errors.append(f"{type(error).__name__}: {error}")
                time.sleep(args.pause)

    samples = []
    start = time.monotonic()
    try:
        with ThreadPoolExecutor(args.clients) as pool:
            workers = [pool.submit(client_loop, seed) for seed in range(args.clients)]
            while time.monotonic() - start < args.soak:
                time.sleep(args.sample)
                values = metric_values(url)
                errors = sum(v for k, v in values.items() if k.startswith("imagereward_errors_total"))
                sample = {
                    "t_s": round(time.monotonic() - start, 1),
                    "rss_mb": values["process_resident_memory_bytes{}"] / 2**20,
                    "requests": counts["requests"], "pairs": counts["pairs"],
                    "server_errors": errors, "client_errors": len(client_errors),
                }
                samples.append(sample)
                print(f"[soak] {json.dumps(sample)}", flush=True)
            stop.set()
            for worker in workers:
                worker.result()
    finally:
        stop.set()
        stop_server()
    rss = [s["rss_mb"] for s in samples]
    half = len(rss) // 2
    return {
        "machine": machine(args.threads), "model": "tiny" if args.tiny else "full-size",
        "seconds": args.soak, "clients": args.clients, "samples": samples,
        "summary": {
            "requests": counts["requests"], "pairs": counts["pairs"],
            "rss_mb_first": rss[0], "rss_mb_last": rss[-1], "rss_mb_max": max(rss),
            "rss_mb_mean_first_half": statistics.mean(rss[:half] or rss),
            "rss_mb_mean_second_half": statistics.mean(rss[half:]),
            "server_errors": samples[-1]["server_errors"], "client_errors": len(client_errors),
            "client_error_examples": client_errors[:5],
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=REPO / ".bench" / "serve")
    parser.add_argument("--tiny", action="store_true", help="a tiny random model instead of the full size")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads on each side")
    parser.add_argument("--pairs", type=int, default=64, help="pairs scored per side and round")
    parser.add_argument("--images", type=int, default=16, help="distinct images")
    parser.add_argument("--image-size", type=int, default=512, help="their side, in pixels")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--pairs-per-request", type=int, default=2)
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"], help="both sides")
    parser.add_argument("--batch-wait-ms", type=float, default=10.0)
    parser.add_argument("--wire", default="msgpack", choices=["msgpack", "json"], help="the clients' body format")
    parser.add_argument("--latency-requests", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--soak", type=float, help="run a soak of this many seconds instead")
    parser.add_argument("--sample", type=float, default=30.0, help="soak: seconds between samples")
    parser.add_argument("--pause", type=float, default=0.0, help="soak: seconds each client waits between requests")
    parser.add_argument("--json", type=Path, help="write all figures here")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("IMAGEREWARD_BERT_VOCAB", str(BERT_VOCAB))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    results = soak(args) if args.soak else throughput(args)
    print(json.dumps(results["machine"], indent=2))
    print(json.dumps(results["summary"], indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
