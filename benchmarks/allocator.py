"""What keeping freed memory in the process (``imagereward.allocator``) is worth.

    python benchmarks/allocator.py --scorers HPSv2,ImageReward-v1.0 --dtypes fp32,bf16
    python benchmarks/allocator.py --scorers HPSv2 --dtypes bf16 --before .bench/wt-before/src

Each scorer is written once with full-size random weights in its original format (the
writers of ``dtype_cost.py``) under ``--workdir``. Each measurement is a fresh process
that does what an ``imagereward`` command does (``keep_freed_memory()`` first, then the
model) and times ``score_batch`` on ``--images`` decoded 512 px images, one prompt each,
3 calls after a warm-up: wall time, user and system CPU time and minor page faults of
its best call, and its peak and final resident memory. The sides, alternating for
``--rounds`` rounds: glibc's defaults (``IMAGEREWARD_MALLOC_TUNING=0``), the setting of
this checkout, and with ``--before SRC`` the setting of another checkout's ``src``
(a worktree of an earlier commit). Each side's speed against every other side is
printed round by round, with the median.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(HERE))

PROBE = """
import json, os, re, resource, sys, time
from imagereward.allocator import keep_freed_memory
keep_freed_memory()  # as the commands do, before torch lays anything out
import torch
sys.path[:0] = [os.environ["BENCH_DIR"], os.environ["TESTS_DIR"]]
import imagereward
from scorer_ceiling import workload
name, dtype, images, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(threads)
model = imagereward.load(name, files=json.loads(sys.argv[5]), device="cpu", batch_size=images,
                         dtype=None if dtype == "fp32" else dtype)
pairs = workload(images)
calls = []
model.score_batch(pairs["prompts"], pairs["images"])
for _ in range(3):
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    model.score_batch(pairs["prompts"], pairs["images"])
    r1, t1 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    calls.append({"wall": t1 - t0, "user": r1.ru_utime - r0.ru_utime,
                  "sys": r1.ru_stime - r0.ru_stime, "faults": r1.ru_minflt - r0.ru_minflt})
status = open("/proc/self/status").read()
memory = {key: int(re.search(key + r":\\s+(\\d+)", status).group(1)) // 1024 for key in ("VmHWM", "VmRSS")}
print(json.dumps(dict(min(calls, key=lambda c: c["wall"]), peak_mb=memory["VmHWM"], rss_mb=memory["VmRSS"])))
"""


def run_probe(name: str, dtype: str, files: Dict[str, str], args: argparse.Namespace,
              env: Dict[str, str]) -> Dict[str, float]:
    from helpers import BERT_VOCAB, CLIP_BPE

    from imagereward.tokenizers.clip_bpe import BPE_ENV

    env = dict(env, BENCH_DIR=str(HERE), TESTS_DIR=str(REPO / "tests"), IMAGEREWARD_BERT_VOCAB=str(BERT_VOCAB),
               HF_HUB_OFFLINE="1", IMAGEREWARD_OFFLINE="1", **{BPE_ENV: str(CLIP_BPE)})
    out = subprocess.run(
        [sys.executable, "-c", PROBE, name, dtype, str(args.images), str(args.threads), json.dumps(files)],
        env=env, check=True, capture_output=True, text=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scorers", default="ImageReward-v1.0")
    parser.add_argument("--dtypes", default="fp32,bf16")
    parser.add_argument("--images", type=int, default=16, help="pairs per call (one batch)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--before", type=Path, default=None,
                        help="another checkout's src folder, timed as a third side")
    parser.add_argument("--workdir", type=Path, default=REPO / ".bench" / "allocator")
    args = parser.parse_args()
    from dtype_cost import written_files

    clean = {k: v for k, v in os.environ.items()
             if k not in ("IMAGEREWARD_MALLOC_TUNING", "PYTHONPATH") and not k.startswith("MALLOC_")}
    sides = {"glibc defaults": dict(clean, IMAGEREWARD_MALLOC_TUNING="0"), "kept (this checkout)": clean}
    if args.before:
        sides["kept (before)"] = dict(clean, PYTHONPATH=str(args.before.resolve()))
    rows: List[Dict[str, object]] = []
    for name in args.scorers.split(","):
        files = written_files(name, args.workdir)
        for dtype in args.dtypes.split(","):
            calls: Dict[str, List[Dict[str, float]]] = {side: [] for side in sides}
            for round_index in range(args.rounds):
                order = list(sides) if round_index % 2 == 0 else list(reversed(sides))
                for side in order:
                    calls[side].append(run_probe(name, dtype, files, args, sides[side]))
                    print(name, dtype, side, json.dumps(calls[side][-1]), flush=True)
            for side, results in calls.items():
                ratios = {other: [a["wall"] / b["wall"] for a, b in zip(calls[other], results)]
                          for other in sides if other != side}
                rows.append({"scorer": name, "dtype": dtype, "side": side,
                             "best": min(results, key=lambda c: c["wall"]), "ratios": ratios})
    print(f"\n{args.images} pairs per call, {args.threads} threads\n")
    print("| scorer | dtype | malloc | wall (s), best | user (s) | sys (s) | minor faults | peak / final RSS (MB) "
          "| speed against each other side: by round, median |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        best = row["best"]
        against = "; ".join(f"{other}: {', '.join(f'{r:.2f}' for r in ratios)}, **{statistics.median(ratios):.2f}x**"
                            for other, ratios in row["ratios"].items())
        print(f"| {row['scorer']} | {row['dtype']} | {row['side']} | {best['wall']:.3f} | {best['user']:.2f} "
              f"| {best['sys']:.2f} | {best['faults']:,} | {best['peak_mb']:,} / {best['rss_mb']:,} | {against} |")


if __name__ == "__main__":
    main()
