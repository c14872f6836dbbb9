"""GPU benchmark: ours against image-reward 1.5 on one GPU, side by side, in one script.

Once, where PyPI answers (the GPU machine has no network):
    python benchmarks/gpu_bundle.py                       # writes .gpu/ (about 17 MB)
On the GPU machine, from the repository root, with .gpu carried along:
    python3 benchmarks/gpu.py --bundle .gpu --out "$OUT"  # meant to end well inside 10 minutes

It installs the bundle's wheels into folders under ``--workdir`` (the reference's
pinned dependencies for the reference, ftfy for ours), writes a random-weight
``ImageReward.pt`` with the reference's own classes, makes 64 images of mixed sizes
and formats for one prompt and stand-in images for 40 prompts of test.json, then
times each workload in a fresh process for the reference (fp32, as it runs) and
ours in fp32, bf16 and fp16, and imscore (the other plain-PyTorch port) against ours
in each dtype:

* ``rank``: ``inference_rank`` over the 64 image files, decoding included;
* ``eval``: the evaluation-shaped workload, one ``inference_rank`` per prompt;
* ``model``: the network alone on preprocessed pixels already on the GPU (the
  reference one image per forward as its ``inference_rank`` runs it, and also in
  one batched ``score_gard`` call, for reference);
* ``batch`` (imscore and ours): the images as 512 px decoded images in one call,
  imscore's ``score`` on a [0, 1] tensor on the GPU, our ``inference_rank`` on PIL;
* ``tensors`` (imscore and ours): the whole model on pre-made 224 px tensors on the GPU.

It prints and writes (``gpu.json``, ``gpu.md``) the table, the agreement of every
variant with the reference and of bf16/fp16 with our fp32, and the issue's targets.
``--device cpu --quick`` is a dry run of the whole script on a CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

# Targets of the speed issue, ours relative to the reference on the same GPU.
END_TO_END_TARGET = 10.0
MODEL_TARGET = 20.0
HALF_TOLERANCE = 0.02
SIZES = [(512, 512), (768, 768), (1024, 1024), (640, 384), (512, 768), (1024, 576)]
FORMATS = ["webp", "png", "jpg"]


def install(bundle: Path, workdir: Path) -> Dict[str, Path]:
    """pip-install the bundle's wheel folders (no index, no dependencies) once."""
    sites = {}
    for name in ("reference", "ours", "imscore"):
        site = workdir / f"site-{name}"
        marker = site / ".installed"
        if not marker.exists():
            wheels = sorted(str(p) for p in (bundle / "wheels" / name).glob("*.whl"))
            if not wheels and name == "imscore":
                continue  # an older bundle: no imscore side
            if not wheels:
                raise SystemExit(f"no wheels in {bundle / 'wheels' / name}: run gpu_bundle.py first")
            subprocess.run(
                [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                 "--no-compile", "--upgrade", "--target", str(site), *wheels],
                check=True,
            )
            marker.write_text("ok")
        sites[name] = site
    return sites


def configure(bundle: Path, sites: Dict[str, Path]) -> None:
    """Point the benchmark helpers at the bundle's data and the two import paths."""
    os.environ["IMAGEREWARD_SHARED"] = str(bundle / "shared")
    os.environ["IMAGEREWARD_REF_SITE"] = str(sites["reference"])
    if "imscore" in sites:
        os.environ["IMAGEREWARD_IMSCORE_SITE"] = str(sites["imscore"])
    os.environ["IMAGEREWARD_OURS_PATH"] = os.pathsep.join([str(REPO / "src"), str(sites["ours"])])
    sys.path[:0] = [str(REPO / "src"), str(sites["ours"])]


def rank_images(workdir: Path, count: int) -> List[str]:
    """``count`` images cycling through sizes and formats, each a different pattern."""
    from PIL import Image

    from fixtures import _gradient

    folder = workdir / "rank_images"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        width, height = SIZES[index % len(SIZES)]
        path = folder / f"{index:03d}.{FORMATS[index % len(FORMATS)]}"
        if not path.exists():
            image = Image.fromarray(_gradient(width // 4, height // 4, 100 + index))
            image = image.resize((width, height), Image.BICUBIC)
            image.save(path, quality=90) if path.suffix != ".png" else image.save(path)
        paths.append(str(path))
    return paths


def machine(device: str) -> Dict[str, Any]:
    """The speed benchmark's machine description, plus Python, torch and the GPU."""
    import torch

    import speed

    info = dict(speed.machine(os.cpu_count() or 1), python=platform.python_version(),
                torch=torch.__version__, device=device)
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    return info


def targets(results: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Each speed target for each of our variants, and the half-precision tolerance."""
    work = results["workloads"]
    ref = work["reference-fp32"]
    rows = []
    for key, entry in work.items():
        if not key.startswith("ours-"):
            continue
        for name, goal in (("rank", END_TO_END_TARGET), ("eval", END_TO_END_TARGET),
                           ("model", MODEL_TARGET)):
            if name not in entry or name not in ref:
                continue
            ratio = entry[name]["images_per_second"] / ref[name]["images_per_second"]
            rows.append({"variant": key, "target": f"{name} >= {goal:g}x", "value": ratio,
                         "met": ratio >= goal})
    for key, row in results["half_vs_fp32"].items():
        worst = max(v for k, v in row.items() if k.endswith("max_abs_diff"))
        rows.append({"variant": key, "target": f"|{key} - ours-fp32| <= {HALF_TOLERANCE}",
                     "value": worst, "met": worst <= HALF_TOLERANCE})
    return rows


def report(results: Dict[str, Any]) -> str:
    import speed

    lines = ["## Machine", "", "```", json.dumps(results["machine"], indent=2), "```", "",
             "## Throughput (ratios against reference-fp32)", "", speed.table(results), "",
             "## Against imscore (same GPU, same dtype)", "",
             speed.versus_table(results.get("versus_imscore", [])), "",
             "## Targets", "", "| variant | target | value | met |", "|---|---|---|---|"]
    for row in results["targets"]:
        lines.append(f"| {row['variant']} | {row['target']} | {row['value']:.4g} | "
                     f"{'yes' if row['met'] else 'NO'} |")
    lines += [f"\nFAILED: {failed}: {why}" for failed, why in results["errors"].items()]
    lines += ["", "## Agreement with the reference", "", "```",
              json.dumps(results["agreement"], indent=2), "```", "",
              "## Half precision against our fp32", "", "```",
              json.dumps(results["half_vs_fp32"], indent=2), "```"]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, default=REPO / ".gpu")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", REPO / ".bench" / "gpu-out")))
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/imagereward-gpu-bench"))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--eval-prompts", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--dtypes", default="fp32,bf16,fp16")
    parser.add_argument("--compile", action="store_true", help="also time ours-bf16 with compile=True")
    parser.add_argument("--quick", action="store_true",
                        help="a dry run: 6 images, 2 prompts, one repeat")
    args = parser.parse_args()
    if args.quick:
        args.images, args.eval_prompts, args.repeats = 6, 2, 1
    started = time.perf_counter()
    bundle, workdir = args.bundle.resolve(), args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)

    def step(message: str) -> None:
        print(f"[gpu {time.perf_counter() - started:6.1f}s] {message}", flush=True)

    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA device visible to torch")
    step(f"torch {torch.__version__} on {args.device}; installing the bundle")
    configure(bundle, install(bundle, workdir))
    import speed
    from parity import SCORERS

    step("writing the random-weight ImageReward.pt with the reference's classes")
    base = SCORERS["ImageReward-v1.0"].make(workdir)
    base.update(device=args.device, threads=os.cpu_count() or 1)
    images = rank_images(workdir, args.images)
    items = speed.eval_items(workdir, args.eval_prompts)
    prompt = "a painting of an ocean with clouds and birds, day time, low depth field effect"
    workloads = {
        "rank": {"prompt": prompt, "images": images, "repeats": args.repeats},
        "eval": {"items": items},
        "model": {"prompt": prompt, "count": args.images, "repeats": args.repeats},
    }
    variants = [("reference", "fp32", False)] + [("ours", d, False) for d in args.dtypes.split(",")]
    if args.compile:
        variants.append(("ours", "bf16", True))
    results: Dict[str, Any] = {"machine": machine(args.device), "workloads": {}, "errors": {}}
    work = results["workloads"]

    def measure(key: str, impl: str, command: str, request: Dict[str, Any]) -> None:
        """One workload in its own process; a failure is recorded and the run goes on."""
        step(f"{key}: {command}")
        try:
            work.setdefault(key, {})[command] = speed.run_side(impl, command, request, workdir)
        except subprocess.CalledProcessError as error:
            results["errors"][f"{key}/{command}"] = str(error)
            step(f"{key}: {command} FAILED ({error})")
        (args.out / "gpu.json").write_text(json.dumps(results, indent=2))  # results so far

    for impl, dtype, compiled in variants:
        key = f"{impl}-{dtype}" + ("-compile" if compiled else "")
        request = dict(base, dtype=dtype, batch_size=args.batch_size, compile=compiled)
        for name, extra in workloads.items():
            measure(key, impl, name, dict(request, **extra))
        if impl == "reference":
            measure("reference-fp32-batched", impl, "model",
                    dict(request, batched=True, **workloads["model"]))
    if "IMAGEREWARD_IMSCORE_SITE" in os.environ:
        batch = {"prompt": prompt, "images": speed.batch_images(workdir, args.images),
                 "count": args.images, "repeats": args.repeats}
        for dtype in args.dtypes.split(","):
            for impl in ("imscore", "ours"):
                request = dict(base, dtype=dtype, batch_size=args.batch_size, compile=False)
                for name in ("batch", "tensors"):
                    measure(f"{impl}-{dtype}", impl, name, dict(request, **batch))
        results["versus_imscore"] = speed.versus(results, "imscore")
    comparable = {k: v for k, v in work.items() if k != "reference-fp32-batched"}
    results["agreement"] = (
        speed.agreement(comparable, "reference-fp32") if "reference-fp32" in work else {}
    )
    ours = {k: v for k, v in work.items() if k.startswith("ours-")}
    results["half_vs_fp32"] = speed.agreement(ours, "ours-fp32") if "ours-fp32" in work else {}
    results["targets"] = targets(results) if "reference-fp32" in work else []
    results["seconds"] = time.perf_counter() - started
    text = report(results)
    print(text)
    (args.out / "gpu.json").write_text(json.dumps(results, indent=2))
    (args.out / "gpu.md").write_text(text + "\n")
    step(f"done; wrote {args.out / 'gpu.json'} and gpu.md")
    return 1 if results["errors"] else 0

if __name__ == "__main__":
    sys.exit(main())
