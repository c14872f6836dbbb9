"""int8 against float on this CPU and on the CPUs it can pretend to be (no AMX, AVX2 only).

    flock /tmp/imagereward-cpu.lock python benchmarks/int8_isa.py [--base fp32] [CHECKPOINT]

For each instruction set (``ONEDNN_MAX_CPU_ISA`` for oneDNN, ``ATEN_CPU_CAPABILITY`` for
ATen, as ``isa_ab.py`` does), a fresh process loads the full-size random ImageReward (the
``ImageReward.pt`` that ``speed.py`` writes) in ``--base`` precision, calibrates int8 on
the four example images, and times ``score_tensors`` on 8 random 224 px tensors, float and
int8 alternating, best of 3. The emulation limits the instructions, not the caches or
clock of the CPU pretended: it shows what each code path gains, not those CPUs' speeds.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ISAS = {"native": None, "AVX512_CORE_VNNI (no bf16, no AMX)": ("AVX512_CORE_VNNI", "avx512"),
        "AVX2": ("AVX2", "avx2")}
PROMPT = "a photograph of an astronaut riding a horse on the moon, highly detailed, 4k"


def side(checkpoint: str, base: str) -> dict:
    """One process's measurement (run with ``--side``)."""
    import torch

    sys.path.insert(0, str(HERE.parent / "tests"))
    from helpers import ASSETS, BERT_VOCAB

    import imagereward
    from imagereward.allocator import keep_freed_memory
    from imagereward.int8 import calibrate

    torch.set_num_threads(2)
    keep_freed_memory()

    def load(**options):
        return imagereward.load("ImageReward-v1.0", checkpoint=checkpoint, vocab_file=str(BERT_VOCAB),
                                device="cpu", dtype=base, **options)

    model = load()
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "int8.json")
        prompts = ["a photo of a cat", "an astronaut on a horse", "a red car", "a bowl of fruit"]
        calibrate(model, prompts, [str(a) for a in ASSETS]).save(path)
        quantized = load(int8=path)
    pixels = torch.rand(8, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    seconds = {base: [], "int8": []}
    with torch.no_grad():
        for each in (model, quantized):
            each.score_tensors(pixels[:2], PROMPT)
        for _ in range(3):
            for name, each in ((base, model), ("int8", quantized)):
                start = time.perf_counter()
                each.score_tensors(pixels, PROMPT)
                seconds[name].append(time.perf_counter() - start)
    return {name: min(times) / len(pixels) for name, times in seconds.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", nargs="?", default=str(HERE.parent / ".bench" / "speed" / "ImageReward.pt"))
    parser.add_argument("--base", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--side", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        print(json.dumps(side(args.checkpoint, args.base)))
        return 0
    if not Path(args.checkpoint).exists():
        sys.exit(f"{args.checkpoint} not found: run benchmarks/speed.py once to write it")
    rows = {}
    for label, limits in ISAS.items():
        env = dict(os.environ)
        if limits is not None:
            env["ONEDNN_MAX_CPU_ISA"], env["ATEN_CPU_CAPABILITY"] = limits
        out = subprocess.run([sys.executable, __file__, args.checkpoint, "--base", args.base, "--side"],
                             env=env, check=True, capture_output=True, text=True).stdout
        rows[label] = json.loads(out.strip().splitlines()[-1])
        timing = rows[label]
        print(f"{label}: {args.base} {timing[args.base]:.4f} s/img, int8 {timing['int8']:.4f} s/img "
              f"({timing[args.base] / timing['int8']:.2f}x)", flush=True)
    print(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
