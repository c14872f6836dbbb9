"""The Ray Data path against in-process ``score_batch``: same images, same model, one run.

    flock /tmp/imagereward-cpu.lock python benchmarks/ray_data.py            # 200 images
    flock /tmp/imagereward-cpu.lock python benchmarks/ray_data.py --images 64

Full-size ImageReward (ViT-L/16 + BERT-base) with random weights, saved once with
``save_pretrained`` under ``--workdir``. Images are 512 px webp files listed in a JSONL
manifest. The in-process side loads the model and times ``score_batch`` over all
images (decoding threads included, loading excluded; malloc set by
``keep_freed_memory`` as in the scoring actors). The Ray side runs the whole
``score-dataset`` job, which starts a private Ray on this machine as the command does
(its start and the job's preprocessing probe are reported as ``wall_with_probe_seconds``,
not counted in the rate): its time runs from the
start of Ray Data's execution to the last part file written, so it includes the
actor starting and loading the model; the rate after the first fragment is printed
too. Scores of both sides are compared. The two sides alternate for ``--rounds``
rounds (the in-process model stays loaded, idle while Ray runs), and each round's
ratio is reported with their median, since a shared host's speed drifts.

``--commands`` times instead the two commands a user chooses between, as whole
processes (Python start, imports, model load; for ``score-dataset`` also its private
Ray), alternating for ``--rounds`` rounds, outputs removed before each run:
``imagereward score --input M --output F`` and ``imagereward score-dataset M --output D``,
both with their default threads, ``--batch-size``, ``--dtype`` and ``-q``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "tests"))

from helpers import BERT_VOCAB, TEST_JSON, random_state_dict, tiny_config  # noqa: E402


def random_model(workdir: Path, tiny: bool = False) -> Path:
    """A random-weight ImageReward folder (config.json + model.safetensors): full size,
    or with ``tiny`` a few-thousand-parameter one at 224 px (a smoke run of this script)."""
    import torch

    import imagereward
    from imagereward.config import ImageRewardConfig

    folder = workdir / ("imagereward-tiny" if tiny else "imagereward-random")
    if (folder / "model.safetensors").is_file():
        return folder
    config = tiny_config(image_size=224) if tiny else ImageRewardConfig()
    checkpoint = workdir / "ImageReward-random.pt"
    torch.save(random_state_dict(config, seed=0, head_scale=30.0), checkpoint)
    model = imagereward.load(str(checkpoint), config=config, device="cpu")
    imagereward.save_pretrained(model, str(folder))
    checkpoint.unlink()
    return folder


def manifest(workdir: Path, count: int) -> Path:
    """``count`` 512 px webp images with test.json prompts, listed in a JSONL manifest."""
    folder = workdir / "images"
    folder.mkdir(parents=True, exist_ok=True)
    prompts = [item["prompt"] for item in json.loads(TEST_JSON.read_text())]
    rng = np.random.default_rng(0)
    lines = []
    for index in range(count):
        path = folder / f"{index:04d}.webp"
        pixels = rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
        if not path.exists():
            Image.fromarray(pixels).resize((512, 512), Image.BICUBIC).save(path, quality=90)
        lines.append({"id": f"{index:04d}", "prompt": prompts[index % len(prompts)],
                      "image": f"images/{path.name}"})
    path = workdir / f"manifest-{count}.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def in_process(scorer: Any, rows: List[Dict[str, Any]], root: Path) -> Dict[str, Any]:
    start = time.perf_counter()
    scores = scorer.score_batch([r["prompt"] for r in rows], [str(root / r["image"]) for r in rows])
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "images_per_second": len(rows) / seconds,
            "scores": dict(zip([r["id"] for r in rows], scores))}


def on_ray(model: Path, source: Path, output: Path, batch_size: int, threads: int,
           fragment_rows: int, dtype: str) -> Dict[str, Any]:
    import pyarrow.parquet as pq
    import ray

    from imagereward.runners.dataset import DatasetJob, ModelSpec

    shutil.rmtree(output, ignore_errors=True)
    finished: List[float] = []  # the job starts its own private Ray, as the command does
    job = DatasetJob(str(source), str(output), [ModelSpec("ImageReward-v1.0", {"weights": str(model)}, dtype=dtype)],
                     batch_size=batch_size, threads_per_actor=threads, fragment_rows=fragment_rows,
                     progress=False, on_fragment=lambda key: finished.append(time.perf_counter()))
    job.plan()
    start = time.perf_counter()
    summary = job.run()
    wall = time.perf_counter() - start
    ray.shutdown()
    table = pq.read_table(str(output))
    after_first = (summary.rows_scored - fragment_rows) / (finished[-1] - finished[0]) \
        if len(finished) > 1 else float("nan")
    return {"seconds": summary.seconds, "images_per_second": summary.images_per_second,
            "after_first_fragment_images_per_second": after_first, "wall_with_probe_seconds": wall,
            "summary": summary.line(),
            "scores": dict(zip(table.column("id").to_pylist(), table.column("ImageReward-v1.0").to_pylist()))}


def whole_commands(model: Path, source: Path, workdir: Path, args: argparse.Namespace) -> Dict[str, Any]:
    """Both commands as whole processes, alternating; wall seconds per round and scores."""
    import pyarrow.parquet as pq

    command = [sys.executable, "-m", "imagereward"]
    common = ["--checkpoint", str(model), "--dtype", args.dtype, "--batch-size", str(args.batch_size), "-q"]
    scores_file, parts = workdir / "commands-scores.jsonl", workdir / "commands-parts"
    sides = {
        "score --input": (command + ["score", "--input", str(source), "--output", str(scores_file)] + common,
                          lambda: scores_file.unlink(missing_ok=True)),
        "score-dataset": (command + ["score-dataset", str(source), "--output", str(parts)] + common,
                          lambda: shutil.rmtree(parts, ignore_errors=True)),
    }
    seconds: Dict[str, List[float]] = {name: [] for name in sides}
    for round_index in range(args.rounds):
        for name, (argv, clear) in sides.items():
            clear()
            start = time.perf_counter()
            subprocess.run(argv, cwd=str(workdir), check=True, stdout=subprocess.DEVNULL)
            seconds[name].append(time.perf_counter() - start)
            print(f"[ray_data] round {round_index + 1} {name}: {seconds[name][-1]:.1f} s", flush=True)
    local = {r["id"]: r["reward"] for r in map(json.loads, scores_file.read_text().splitlines())}
    table = pq.read_table(str(parts))
    remote = dict(zip(table.column("id").to_pylist(), table.column("ImageReward-v1.0").to_pylist()))
    best = {name: min(values) for name, values in seconds.items()}
    return {"seconds": seconds, "best_seconds": best,
            "score_dataset_over_score_input": best["score --input"] / best["score-dataset"],
            "max_abs_diff": max(abs(local[k] - remote[k]) for k in local)}


def machine() -> Dict[str, Any]:
    import torch

    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
                flags = " ".join(f for f in line.split(":", 1)[1].split() if f in wanted)
                break
    except OSError:
        pass
    import ray

    return {"platform": platform.platform(), "cores": os.cpu_count(), "cpu_flags": flags,
            "torch": torch.__version__, "ray": ray.__version__, "python": platform.python_version(),
            "load_average": os.getloadavg()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=REPO / ".bench" / "ray_data")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--fragment-rows", type=int, default=32)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--tiny", action="store_true", help="a tiny random model: smoke run only")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"], help="both sides")
    parser.add_argument("--commands", action="store_true",
                        help="time `imagereward score --input` against `imagereward score-dataset` as whole commands")
    parser.add_argument("--rounds", type=int, default=2,
                        help="alternating rounds (--commands: the best counts; else each round's ratio and the median)")
    args = parser.parse_args()
    os.environ.setdefault("IMAGEREWARD_BERT_VOCAB", str(BERT_VOCAB))
    os.environ["IMAGEREWARD_OFFLINE"] = os.environ["HF_HUB_OFFLINE"] = "1"
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    model = random_model(workdir, args.tiny)
    source = manifest(workdir, args.images)
    rows = [json.loads(line) for line in source.read_text().splitlines()]
    threads = os.cpu_count() or 1
    results: Dict[str, Any] = {"machine": machine(), "images": len(rows), "batch_size": args.batch_size,
                               "dtype": args.dtype,
                               "model": "tiny random" if args.tiny else "full-size random"}
    print(f"[ray_data] {results['machine']}", flush=True)
    if args.commands:
        results.update(whole_commands(model, source, workdir, args))
        for key, value in results.items():
            print(f"{key}: {value}")
        if args.json:
            args.json.write_text(json.dumps(results, indent=2))
        return 0
    import imagereward
    from imagereward.allocator import keep_freed_memory

    keep_freed_memory()  # as the scoring actors and the commands set malloc (a plain load() does not)
    scorer = imagereward.load(str(model), device="cpu", batch_size=args.batch_size, dtype=args.dtype)
    rounds = []
    for index in range(args.rounds):
        print(f"[ray_data] round {index + 1}: in-process score_batch over {len(rows)} images", flush=True)
        ours = in_process(scorer, rows, workdir)
        print(f"[ray_data] round {index + 1}: Ray Data job over the same images", flush=True)
        ray_side = on_ray(model, source, workdir / "out", args.batch_size, threads, args.fragment_rows,
                          args.dtype)
        diff = max(abs(ours["scores"][k] - ray_side["scores"][k]) for k in ours["scores"])
        rounds.append({
            "in_process_images_per_second": ours["images_per_second"],
            "ray_images_per_second": ray_side["images_per_second"],
            "ray_after_first_fragment_images_per_second": ray_side["after_first_fragment_images_per_second"],
            "ratio": ray_side["images_per_second"] / ours["images_per_second"],
            "after_first_fragment_ratio": ray_side["after_first_fragment_images_per_second"] / ours["images_per_second"],
            "in_process_seconds": ours["seconds"], "ray_seconds": ray_side["seconds"],
            "ray_wall_with_probe_seconds": ray_side["wall_with_probe_seconds"],
            "max_abs_diff": diff, "ray_summary": ray_side["summary"],
        })
        print(f"[ray_data]   in-process {ours['images_per_second']:.2f} images/s, Ray Data "
              f"{ray_side['images_per_second']:.2f} ({rounds[-1]['ratio']:.2f}x whole job, "
              f"{rounds[-1]['after_first_fragment_ratio']:.2f}x after the first fragment), max |diff| {diff:.2e}",
              flush=True)
    results.update({
        "rounds": rounds,
        "ratio_median": statistics.median(r["ratio"] for r in rounds),
        "after_first_fragment_ratio_median": statistics.median(r["after_first_fragment_ratio"] for r in rounds),
        "max_abs_diff": max(r["max_abs_diff"] for r in rounds), "load_average_end": os.getloadavg(),
    })
    for key, value in results.items():
        print(f"{key}: {value}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
