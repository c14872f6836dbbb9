"""What keeping freed memory in the process (``imagereward.allocator``) is worth.

    python benchmarks/allocator.py [CHECKPOINT] [--dtypes fp32,bf16] [--rounds 3]

Runs the image encoder of a full-size ImageReward on 8 random 224 px images in fresh
processes, alternating ``IMAGEREWARD_MALLOC_TUNING=0`` (glibc's defaults) and the
default (tuned), and prints per call: wall time, user and system CPU time and minor
page faults, best of 3 calls per process. The checkpoint defaults to the random-weight
``ImageReward.pt`` that ``speed.py`` writes into ``.bench/speed``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

PROBE = """
import json, resource, sys, time, torch
import imagereward
torch.set_num_threads(int(sys.argv[3]))
model = imagereward.load(sys.argv[1], device="cpu", dtype=sys.argv[2])
pixels = torch.rand(8, 3, 224, 224, generator=torch.Generator().manual_seed(0))
pixels = pixels.to(model.compute_dtype)
calls = []
with torch.inference_mode():
    model.encode_images(pixels)
    for _ in range(3):
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        model.encode_images(pixels)
        r1, t1 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        calls.append({"wall": t1 - t0, "user": r1.ru_utime - r0.ru_utime,
                      "sys": r1.ru_stime - r0.ru_stime, "faults": r1.ru_minflt - r0.ru_minflt})
print(json.dumps(min(calls, key=lambda c: c["wall"])))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", nargs="?",
                        default=str(HERE.parent / ".bench" / "speed" / "ImageReward.pt"))
    parser.add_argument("--dtypes", default="fp32,bf16")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    checkpoint = args.checkpoint
    if not Path(checkpoint).is_file():
        sys.exit(f"no checkpoint at {checkpoint}: run benchmarks/speed.py first or pass one")
    results = {}
    for dtype in args.dtypes.split(","):
        for _ in range(args.rounds):
            for label, tuning in (("glibc defaults", "0"), ("kept in process", "1")):
                env = dict(os.environ, IMAGEREWARD_MALLOC_TUNING=tuning)
                out = subprocess.run(
                    [sys.executable, "-c", PROBE, checkpoint, dtype, str(args.threads)],
                    env=env, check=True, capture_output=True, text=True,
                ).stdout
                call = json.loads(out.strip().splitlines()[-1])
                best = results.setdefault((dtype, label), call)
                if call["wall"] < best["wall"]:
                    results[(dtype, label)] = call
                print(dtype, label, json.dumps(call), flush=True)
    print("\n| dtype | malloc | wall (s) | user (s) | sys (s) | minor faults |")
    print("|---|---|---|---|---|---|")
    for (dtype, label), call in results.items():
        print(f"| {dtype} | {label} | {call['wall']:.2f} | {call['user']:.2f} | "
              f"{call['sys']:.2f} | {call['faults']:,} |")


if __name__ == "__main__":
    main()
