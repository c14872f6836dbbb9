"""What ``load(..., compile=True)`` gains: eager against compiled encoders, ours only.

    python benchmarks/compile_gain.py [--device cuda] [--dtype bf16] [--batch 10]

Runs ``ImageRewardNet.forward`` on a random batch of preprocessed pixels with the
full-size random-weight checkpoint of the speed benchmark (written by the reference's
classes on first use), first eager, then after ``compile_encoders()``; prints the
compile time, the best of ``--repeats`` timings of each and their agreement.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import refenv


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=refenv.REPO / ".bench" / "speed")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32")
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import imagereward
    from parity import SCORERS

    files = SCORERS["ImageReward-v1.0"].make(args.workdir.resolve())
    model = imagereward.load(files["checkpoint"], device=args.device, dtype=args.dtype,
                             med_config=files["med_config"], vocab_file=str(refenv.BERT_VOCAB))
    size = model.config.vision.image_size
    pixels = torch.randn(args.batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    pixels = pixels.to(args.device, model.compute_dtype)
    tokens = model.tokenizer(["a painting of an ocean with clouds and birds"] * args.batch)
    ids, mask = tokens["input_ids"].to(args.device), tokens["attention_mask"].to(args.device)

    def timed() -> float:
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.inference_mode():
            model(ids, mask, pixels)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - start

    with torch.inference_mode():
        eager_out = model(ids, mask, pixels).float()
    eager = min(timed() for _ in range(args.repeats))
    model.compile_encoders()
    first = timed()
    compiled = min(timed() for _ in range(args.repeats))
    with torch.inference_mode():
        diff = (model(ids, mask, pixels).float() - eager_out).abs().max().item()
    print(json.dumps({
        "device": args.device, "dtype": args.dtype, "batch": args.batch,
        "eager_seconds": eager, "first_compiled_call_seconds": first,
        "compiled_seconds": compiled, "speedup": eager / compiled, "max_abs_diff": diff,
    }, indent=2))


if __name__ == "__main__":
    main()
