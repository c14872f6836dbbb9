"""Speed and memory, ours against image-reward 1.5 and imscore, side by side in one run.

    python benchmarks/speed.py                 # full run against the reference (CPU)
    python benchmarks/speed.py --sides imscore,ours --workloads batch,tensors
                                               # against imscore, with the GEMM ceiling
    python benchmarks/speed.py --tiny          # smoke run of our side on a tiny model (CI)

Every workload runs in a fresh process (speed_side.py) for each implementation,
one after the other on the same machine, on the same random-weight checkpoint in
the original format. Prints a table of absolute figures and ratios and writes
JSON (``--json``). Ratios are ours relative to the reference: for speed, higher
is better; for times and memory, lower is better.

With imscore as a side (its own environment, see refenv.py) the run also measures
the machine's matrix-product ceiling (the linear layers of a ViT-L block, each
dtype, alternating with the workloads), counts the FLOPs of one (prompt, image)
pair on each side, and reports every rate as a fraction of that ceiling.
``IMAGEREWARD_OURS_PYTHON`` runs our side on another interpreter, so that both
sides can run on the same torch build.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
from PIL import Image

import refenv
from imagereward.dtypes import cpu_has_fast, resolve_dtype
from fixtures import PROMPTS, _gradient, odd_images

HERE = Path(__file__).resolve().parent


def run_side(impl: str, command: str, request: Dict[str, Any], workdir: Path) -> Dict[str, Any]:
    tag = f"{impl}-{command}-{request.get('dtype', 'fp32')}"
    req_path, reply_path = workdir / f"{tag}.request.json", workdir / f"{tag}.reply.json"
    req_path.write_text(json.dumps(dict(request, impl=impl)))
    subprocess.run(
        [refenv.python_for(impl), str(HERE / "speed_side.py"), command, str(req_path),
         str(reply_path)],
        check=True, env=refenv.side_env(workdir, impl), cwd=str(workdir),
    )
    return json.loads(reply_path.read_text())


def import_seconds(impl: str, workdir: Path, repeats: int = 3) -> float:
    """Median wall time of ``python -c "import ImageReward"`` in a fresh process."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([refenv.python_for(impl), "-c", "import ImageReward"], check=True,
                       env=refenv.side_env(workdir, impl), cwd=str(workdir), capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def eval_items(workdir: Path, prompts: int) -> List[Dict[str, Any]]:
    """The first ``prompts`` prompts of test.json, each with stand-in 512 px webp images."""
    data = json.loads((refenv.REFERENCE_DATA / "test.json").read_text())[:prompts]
    items = []
    rng = np.random.default_rng(0)
    for item in data:
        folder = workdir / "eval_images" / item["id"]
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for k in range(len(item["generations"])):
            path = folder / f"{k}.webp"
            if not path.exists():
                pixels = rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
                Image.fromarray(pixels).resize((512, 512), Image.BICUBIC).save(path, quality=90)
            paths.append(str(path))
        items.append({"prompt": item["prompt"], "images": paths})
    return items


def batch_images(workdir: Path, count: int, size: int = 512) -> List[str]:
    """``count`` different ``size`` x ``size`` PNG images (lossless, so both sides decode
    the same pixels)."""
    folder = workdir / f"batch_{size}"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        path = folder / f"{index}.png"
        if not path.exists():
            Image.fromarray(_gradient(size, size, 200 + index)).save(path)
        paths.append(str(path))
    return paths


def _flat(rewards: List[Any]) -> np.ndarray:
    """A list of rewards, or of per-prompt lists of rewards, as one array."""
    if rewards and isinstance(rewards[0], list):
        return np.concatenate([np.atleast_1d(x) for x in rewards])
    return np.array(rewards)


def _max_diff(a: List[Any], b: List[Any]) -> float:
    return float(np.max(np.abs(_flat(a) - _flat(b))))


def _same_order(a: List[float], b: List[float]) -> bool:
    return list(np.argsort(-np.array(a), kind="stable")) == list(np.argsort(-np.array(b), kind="stable"))


# Which sides run each workload: the reference has no batched tensor API.
WORKLOAD_SIDES = {"rank": ("reference", "ours"), "eval": ("reference", "ours"),
                  "matrix": ("reference", "ours"), "batch": ("imscore", "ours"),
                  "tensors": ("imscore", "ours")}


def run(args: argparse.Namespace) -> Dict[str, Any]:
    workdir: Path = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    images = odd_images(workdir)
    rank_images = [p for p in images if not p.endswith(("huge.jpg", "tiny.png", "exact.png", "cmyk.jpg"))][:10]
    names = args.workloads.split(",")
    items = eval_items(workdir, args.eval_prompts) if "eval" in names else []
    if args.tiny:
        base: Dict[str, Any] = {"checkpoint": str(_tiny_checkpoint(workdir)), "med_config": None}
        impls = ["ours"]
    else:
        from parity import SCORERS

        base = SCORERS["ImageReward-v1.0"].make(workdir)
        impls = args.sides.split(",")
    base.update(threads=args.threads, batch_size=args.batch_size, compile=args.compile)
    results: Dict[str, Any] = {"machine": machine(args.threads), "workloads": {}}
    dtypes = args.dtypes.split(",")
    # "int8": ours with int8 linear layers on the bf16 model, calibrated on the batch images.
    slow = [d for d in dtypes if d != "int8" and not args.force_half and not cpu_has_fast(resolve_dtype(d))]
    if slow:
        print(f"[speed] skipping {slow}: this CPU has no native support for them "
              "(use --force-half to time them anyway)", flush=True)
        results["skipped"] = {d: "no native CPU support" for d in slow}
    fast = [d for d in dtypes if d not in slow]
    count_images = batch_images(workdir, args.batch_images)
    if "int8" in fast:
        base["int8_calibration"] = str(workdir / "int8-calibration.json")
        reply = run_side("ours", "calibrate", dict(base, prompt=PROMPTS[0], images=count_images,
                                                  output=base["int8_calibration"]), workdir)
        print(f"[speed] int8 calibration: {reply['layers']} layers on {reply['pairs']} pairs", flush=True)
    workloads = {
        "rank": ("rank", {"prompt": PROMPTS[0], "images": rank_images, "repeats": args.repeats}),
        "eval": ("eval", {"items": items}),
        "matrix": ("matrix", {"prompts": PROMPTS[:4], "images": rank_images[:6]}),
        "batch": ("batch", {"prompt": PROMPTS[0], "images": count_images, "repeats": args.repeats}),
        "tensors": ("tensors", {"prompt": PROMPTS[0], "count": args.batch_images,
                                "repeats": args.repeats}),
    }
    variants = [("reference", "fp32")] * ("reference" in impls)
    variants += [(impl, d) for impl in ("imscore", "ours") if impl in impls for d in fast
                 if impl == "ours" or d != "int8"]  # int8 is ours alone
    work = results["workloads"]
    peers = "imscore" in impls
    if peers:
        results["sides"] = {impl: run_side(impl, "versions", dict(base), workdir)
                            for impl in impls}
        results["flops_per_pair"] = {
            impl: run_side(impl, "flops", dict(base, dtype="fp32", prompt=PROMPTS[0]),
                           workdir)["flops_per_pair"]
            for impl in ("imscore", "ours") if impl in impls
        }
    for impl, dtype in variants:
        key = f"{impl}-{dtype}"
        work[key] = {}
        if dtype == "fp32" and "load" in names:
            if impl != "imscore":
                print(f"[speed] {key}: import", flush=True)
                work[key]["import_seconds"] = import_seconds(impl, workdir)
            print(f"[speed] {key}: load", flush=True)
            work[key]["load"] = run_side(impl, "load", dict(base, dtype=dtype), workdir)
    # Short workloads alternate between the sides for --rounds rounds, so that a drift
    # in machine speed (shared hosts) hits both; the best timing of all rounds counts.
    # With peers, each round also measures the matrix-product ceiling, best of all rounds.
    for name in [n for n in names if n != "load"]:
        command, extra = workloads[name]
        for round_index in range(1 if name == "eval" else args.rounds):
            if peers:
                print(f"[speed] GEMM ceiling, round {round_index + 1}", flush=True)
                reply = run_side("ours", "gemm", dict(base, dtypes=[d for d in fast if d != "int8"]), workdir)
                results["ceiling"] = best_ceiling(results.get("ceiling"), reply)
            for impl, dtype in variants:
                if impl not in WORKLOAD_SIDES[name]:
                    continue
                key = f"{impl}-{dtype}"
                print(f"[speed] {key}: {name}, round {round_index + 1}", flush=True)
                reply = run_side(impl, command, dict(base, dtype=dtype, **extra), workdir)
                work[key][name] = merge_rounds(work[key].get(name), reply)
            if args.json:  # what is measured so far survives an interrupted run
                args.json.write_text(json.dumps(results, indent=2))
    if "reference-fp32" in results["workloads"]:  # agreement is measured against fp32 only
        results["agreement"] = agreement(results["workloads"], "reference-fp32")
    if peers:
        results["versus_imscore"] = versus(results, "imscore")
        if "imscore-fp32" in results["workloads"]:
            results["agreement_imscore"] = agreement(results["workloads"], "imscore-fp32")
    return results


def best_ceiling(earlier: Optional[Dict[str, Any]], reply: Dict[str, Any]) -> Dict[str, Any]:
    """The best ceiling per dtype over rounds (a busy machine only ever lowers it)."""
    if earlier is None:
        return reply
    best = dict(earlier["ceiling"])
    for dtype, entry in reply["ceiling"].items():
        if dtype not in best or entry["gflops"] > best[dtype]["gflops"]:
            best[dtype] = entry
    return dict(reply, ceiling=best)


def versus(results: Dict[str, Any], peer: str) -> List[Dict[str, Any]]:
    """Ours against ``peer`` per workload and dtype, and each rate as a share of the
    matrix-product ceiling: images/s times FLOPs per pair over ceiling FLOP/s. ``nominal``
    counts the FLOPs of the original computation (the peer's count, prompts padded to
    35 tokens); ``executed`` each side's own count."""
    work, rows = results["workloads"], []
    flops = results.get("flops_per_pair", {})
    ceiling = results.get("ceiling", {}).get("ceiling", {})
    # (our dtype, the peer's): our int8 layers are set against the peer's bf16.
    pairs = (("fp32", "fp32"), ("bf16", "bf16"), ("fp16", "fp16"), ("int8", "bf16"))
    for name in ("batch", "tensors"):
        for dtype, peer_dtype in pairs:
            mine, theirs = work.get(f"ours-{dtype}", {}), work.get(f"{peer}-{peer_dtype}", {})
            if name not in mine or name not in theirs:
                continue
            ours_rate = mine[name]["images_per_second"]
            peer_rate = theirs[name]["images_per_second"]
            label = dtype if dtype == peer_dtype else f"{dtype} (theirs {peer_dtype})"
            row = {"workload": name, "dtype": label, "ours_images_per_second": ours_rate,
                   f"{peer}_images_per_second": peer_rate, "ratio": ours_rate / peer_rate}
            if mine[name].get("cpu_seconds") and theirs[name].get("cpu_seconds"):
                row["cpu_time_ratio"] = min(theirs[name]["cpu_seconds"]) / min(mine[name]["cpu_seconds"])
            if dtype in ceiling and peer in flops:
                top = ceiling[dtype]["gflops"] * 1e9
                row["ceiling_gflops"] = ceiling[dtype]["gflops"]
                row["ours_of_ceiling_nominal"] = ours_rate * flops[peer] / top
                row[f"{peer}_of_ceiling"] = peer_rate * flops[peer] / top
                if "ours" in flops:
                    row["ours_of_ceiling_executed"] = ours_rate * flops["ours"] / top
            rows.append(row)
    return rows


def versus_table(rows: List[Dict[str, Any]], peer: str = "imscore") -> str:
    lines = [f"| workload | dtype | {peer} (img/s) | ours (img/s) | ours / {peer} | same, by CPU "
             f"time | ceiling (GFLOP/s) | {peer} of ceiling | ours of ceiling (nominal) | ours of "
             "ceiling (executed) |", "|---" * 10 + "|"]
    for row in rows:
        cells = [row["workload"], row["dtype"], f"{row[f'{peer}_images_per_second']:.3g}",
                 f"{row['ours_images_per_second']:.3g}", f"**{row['ratio']:.3g}x**"]
        for field, fmt in (("cpu_time_ratio", "{:.3g}x"), ("ceiling_gflops", "{:.0f}"),
                           (f"{peer}_of_ceiling", "{:.2f}"),
                           ("ours_of_ceiling_nominal", "{:.2f}"),
                           ("ours_of_ceiling_executed", "{:.2f}")):
            cells.append(fmt.format(row[field]) if field in row else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def merge_rounds(earlier: Optional[Dict[str, Any]], reply: Dict[str, Any]) -> Dict[str, Any]:
    """One reply for all rounds of a workload: every timing, the rate of the best one."""
    if earlier is None:
        return reply
    seconds = earlier["seconds"] + reply["seconds"]
    cpu_seconds = earlier.get("cpu_seconds", []) + reply.get("cpu_seconds", [])
    unit = reply["unit"]
    return dict(reply, seconds=seconds, cpu_seconds=cpu_seconds,
                **{f"{unit}_per_second": reply["count"] / min(seconds)})


# CPU features that decide which matrix-product kernels run.
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8")


def machine(threads: int) -> Dict[str, Any]:
    return {"platform": platform.platform(), "processor": _cpu_name(), "cores": os.cpu_count(),
            "threads": threads, "cpu_flags": _cpu_flags(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def _cpu_flags() -> List[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                present = set(line.split(":", 1)[1].split())
                return [flag for flag in CPU_FLAGS if flag in present]
    except OSError:
        pass
    return []


def agreement(workloads: Dict[str, Any], baseline: str) -> Dict[str, Any]:
    """Max |difference| and ranking agreement of every variant against ``baseline``."""
    ref = workloads[baseline]
    out: Dict[str, Any] = {}
    for key, entry in workloads.items():
        if key == baseline:
            continue
        row: Dict[str, Any] = {}
        for name in ("rank", "model", "batch", "tensors"):
            if name in entry and name in ref:
                row[f"{name}_max_abs_diff"] = _max_diff(entry[name]["rewards"], ref[name]["rewards"])
                row[f"{name}_same_order"] = _same_order(entry[name]["rewards"], ref[name]["rewards"])
        for name in ("eval", "matrix"):
            if name in entry and name in ref:
                mine, theirs = entry[name]["rewards"], ref[name]["rewards"]
                row[f"{name}_max_abs_diff"] = _max_diff(mine, theirs)
                row[f"{name}_prompts_same_order"] = sum(_same_order(a, b) for a, b in zip(mine, theirs))
                row[f"{name}_prompts"] = len(theirs)
        out[key] = row
    return out


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _tiny_checkpoint(workdir: Path) -> Path:
    """A tiny random ImageReward saved in our folder format (no reference needed)."""
    sys.path.insert(0, str(refenv.REPO / "tests"))
    import torch
    from helpers import random_state_dict, tiny_config

    import imagereward

    folder = workdir / "tiny-model"
    config = tiny_config(image_size=224)
    path = workdir / "tiny.pt"
    torch.save(random_state_dict(config), path)
    os.environ["IMAGEREWARD_BERT_VOCAB"] = str(refenv.BERT_VOCAB)
    imagereward.save_pretrained(imagereward.load(str(path), config=config, device="cpu"), str(folder))
    return folder


ROWS = [
    ("`import ImageReward` (s)", lambda e: e.get("import_seconds"), None),
    ("load to ready (s)", lambda e: e.get("load", {}).get("seconds"), None),
    ("load peak RSS (MB)", lambda e: e.get("load", {}).get("peak_rss_mb"), None),
    ("inference_rank, {n} images (img/s)", lambda e: e.get("rank", {}).get("images_per_second"),
     lambda e: len(e["rank"]["rewards"])),
    ("eval-shaped, {n} prompts (img/s)", lambda e: e.get("eval", {}).get("images_per_second"),
     lambda e: len(e["eval"]["rewards"])),
    ("{n} prompts x images matrix (pairs/s)", lambda e: e.get("matrix", {}).get("pairs_per_second"),
     lambda e: len(e["matrix"]["rewards"])),
    ("model alone, {n} images (img/s)", lambda e: e.get("model", {}).get("images_per_second"),
     lambda e: len(e["model"]["rewards"])),
    ("{n} decoded 512 px images, one prompt, one call (img/s)",
     lambda e: e.get("batch", {}).get("images_per_second"), lambda e: len(e["batch"]["rewards"])),
    ("whole model, {n} 224 px tensors (img/s)",
     lambda e: e.get("tensors", {}).get("images_per_second"),
     lambda e: len(e["tensors"]["rewards"])),
]


def table(results: Dict[str, Any], baseline: str = "reference-fp32") -> str:
    """Markdown: a column per variant, ratios against ``baseline`` in brackets."""
    work = results["workloads"]
    ref: Optional[Dict[str, Any]] = work.get(baseline)
    keys = list(work)
    lines = ["| workload | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for label, get, count in ROWS:
        present = [key for key in keys if get(work[key]) is not None]
        if not present:
            continue
        if count is not None:
            label = label.format(n=count(work[present[0]]))
        cells = []
        for key in keys:
            value = get(work[key])
            cell = "" if value is None else f"{value:.3g}"
            base = get(ref) if ref else None
            if value is not None and base and key != baseline:
                cell += f" ({value / base:.3g}x)"
            cells.append(cell)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=refenv.REPO / ".bench" / "speed")
    parser.add_argument("--tiny", action="store_true", help="our side only, on a tiny random model")
    parser.add_argument("--dtypes", default="fp32,bf16",
                        help="our precisions to time; int8: int8 linear layers on the bf16 model")
    parser.add_argument("--force-half", action="store_true",
                        help="time bf16/fp16 even on a CPU without native support for them")
    parser.add_argument("--sides", default="reference,ours",
                        help="comma list of reference, imscore, ours")
    parser.add_argument("--workloads", default="load,rank,eval,matrix",
                        help="comma list of load, rank, eval, matrix, batch, tensors")
    parser.add_argument("--batch-images", type=int, default=8,
                        help="images in the batch and tensors workloads")
    parser.add_argument("--compile", action="store_true", help="load ours with compile=True")
    parser.add_argument("--eval-prompts", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per rank process")
    parser.add_argument("--rounds", type=int, default=2,
                        help="alternating rounds of each short workload per side")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--json", type=Path, help="write all figures here")
    parser.add_argument("--markdown", type=Path, help="write the table here")
    args = parser.parse_args()
    results = run(args)
    baseline = "reference-fp32" if "reference-fp32" in results["workloads"] else "imscore-fp32"
    text = table(results, baseline)
    if "versus_imscore" in results:
        text += "\n\n" + versus_table(results["versus_imscore"])
    print(text)
    for dtype, why in results.get("skipped", {}).items():
        print(f"not timed: ours-{dtype} ({why})")
    for name in ("sides", "flops_per_pair", "ceiling", "agreement", "agreement_imscore"):
        if name in results:
            print(name, json.dumps(results[name], indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    if args.markdown:
        args.markdown.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
