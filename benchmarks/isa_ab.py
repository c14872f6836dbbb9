"""This checkout against an earlier commit, on this CPU and on CPUs it can pretend to be.

    python benchmarks/isa_ab.py --before affb9d7 [--rounds 2] [CHECKPOINT]

oneDNN can be kept off instruction sets this CPU has (``ONEDNN_MAX_CPU_ISA``), and ATen's
kernels too (``ATEN_CPU_CAPABILITY``), so one machine with AMX also runs as a CPU with
AVX512-BF16 but no AMX, and as one with AVX2 only. For each such CPU and dtype, fresh
processes of both sides (the earlier commit from a git worktree, through
``PYTHONPATH``) alternate for ``--rounds`` rounds: a full-size ImageReward (the
random-weight ``ImageReward.pt`` that ``speed.py`` writes) scores 8 random 224 px
tensors with ``score_tensors``, best of 3 calls. Printed per row: both sides' best s/img,
their ratio, each round's ratio and their median, and whether the scores are bitwise
the same. The emulation limits the instructions, not the cache or clock of the CPU
pretended: it shows that the code paths of such CPUs run what they ran before, not
their real speed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Tuple

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))

from serve import machine  # noqa: E402  (CPU flags, torch and Ray versions)
REPO = HERE.parent

WORKER = HERE / "tensors_timing.py"  # one process's timing, shared with cpu_quota.py

# (label, environment, dtypes)
CPUS: List[Tuple[str, Dict[str, str], Tuple[str, ...]]] = [
    ("this CPU", {}, ("fp32", "bf16")),
    ("AVX512-BF16, no AMX", {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"}, ("fp32", "bf16")),
    ("AVX2 only", {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}, ("fp32",)),
]


def side(src: Path, checkpoint: str, dtype: str, threads: int, env: Dict[str, str]) -> Dict[str, object]:
    clean = {k: v for k, v in os.environ.items() if k not in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY")}
    out = subprocess.run([sys.executable, str(WORKER), checkpoint, dtype, str(threads)],
                         env={**clean, **env, "PYTHONPATH": str(src)}, capture_output=True, text=True, check=True)
    reply = json.loads(out.stdout.strip().splitlines()[-1])
    if not str(reply["code"]).startswith(str(src)):
        raise RuntimeError(f"the worker imported {reply['code']}, not the code under {src}")
    return reply


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", nargs="?", default=str(REPO / ".bench" / "speed" / "ImageReward.pt"))
    parser.add_argument("--before", required=True, help="the earlier commit")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    if not Path(args.checkpoint).is_file():
        sys.exit(f"no checkpoint at {args.checkpoint}: run benchmarks/speed.py first or pass one")
    info = machine(1)
    flags = info["cpu_flags"]
    print(f"[isa-ab] torch {info['torch']}; CPU flags: {flags}; {args.threads} threads", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="isa-ab-") as tmp:
        worktree = Path(tmp) / "before"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(worktree), args.before],
                       check=True, capture_output=True)
        try:
            sides = {"before": worktree / "src", "now": REPO / "src"}
            for label, env, dtypes in CPUS:
                for dtype in dtypes:
                    replies: Dict[str, List[Dict[str, object]]] = {name: [] for name in sides}
                    for _ in range(args.rounds):
                        for name, src in sides.items():
                            replies[name].append(side(src, args.checkpoint, dtype, args.threads, env))
                    best = {name: min(float(r["s_per_image"]) for r in rs) for name, rs in replies.items()}
                    # Each round's two processes ran back to back: their ratio holds when the
                    # host's speed drifts between rounds.
                    paired = [float(b["s_per_image"]) / float(n["s_per_image"])
                              for b, n in zip(replies["before"], replies["now"])]
                    same = replies["before"][0]["scores"] == replies["now"][0]["scores"]
                    row = {"cpu": label, "env": env, "dtype": dtype, "before_s_per_image": best["before"],
                           "now_s_per_image": best["now"], "before_over_now": best["before"] / best["now"],
                           "round_ratios": paired, "median_round_ratio": statistics.median(paired),
                           "scores_bitwise_equal": same, "torch": replies["now"][0]["torch"]}
                    rows.append(row)
                    print(f"[isa-ab] {label:20s} {dtype}: before {best['before']:.4f} s/img, now {best['now']:.4f} "
                          f"({row['before_over_now']:.2f}x best/best; rounds "
                          f"{', '.join(f'{r:.2f}' for r in paired)}), scores bitwise equal: {same}", flush=True)
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(worktree)], check=False)
    print("\n| CPU (as oneDNN and ATen see it) | dtype | before (s/img) | now (s/img) | now speed-up, best/best "
          "| median of the rounds' ratios | same scores |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['cpu']} | {r['dtype']} | {r['before_s_per_image']:.4f} | {r['now_s_per_image']:.4f} | "
              f"{r['before_over_now']:.2f}x | {r['median_round_ratio']:.2f}x | "
              f"{'bitwise' if r['scores_bitwise_equal'] else 'no'} |")
    if args.json:
        args.json.write_text(json.dumps({"cpu_flags": flags, "before": args.before, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
