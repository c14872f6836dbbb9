"""What HPSv3 (Qwen2-VL-7B) costs per image on this CPU, measured on the full-size model.

    python benchmarks/hpsv3_cpu_cost.py [--images 3] [--batch 1] [--suffix-tokens 520]

The released weights cannot be downloaded here, so the full Qwen2-VL-7B architecture is
built in bfloat16 with random weights (8.3 billion parameters, about 16.6 GB; float32
would need 33 GB) and one pair's forward pass is timed as HPSv3 runs it: a 448x448
image (1,024 patches through the 32-block vision tower, 256 merged tokens) inside the
chat turn. The turn's length in Qwen2-VL's real tokenizer is not measurable offline;
``--suffix-tokens`` (default 520: HPSv3's 2,400-character instruction at about 4.6
characters a token, plus the prompt) and the 14 tokens before the image set it. Prints
the CPU flags, torch's version, seconds per image and the implied GFLOP/s.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from imagereward.config import HPSv3Config
from imagereward.scoring.hpsv3 import HPSv3Score


def cpu_flags() -> str:
    try:
        text = open("/proc/cpuinfo").read().split("flags")[1].split("\n")[0]
    except (OSError, IndexError):
        return "unknown"
    return " ".join(f for f in text.split() if f.startswith(("avx512_bf16", "amx", "avx512f", "avx2")))


def build(dtype: torch.dtype) -> HPSv3Score:
    network = HPSv3Score(HPSv3Config())
    for module in (network.visual, network.model):
        buffers = {name: buffer.clone() for name, buffer in module.named_buffers()}  # rotary frequencies
        module.to(dtype).to_empty(device="cpu")
        for name, buffer in buffers.items():
            owner, _, leaf = name.rpartition(".")
            module.get_submodule(owner)._buffers[leaf] = buffer  # noqa: SLF001 - restore the float32 values
    with torch.no_grad():
        for module in (network.visual, network.model):
            for param in module.parameters():
                param.normal_(0.0, 0.02)
        for name, buffer in network.named_buffers():
            if buffer.is_meta:
                raise RuntimeError(f"{name} was not materialised")
    network.prefix_ids = torch.arange(14)
    network.reward_token_id = 151657
    return network.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=3)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--suffix-tokens", type=int, default=520)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    network = build(torch.bfloat16)
    built = time.perf_counter() - start
    size = 448
    pixels = torch.randn(args.batch, 3, size, size).to(torch.bfloat16)
    suffix = torch.randint(0, 150000, (args.batch, args.suffix_tokens))
    suffix[:, -6] = network.reward_token_id
    text = {"input_ids": suffix, "lengths": torch.full((args.batch,), args.suffix_tokens)}
    times = []
    with torch.inference_mode():
        network.head_outputs(text, *network.image_features(pixels[:1].expand(args.batch, -1, -1, -1)))  # warm-up
        for _ in range(args.images):
            begin = time.perf_counter()
            network.head_outputs(text, *network.image_features(pixels))
            times.append((time.perf_counter() - begin) / args.batch)
    params = sum(p.numel() for p in network.parameters())
    tokens = 14 + 256 + args.suffix_tokens
    language = 2 * sum(p.numel() for n, p in network.model.named_parameters() if "embed_tokens" not in n) * tokens
    vision = 2 * sum(p.numel() for p in network.visual.blocks.parameters()) * 1024
    best = min(times)
    print(json.dumps({
        "cpu": platform.processor() or platform.machine(), "flags": cpu_flags(), "torch": torch.__version__,
        "threads": args.threads, "dtype": "bf16", "parameters": params, "build_seconds": round(built, 1),
        "sequence_tokens": tokens, "seconds_per_image": [round(t, 2) for t in times],
        "best_seconds_per_image": round(best, 2), "gflop_per_image": round((language + vision) / 1e9),
        "gflop_per_second": round((language + vision) / 1e9 / best),
    }, indent=1))


if __name__ == "__main__":
    main()
