"""Towers that skip the positions their scorers never read, against the whole computation.

    python benchmarks/skipped_positions.py [--images 8] [--prompts 16] [--rounds 4] [--dtypes fp32,bf16]
        [--kinds image,text]

Image towers: CLIP and Aesthetic (OpenAI ViT-L/14), PickScore and HPSv2 (OpenCLIP
ViT-H/14) and the BLIP baseline (BLIP's ViT-L/16) score with the class token of the
image tower's output only. Their last block now attends from the class token alone
and runs its output projection and MLP on one row per image.

Text towers: CLIP's causal text towers (OpenAI ViT-L/14's and OpenCLIP ViT-H/14's) are
read at the end-of-text token, so ``encode_text`` now runs rows of similar lengths
together, each group up to its longest row's end-of-text token, instead of computing
all 77 positions. ``--prompts`` prompts of
``benchmark-prompts.json``, tokenised with the CLIP tokenizer (one per pair, as an RL
trainer sends them).

For each full-size tower with random weights, in one process, the whole computation
and the shortened one alternate for ``--rounds`` rounds (best of 3 calls each);
printed per tower and dtype: both times per item, each round's ratio and their
median, and the largest difference of the embeddings relative to their scale.
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
sys.path.insert(0, str(HERE.parent / "tests"))

from serve import machine  # noqa: E402  (CPU flags, torch and Ray versions)

from helpers import CLIP_BPE, REFERENCE_DATA  # noqa: E402

from imagereward.config import CLIPConfig, VisionConfig, openclip_vit_h_14  # noqa: E402
from imagereward.models.clip import CLIPModel, CLIPVisionTransformer  # noqa: E402
from imagereward.models.vit import VisionTransformer  # noqa: E402
from imagereward.tokenizers.clip_bpe import CLIPTokenizer  # noqa: E402

OPENAI_L14 = CLIPConfig()
OPENCLIP_H14 = openclip_vit_h_14()


def towers() -> Dict[str, Callable[[], Any]]:
    return {
        "OpenAI ViT-L/14 image (CLIP, Aesthetic)": lambda: CLIPVisionTransformer(OPENAI_L14),
        "OpenCLIP ViT-H/14 image (PickScore, HPSv2)": lambda: CLIPVisionTransformer(OPENCLIP_H14),
        "BLIP ViT-L/16 image (BLIP)": lambda: VisionTransformer(VisionConfig()),
        "OpenAI ViT-L/14 text (CLIP)": lambda: CLIPModel(OPENAI_L14),
        "OpenCLIP ViT-H/14 text (PickScore, HPSv2)": lambda: CLIPModel(OPENCLIP_H14),
    }


def randomise(module: torch.nn.Module) -> torch.nn.Module:
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in module.parameters():
            scale = parameter.shape[-1] ** -0.5 if parameter.dim() else 1.0
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * scale)
    return module.eval()


def paths(tower: Any) -> Dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """(whole computation then the position read, the shortened computation) for ``tower``."""
    if isinstance(tower, CLIPModel):
        def whole_text(ids: torch.Tensor) -> torch.Tensor:
            eot = ids.argmax(dim=-1)
            return tower.text_tokens(ids)[torch.arange(ids.shape[0]), eot] @ tower.text_projection
        return {"whole": whole_text, "shortened": tower.encode_text}
    if isinstance(tower, CLIPVisionTransformer):
        return {"whole": lambda x: tower.ln_post(tower.tokens(x)[:, 0, :]) @ tower.proj,
                "shortened": lambda x: tower(x)}
    return {"whole": lambda x: tower(x)[:, 0, :], "shortened": lambda x: tower(x, cls_only=True)[:, 0, :]}


def inputs(tower: Any, dtype: torch.dtype, images: int, prompts: int) -> torch.Tensor:
    """Token ids of ``prompts`` benchmark prompts for a text tower, else ``images`` random images."""
    if isinstance(tower, CLIPModel):
        rows = json.loads((REFERENCE_DATA / "benchmark-prompts.json").read_text())[:prompts]
        return CLIPTokenizer(str(CLIP_BPE))([row["prompt"] for row in rows])
    size = tower.image_size if isinstance(tower, CLIPVisionTransformer) else tower.config.image_size
    return torch.randn(images, 3, size, size, generator=torch.Generator().manual_seed(1)).to(dtype)


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
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--kinds", default="image,text", help="which towers: image, text or both")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--dtypes", default="fp32,bf16")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    info = machine(args.threads)
    print(f"[skipped-positions] torch {info['torch']}; CPU flags: {info['cpu_flags']}; {args.threads} threads",
          flush=True)
    rows: List[Dict[str, Any]] = []
    kinds = args.kinds.split(",")
    for name, make in towers().items():
        if not any(f" {kind} (" in name for kind in kinds):
            continue
        for dtype_name in args.dtypes.split(","):
            dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
            tower = randomise(make()).to(dtype)
            batch = inputs(tower, dtype, args.images, args.prompts)
            items = batch.shape[0]
            runs = paths(tower)
            with torch.no_grad():
                outputs = {label: run(batch).float() for label, run in runs.items()}  # warm-up
                times: Dict[str, List[float]] = {label: [] for label in runs}
                for _ in range(args.rounds):
                    for label, run in runs.items():
                        times[label].append(best_seconds(partial(run, batch)) / items)
            ratios = [whole / short for whole, short in zip(times["whole"], times["shortened"])]
            scale = outputs["whole"].abs().max().item()
            row = {"tower": name, "dtype": dtype_name, "whole_s_per_item": min(times["whole"]),
                   "shortened_s_per_item": min(times["shortened"]), "round_ratios": ratios,
                   "median_ratio": statistics.median(ratios),
                   "max_relative_diff": (outputs["shortened"] - outputs["whole"]).abs().max().item() / scale}
            rows.append(row)
            print(f"[skipped-positions] {name} {dtype_name}: whole {row['whole_s_per_item']:.4f} s per item, "
                  f"shortened {row['shortened_s_per_item']:.4f}; rounds {', '.join(f'{r:.3f}' for r in ratios)}, "
                  f"median {row['median_ratio']:.3f}x; max diff {row['max_relative_diff']:.2e} of the scale",
                  flush=True)
            del tower
    print("\n| tower | dtype | whole (s per item) | shortened (s per item) | median of the rounds' ratios "
          "| max diff / scale |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['tower']} | {r['dtype']} | {r['whole_s_per_item']:.4f} | {r['shortened_s_per_item']:.4f} | "
              f"{r['median_ratio']:.3f}x | {r['max_relative_diff']:.1e} |")
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
