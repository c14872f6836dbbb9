"""Speed and memory, ours against image-reward 1.5, side by side in one run.

    python benchmarks/speed.py                 # full run against the reference (CPU)
    python benchmarks/speed.py --tiny          # smoke run of our side on a tiny model (CI)

Every workload runs in a fresh process (speed_side.py) for each implementation,
one after the other on the same machine, on the same random-weight checkpoint in
the original format. Prints a table of absolute figures and ratios and writes
JSON (``--json``). Ratios are ours relative to the reference: for speed, higher
is better; for times and memory, lower is better.
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
from fixtures import PROMPTS, odd_images

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


def _flat(rewards: List[Any]) -> np.ndarray:
    """A list of rewards, or of per-prompt lists of rewards, as one array."""
    if rewards and isinstance(rewards[0], list):
        return np.concatenate([np.atleast_1d(x) for x in rewards])
    return np.array(rewards)


def _max_diff(a: List[Any], b: List[Any]) -> float:
    return float(np.max(np.abs(_flat(a) - _flat(b))))


def _same_order(a: List[float], b: List[float]) -> bool:
    return list(np.argsort(-np.array(a), kind="stable")) == list(np.argsort(-np.array(b), kind="stable"))


def run(args: argparse.Namespace) -> Dict[str, Any]:
    workdir: Path = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    images = odd_images(workdir)
    rank_images = [p for p in images if not p.endswith(("huge.jpg", "tiny.png", "exact.png", "cmyk.jpg"))][:10]
    items = eval_items(workdir, args.eval_prompts)
    if args.tiny:
        base: Dict[str, Any] = {"checkpoint": str(_tiny_checkpoint(workdir)), "med_config": None}
        impls = ["ours"]
    else:
        from parity import SCORERS

        base = SCORERS["ImageReward-v1.0"].make(workdir)
        impls = ["reference", "ours"]
    base.update(threads=args.threads, batch_size=args.batch_size, compile=args.compile)
    results: Dict[str, Any] = {"machine": machine(args.threads), "workloads": {}}
    dtypes = args.dtypes.split(",")
    slow = [d for d in dtypes if not args.force_half and not cpu_has_fast(resolve_dtype(d))]
    if slow:
        print(f"[speed] skipping {slow}: this CPU has no native support for them "
              "(use --force-half to time them anyway)", flush=True)
        results["skipped"] = {d: "no native CPU support" for d in slow}
    workloads = {
        "rank": ("rank", {"prompt": PROMPTS[0], "images": rank_images, "repeats": args.repeats}),
        "eval": ("eval", {"items": items}),
        "matrix": ("matrix", {"prompts": PROMPTS[:4], "images": rank_images[:6]}),
    }
    variants = [("reference", "fp32")] * ("reference" in impls) + [("ours", d) for d in dtypes if d not in slow]
    work = results["workloads"]
    for impl, dtype in variants:
        key = f"{impl}-{dtype}"
        work[key] = {}
        if dtype == "fp32":
            print(f"[speed] {key}: import, load", flush=True)
            work[key]["import_seconds"] = import_seconds(impl, workdir)
            work[key]["load"] = run_side(impl, "load", dict(base, dtype=dtype), workdir)
    # Short workloads alternate between the sides for --rounds rounds, so that a drift
    # in machine speed (shared hosts) hits both; the best timing of all rounds counts.
    for name in args.workloads.split(","):
        command, extra = workloads[name]
        for round_index in range(1 if name == "eval" else args.rounds):
            for impl, dtype in variants:
                key = f"{impl}-{dtype}"
                print(f"[speed] {key}: {name}, round {round_index + 1}", flush=True)
                reply = run_side(impl, command, dict(base, dtype=dtype, **extra), workdir)
                work[key][name] = merge_rounds(work[key].get(name), reply)
    if "reference" in impls:
        results["agreement"] = agreement(results["workloads"], "reference-fp32")
    return results


def merge_rounds(earlier: Optional[Dict[str, Any]], reply: Dict[str, Any]) -> Dict[str, Any]:
    """One reply for all rounds of a workload: every timing, the rate of the best one."""
    if earlier is None:
        return reply
    seconds = earlier["seconds"] + reply["seconds"]
    unit = reply["unit"]
    return dict(reply, seconds=seconds, **{f"{unit}_per_second": reply["count"] / min(seconds)})


def machine(threads: int) -> Dict[str, Any]:
    return {"platform": platform.platform(), "processor": _cpu_name(), "cores": os.cpu_count(),
            "threads": threads}


def agreement(workloads: Dict[str, Any], baseline: str) -> Dict[str, Any]:
    """Max |difference| and ranking agreement of every variant against ``baseline``."""
    ref = workloads[baseline]
    out: Dict[str, Any] = {}
    for key, entry in workloads.items():
        if key == baseline:
            continue
        row: Dict[str, Any] = {}
        for name in ("rank", "model"):
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
    parser.add_argument("--dtypes", default="fp32,bf16", help="our precisions to time")
    parser.add_argument("--force-half", action="store_true",
                        help="time bf16/fp16 even on a CPU without native support for them")
    parser.add_argument("--workloads", default="rank,eval,matrix",
                        help="comma list of rank, eval, matrix")
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
    text = table(results)
    print(text)
    for dtype, why in results.get("skipped", {}).items():
        print(f"not timed: ours-{dtype} ({why})")
    if "agreement" in results:
        print(json.dumps(results["agreement"], indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    if args.markdown:
        args.markdown.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
