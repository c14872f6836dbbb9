"""Every scorer's share of the machine's matrix-product ceiling, end to end, fp32 and bf16.

    flock /tmp/imagereward-cpu.lock python benchmarks/scorer_ceiling.py
    python benchmarks/scorer_ceiling.py --scorers CLIP,PickScore --images 16 --rounds 3

Each scorer is written with full-size random weights in its original file format (the
writers of ``dtype_cost.py``) and loaded once in fp32 and once in bf16 (``--dtypes``), as
``load(dtype=...)`` does it. The timed call is ``score_batch`` on ``--images`` decoded
512 px images, each with its own prompt from test.json (what an RL trainer sends):
decoded images in, rewards out, preprocessing and tokenising included, with glibc's
malloc set as the commands set it (``keep_freed_memory``). The work of one
pair is counted once per scorer with torch's ``FlopCounterMode`` on the fp32 model, with
linear layers on ATen's path and attention on its math path so that every product is
seen; it is the work this package executes (it skips what no scorer reads, so the
original computations do more), which makes the shares below conservative.

One scorer is in memory at a time. Each of its rounds measures the ceiling (the fastest
path for a ViT-L block's four linear layers, ``speed_side.gemm``, the same as
``speed.py``) and then its models, so a drift in the machine's speed hits both; the
table gives each scorer's median share over the rounds (its rate in a round over that
round's ceiling), its best rate and the median ceilings. The machine's CPU flags and torch version are printed with it.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import torch
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))

from dtype_cost import written_files  # noqa: E402
from helpers import BERT_VOCAB, CLIP_BPE, TEST_JSON  # noqa: E402
from serve import machine  # noqa: E402
from skipped_positions import best_seconds  # noqa: E402
from speed_side import gemm  # noqa: E402

DTYPES = ("fp32", "bf16")


def workload(count: int) -> Dict[str, List[Any]]:
    """``count`` decoded 512 px images (smooth, so that resizing does real work) and one
    test.json prompt for each."""
    import numpy as np

    rng = np.random.default_rng(0)
    images = []
    for _ in range(count):
        coarse = rng.integers(0, 256, size=(16, 16, 3), dtype=np.uint8)
        images.append(Image.fromarray(coarse).resize((512, 512), Image.BICUBIC))
    prompts = [item["prompt"] for item in json.loads(TEST_JSON.read_text())[:count]]
    return {"prompts": prompts, "images": images}


def flops_per_pair(model: Any, pairs: Dict[str, List[Any]]) -> float:
    """FLOPs one pair executes, counted on ``model`` (fp32) over the whole batch."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from imagereward.models import layers

    # The counter knows ATen's products, not oneDNN's private linear op, nor the CPU
    # flash-attention kernel: count on the plain paths, which do the same products.
    os.environ[layers.ONEDNN_ENV] = "0"
    layers._onednn_linear_available.cache_clear()
    try:
        with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            model.score_batch(pairs["prompts"], pairs["images"])
    finally:
        os.environ.pop(layers.ONEDNN_ENV)
        layers._onednn_linear_available.cache_clear()
    return counter.get_total_flops() / len(pairs["images"])


def measure(model: Any, pairs: Dict[str, List[Any]], repeats: int) -> float:
    """Best seconds of ``score_batch`` over every pair, after a warm-up."""
    with torch.no_grad():
        model.score_batch(pairs["prompts"][:2], pairs["images"][:2])
        return best_seconds(lambda: model.score_batch(pairs["prompts"], pairs["images"]), repeats)


def prepare(args: argparse.Namespace) -> Tuple[Dict[str, List[Any]], Dict[str, Any]]:
    """malloc and threads set as the commands, server replicas and Ray actors set them;
    the workload of ``args.images`` pairs and a report with the machine's details."""
    from imagereward.allocator import keep_freed_memory

    keep_freed_memory()
    torch.set_num_threads(args.threads)
    report = {"machine": machine(args.threads), "torch": torch.__version__, "pairs": args.images, "scorers": {}}
    return workload(args.images), report


def run(args: argparse.Namespace, workdir: Path) -> Dict[str, Any]:
    import imagereward

    pairs, report = prepare(args)
    for name in args.scorers:  # one scorer in memory at a time (two ViT-H models take 12 GB)
        files = written_files(name, workdir)
        models = {dtype: imagereward.load(name, files=files, device="cpu", batch_size=args.images,
                                          dtype=None if dtype == "fp32" else dtype) for dtype in args.dtypes}
        counted = models.get("fp32") or imagereward.load(name, files=files, device="cpu", batch_size=args.images)
        flops = flops_per_pair(counted, pairs)
        del counted
        entry: Dict[str, Any] = {"gflop_per_pair": flops / 1e9, "ceilings": [], **{d: [] for d in args.dtypes}}
        report["scorers"][name] = entry
        for round_index in range(args.rounds):
            ceiling = gemm({"threads": args.threads, "dtypes": list(args.dtypes), "repeats": 5, "impl": "ours"})
            entry["ceilings"].append({dtype: ceiling["ceiling"][dtype]["gflops"] for dtype in args.dtypes})
            for dtype, model in models.items():
                seconds = measure(model, pairs, args.repeats)
                gflops = flops * args.images / seconds / 1e9
                entry[dtype].append({"pairs_per_second": args.images / seconds, "gflops": gflops,
                                     "share": gflops / entry["ceilings"][-1][dtype]})
            print(f"[{name}, round {round_index + 1}] {flops / 1e9:.1f} GFLOP per pair; " + ", ".join(
                f"{dtype} {entry[dtype][-1]['pairs_per_second']:.2f} pairs/s "
                f"({entry[dtype][-1]['share']:.2f} of {entry['ceilings'][-1][dtype]:.0f} GFLOP/s)"
                for dtype in args.dtypes), file=sys.stderr, flush=True)
        del models
        gc.collect()
    return report


def table(report: Dict[str, Any]) -> str:
    lines = ["| scorer | GFLOP per pair | fp32 pairs/s (best) | fp32 share (median) | bf16 pairs/s (best) "
             "| bf16 share (median) | bf16 / fp32 | ceilings fp32 / bf16 (GFLOP/s) |",
             "|---|---|---|---|---|---|---|---|"]
    for name, entry in report["scorers"].items():
        timed = [dtype for dtype in DTYPES if entry.get(dtype)]
        best = {dtype: max(r["pairs_per_second"] for r in entry[dtype]) for dtype in timed}
        share = {dtype: statistics.median(r["share"] for r in entry[dtype]) for dtype in timed}
        ceiling = {dtype: statistics.median(c[dtype] for c in entry["ceilings"]) for dtype in timed}

        def cell(values: Dict[str, float], dtype: str, digits: int = 2) -> str:
            return f"{values[dtype]:.{digits}f}" if dtype in values else "-"

        ratio = f"{best['bf16'] / best['fp32']:.2f}x" if len(best) == 2 else "-"
        lines.append(f"| {name} | {entry['gflop_per_pair']:.1f} | {cell(best, 'fp32')} | {cell(share, 'fp32')} "
                     f"| {cell(best, 'bf16')} | {cell(share, 'bf16')} | {ratio} "
                     f"| {cell(ceiling, 'fp32', 0)} / {cell(ceiling, 'bf16', 0)} |")
    return "\n".join(lines)


def scorers_parser(description: str, images_help: str, dtypes: str) -> argparse.ArgumentParser:
    """The options of a benchmark over the registered scorers' full-size models (this one
    and ``ceiling_bound.py``); :func:`parse_scorers_args` reads them."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scorers", default="ImageReward-v1.0,CLIP,BLIP,Aesthetic,PickScore,HPSv2",
                        help="comma list of registered scorers")
    parser.add_argument("--images", type=int, default=16, help=images_help)
    parser.add_argument("--dtypes", default=dtypes, help="comma list of fp32 and bf16")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--workdir", type=Path, default=None, help="keep the written checkpoints here")
    parser.add_argument("--json", type=Path, default=None)
    return parser


def parse_scorers_args(parser: argparse.ArgumentParser) -> argparse.Namespace:
    """The arguments of :func:`scorers_parser`'s options (and any added), with ``scorers``
    and ``dtypes`` as lists."""
    args = parser.parse_args()
    args.scorers = [name.strip() for name in args.scorers.split(",") if name.strip()]
    args.dtypes = [dtype for dtype in DTYPES if dtype in args.dtypes.split(",")]
    return args


def main() -> int:
    parser = scorers_parser(__doc__, "pairs per timed call (one batch)", "fp32,bf16")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2, help="timed calls per model and round (best kept)")
    return report_main(parse_scorers_args(parser), run, table, "imagereward-scorer-ceiling-")


def report_main(args: argparse.Namespace, run: Callable[[argparse.Namespace, Path], Dict[str, Any]],
                table: Callable[[Dict[str, Any]], str], prefix: str) -> int:
    """Offline, with the shared vocabularies: ``run`` in ``args.workdir`` (else a
    temporary folder), then the machine, ``table`` of the report and ``--json``."""
    from imagereward.tokenizers.clip_bpe import BPE_ENV

    os.environ.update({"IMAGEREWARD_BERT_VOCAB": str(BERT_VOCAB), BPE_ENV: str(CLIP_BPE),
                       "HF_HUB_OFFLINE": "1", "IMAGEREWARD_OFFLINE": "1"})
    with contextlib.ExitStack() as stack:
        workdir = args.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=prefix)))
        report = run(args, workdir)
    print(json.dumps({"machine": report["machine"], "torch": report["torch"]}))
    print(table(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
