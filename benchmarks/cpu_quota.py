"""What torch threads beyond a cgroup CPU quota cost, and what ``imagereward.cpu_share`` does about it.

    sudo python benchmarks/cpu_quota.py [CHECKPOINT] [--quota 1] [--dtypes bf16,fp32] [--rounds 2]

A container limited with ``docker run --cpus=1`` or a Kubernetes CPU limit of 1 still
sees every core of its host: torch starts one thread per core, and the kernel lets the
process run only its quota's share of each 100 ms period. This script makes a cgroup
with a CPU quota of ``--quota`` CPUs (cgroup v2 ``cpu.max`` or v1 ``cpu.cfs_quota_us``;
it needs root and a writable cgroup file system, and says so otherwise), and runs the
same scoring, in fresh processes inside it, with:

- ``torch default``: the threads torch starts by itself (one per core of the affinity
  mask), what the commands ran before they read the quota;
- ``allocated``: ``cpu_share.use_allocated_threads()``, what ``imagereward score``,
  ``rank``, ``eval``, ``benchmark``, ``reward-stats`` and training now do;

and, as the yardstick, the allocated threads outside the cgroup. The work: a full-size
ImageReward (the random-weight ``ImageReward.pt`` that ``speed.py`` writes) scoring 8
random 224 px tensors with ``score_tensors``, best of 3 calls per process, the two
sides alternating for ``--rounds`` rounds. It prints the CPU flags and torch version.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Dict, List, Optional

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))

from serve import machine  # noqa: E402  (CPU flags, torch and Ray versions)
CGROUP = Path("/sys/fs/cgroup")

WORKER = HERE / "tensors_timing.py"  # one process's timing, shared with isa_ab.py


def make_cgroup(quota: float) -> Optional[Path]:
    """A fresh cgroup limited to ``quota`` CPUs, or None where this process cannot make one."""
    name = f"imagereward-bench-{uuid.uuid4().hex[:8]}"
    period = 100_000
    try:
        if (CGROUP / "cgroup.controllers").is_file():  # v2
            folder = CGROUP / name
            folder.mkdir()
            (folder / "cpu.max").write_text(f"{int(quota * period)} {period}\n")
        else:  # v1
            folder = CGROUP / "cpu" / name
            folder.mkdir()
            (folder / "cpu.cfs_period_us").write_text(f"{period}\n")
            (folder / "cpu.cfs_quota_us").write_text(f"{int(quota * period)}\n")
    except OSError as error:
        print(f"[cpu-quota] cannot make a cgroup with a CPU quota here ({error}); run as root on a "
              "machine with a writable cgroup file system", file=sys.stderr)
        return None
    return folder


def run(checkpoint: str, dtype: str, threads: str, cgroup: Optional[Path]) -> Dict[str, float]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env["PYTHONPATH"] = str(HERE.parent / "src")

    def enter() -> None:  # in the child, before it runs Python: move it into the cgroup
        if cgroup is not None:
            (cgroup / "cgroup.procs").write_text(f"{os.getpid()}\n")

    out = subprocess.run([sys.executable, str(WORKER), checkpoint, dtype, threads], env=env,
                         preexec_fn=enter, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", nargs="?", default=str(HERE.parent / ".bench" / "speed" / "ImageReward.pt"))
    parser.add_argument("--quota", type=float, default=1.0, help="CPUs of the cgroup's quota")
    parser.add_argument("--dtypes", default="bf16,fp32")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    if not Path(args.checkpoint).is_file():
        sys.exit(f"no checkpoint at {args.checkpoint}: run benchmarks/speed.py first or pass one")
    cgroup = make_cgroup(args.quota)
    if cgroup is None:
        return 2
    info = machine(1)
    flags = info["cpu_flags"]
    print(f"[cpu-quota] torch {info['torch']}; CPU flags: {flags}; {os.cpu_count()} CPUs; cgroup {cgroup} "
          f"with a quota of {args.quota:g} CPU", flush=True)
    sides = (("torch default, in the cgroup", "default", cgroup), ("allocated, in the cgroup", "allocated", cgroup),
             ("allocated, no quota", "allocated", None))
    results: Dict[str, Dict[str, List[Dict[str, float]]]] = {}
    try:
        for dtype in args.dtypes.split(","):
            results[dtype] = {label: [] for label, _, _ in sides}
            for round_index in range(args.rounds):
                for label, threads, group in sides:
                    reply = run(args.checkpoint, dtype, threads, group)
                    results[dtype][label].append(reply)
                    print(f"[cpu-quota] {dtype} round {round_index + 1} {label}: {reply['threads']} threads "
                          f"(allocation {reply['allocation']:g}), {reply['s_per_image']:.4f} s/img", flush=True)
    finally:
        cgroup.rmdir()
    print("\n| dtype | side | threads | s/img (best of rounds) | vs allocated in the cgroup |")
    print("|---|---|---|---|---|")
    summary = {}
    for dtype, by_side in results.items():
        allocated = min(r["s_per_image"] for r in by_side["allocated, in the cgroup"])
        for label, replies in by_side.items():
            best = min(r["s_per_image"] for r in replies)
            summary[f"{dtype} {label}"] = {"threads": replies[0]["threads"], "s_per_image": best,
                                           "over_allocated": best / allocated}
            print(f"| {dtype} | {label} | {replies[0]['threads']} | {best:.4f} | {best / allocated:.2f}x |")
    if args.json:
        args.json.write_text(json.dumps({"cpu_flags": flags, "quota": args.quota, "results": results,
                                         "summary": summary}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
