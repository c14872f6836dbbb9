"""Image towers read by their class token: the last block on one row against all rows.

    python benchmarks/class_token.py [--images 8] [--rounds 4] [--dtypes fp32,bf16]

CLIP and Aesthetic (OpenAI ViT-L/14), PickScore and HPSv2 (OpenCLIP ViT-H/14) and the
BLIP baseline (BLIP's ViT-L/16) score with the class token of the image tower's
output only. Their last block now attends from the class token alone and runs its
output projection and MLP on one row per image. For each full-size tower with random
weights, in one process, the whole computation (then its class token) and the class
token path alternate for ``--rounds`` rounds (best of 3 calls each); printed per tower
and dtype: both times per image, each round's ratio and their median, and the largest
difference of the embeddings relative to their scale.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any, Callable, Dict, List

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from serve import machine  # noqa: E402  (CPU flags, torch and Ray versions)

from imagereward.config import CLIPConfig, VisionConfig  # noqa: E402
from imagereward.models.clip import CLIPVisionTransformer  # noqa: E402
from imagereward.models.vit import VisionTransformer  # noqa: E402


def towers() -> Dict[str, Callable[[], Any]]:
    return {
        "OpenAI ViT-L/14 (CLIP, Aesthetic)": lambda: CLIPVisionTransformer(CLIPConfig()),
        "OpenCLIP ViT-H/14 (PickScore, HPSv2)": lambda: CLIPVisionTransformer(CLIPConfig(
            embed_dim=1024, vision_width=1280, vision_layers=32, vision_heads=16, vision_head_width=80,
            text_width=1024, text_layers=24, text_heads=16, act="gelu")),
        "BLIP ViT-L/16 (BLIP)": lambda: VisionTransformer(VisionConfig()),
    }


def randomise(module: torch.nn.Module) -> torch.nn.Module:
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * parameter.shape[-1] ** -0.5)
    return module.eval()


def paths(tower: Any) -> Dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """(whole computation then its class token, class token path) for ``tower``."""
    if isinstance(tower, CLIPVisionTransformer):
        return {"whole": lambda x: tower.ln_post(tower.tokens(x)[:, 0, :]) @ tower.proj,
                "class token": lambda x: tower(x)}
    return {"whole": lambda x: tower(x)[:, 0, :], "class token": lambda x: tower(x, cls_only=True)[:, 0, :]}


def best_seconds(run: Callable[[], Any], repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--dtypes", default="fp32,bf16")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    info = machine(args.threads)
    print(f"[class-token] torch {info['torch']}; CPU flags: {info['cpu_flags']}; {args.threads} threads", flush=True)
    rows: List[Dict[str, Any]] = []
    for name, make in towers().items():
        for dtype_name in args.dtypes.split(","):
            dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
            tower = randomise(make()).to(dtype)
            size = tower.image_size if isinstance(tower, CLIPVisionTransformer) else tower.config.image_size
            pixels = torch.randn(args.images, 3, size, size, generator=torch.Generator().manual_seed(1)).to(dtype)
            runs = paths(tower)
            with torch.no_grad():
                outputs = {label: run(pixels).float() for label, run in runs.items()}  # warm-up
                times: Dict[str, List[float]] = {label: [] for label in runs}
                for _ in range(args.rounds):
                    for label, run in runs.items():
                        times[label].append(best_seconds(partial(run, pixels)) / args.images)
            ratios = [whole / cls for whole, cls in zip(times["whole"], times["class token"])]
            scale = outputs["whole"].abs().max().item()
            row = {"tower": name, "dtype": dtype_name, "whole_s_per_image": min(times["whole"]),
                   "class_token_s_per_image": min(times["class token"]), "round_ratios": ratios,
                   "median_ratio": statistics.median(ratios),
                   "max_relative_diff": (outputs["class token"] - outputs["whole"]).abs().max().item() / scale}
            rows.append(row)
            print(f"[class-token] {name} {dtype_name}: whole {row['whole_s_per_image']:.4f} s/img, class token "
                  f"{row['class_token_s_per_image']:.4f}; rounds {', '.join(f'{r:.3f}' for r in ratios)}, "
                  f"median {row['median_ratio']:.3f}x; max diff {row['max_relative_diff']:.2e} of the scale",
                  flush=True)
            del tower
    print("\n| tower | dtype | whole (s/img) | class token (s/img) | median of the rounds' ratios | max diff / scale |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['tower']} | {r['dtype']} | {r['whole_s_per_image']:.4f} | {r['class_token_s_per_image']:.4f} | "
              f"{r['median_ratio']:.3f}x | {r['max_relative_diff']:.1e} |")
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
