"""OpenAI CLIP's QuickGELU in place against the module form, inside the ViT-L/14 image tower.

    python benchmarks/quick_gelu.py [--images 8] [--rounds 4] [--dtypes fp32,bf16]

The CLIP and Aesthetic baselines run OpenAI's ViT-L/14, whose MLP activation is
``x * sigmoid(1.702 * x)``: three passes over ``[B x 257, 4096]`` with three new
tensors. In inference the MLP now writes it into ``c_fc``'s output (one temporary).
For the full-size image tower with random weights, in one process, the two forms
alternate for ``--rounds`` rounds (best of 3 calls each); printed per dtype: both
times per image, each round's ratio and their median, and whether the embeddings are
bitwise equal.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from serve import machine  # noqa: E402  (CPU flags, torch and Ray versions)
from skipped_positions import OPENAI_L14, randomise  # noqa: E402

from imagereward.models.clip import CLIPVisionTransformer, QuickGELU  # noqa: E402


def module_form(x: torch.Tensor) -> torch.Tensor:
    return QuickGELU()(x)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--dtypes", default="fp32,bf16")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    info = machine(args.threads)
    print(f"[quick-gelu] torch {info['torch']}; CPU flags: {info['cpu_flags']}; {args.threads} threads", flush=True)
    in_place = QuickGELU.inplace
    for name in args.dtypes.split(","):
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[name]
        tower = randomise(CLIPVisionTransformer(OPENAI_L14)).to(dtype)
        pixels = torch.randn(args.images, 3, 224, 224, generator=torch.Generator().manual_seed(1)).to(dtype)
        forms = {"module": staticmethod(module_form), "in place": staticmethod(in_place)}
        times = {label: [] for label in forms}
        outputs = {}
        try:
            with torch.no_grad():
                for _ in range(args.rounds):
                    for label, form in forms.items():
                        QuickGELU.inplace = form
                        outputs[label] = tower(pixels)
                        best = float("inf")
                        for _ in range(3):
                            start = time.perf_counter()
                            tower(pixels)
                            best = min(best, time.perf_counter() - start)
                        times[label].append(best / args.images)
        finally:
            QuickGELU.inplace = staticmethod(in_place)
        ratios = [m / i for m, i in zip(times["module"], times["in place"])]
        print(f"[quick-gelu] ViT-L/14 {name}: module {min(times['module']):.4f} s/img, in place "
              f"{min(times['in place']):.4f}; rounds {', '.join(f'{r:.3f}' for r in ratios)}, median "
              f"{statistics.median(ratios):.3f}x; bitwise equal: {torch.equal(outputs['module'], outputs['in place'])}",
              flush=True)
        del tower
    return 0


if __name__ == "__main__":
    sys.exit(main())
