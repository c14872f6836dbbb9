"""Two operations of the CLIP towers, each against its earlier form, inside a full image tower.

    python benchmarks/clip_ops.py --op quick_gelu [--tower L14] [--images 8] [--rounds 4]
    python benchmarks/clip_ops.py --op layer_norm --tower H14

``quick_gelu``: OpenAI ViT-L/14's MLP activation ``x * sigmoid(1.702 * x)`` (CLIP and
Aesthetic) was three passes over ``[B x 257, 4096]`` with three new tensors; in
inference the MLP now writes it into ``c_fc``'s output (one temporary).
``layer_norm``: CLIP's LayerNorm computes in float32; bf16 inputs were copied to float32
and back, and now go to ATen's mixed-precision kernel (all CLIP towers: CLIP,
Aesthetic, PickScore, HPSv2, MPS).

For the full-size tower (``L14``: OpenAI ViT-L/14, ``H14``: OpenCLIP ViT-H/14) with
random weights, in one process, the earlier form and the current one alternate for
``--rounds`` rounds (best of 3 calls each); printed per dtype: both times per image,
each round's ratio and their median, and how far apart the embeddings are.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from functools import partial
from pathlib import Path
from typing import Any, Dict, List, Tuple

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from serve import machine  # noqa: E402  (CPU flags, torch and Ray versions)
from skipped_positions import OPENAI_L14, OPENCLIP_H14, best_seconds, randomise  # noqa: E402

from imagereward.models.clip import CLIPVisionTransformer, LayerNormFP32, QuickGELU  # noqa: E402


def earlier_quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


def earlier_layer_norm(self: LayerNormFP32, x: torch.Tensor) -> torch.Tensor:
    out = F.layer_norm(x.float(), self.normalized_shape, self.weight.float(), self.bias.float(), self.eps)
    return out.to(x.dtype)


# op -> (the class whose attribute changed, the attribute, its earlier value)
OPS: Dict[str, Tuple[type, str, Any]] = {
    "quick_gelu": (QuickGELU, "inplace", staticmethod(earlier_quick_gelu)),
    "layer_norm": (LayerNormFP32, "forward", earlier_layer_norm),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--op", choices=sorted(OPS), required=True)
    parser.add_argument("--tower", choices=("L14", "H14"), default="L14")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--dtypes", default="fp32,bf16")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    info = machine(args.threads)
    print(f"[clip-ops] torch {info['torch']}; CPU flags: {info['cpu_flags']}; {args.threads} threads", flush=True)
    owner, attribute, earlier = OPS[args.op]
    current = owner.__dict__[attribute]
    config = OPENAI_L14 if args.tower == "L14" else OPENCLIP_H14
    for name in args.dtypes.split(","):
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[name]
        tower = randomise(CLIPVisionTransformer(config)).to(dtype)
        size = config.image_size
        pixels = torch.randn(args.images, 3, size, size, generator=torch.Generator().manual_seed(1)).to(dtype)
        forms = {"earlier": earlier, "now": current}
        times: Dict[str, List[float]] = {label: [] for label in forms}
        outputs: Dict[str, torch.Tensor] = {}
        try:
            with torch.no_grad():
                for _ in range(args.rounds):
                    for label, form in forms.items():
                        setattr(owner, attribute, form)
                        outputs[label] = tower(pixels)
                        times[label].append(best_seconds(partial(tower, pixels)) / args.images)
        finally:
            setattr(owner, attribute, current)
        ratios = [e / n for e, n in zip(times["earlier"], times["now"])]
        diff = (outputs["now"].float() - outputs["earlier"].float()).abs().max().item()
        scale = outputs["earlier"].float().abs().max().item()
        print(f"[clip-ops] {args.op}, {args.tower} {name}: earlier {min(times['earlier']):.4f} s/img, now "
              f"{min(times['now']):.4f}; rounds {', '.join(f'{r:.3f}' for r in ratios)}, median "
              f"{statistics.median(ratios):.3f}x; max diff {diff / scale:.1e} of the scale"
              f"{' (bitwise equal)' if diff == 0 else ''}", flush=True)
        del tower
    return 0


if __name__ == "__main__":
    sys.exit(main())
