"""bf16 on AMX: which linear layers run from a packed copy of their weight (``layers.packs_weight``).

    flock /tmp/imagereward-cpu.lock python benchmarks/packed_weights.py --workdir .bench/sc
    python benchmarks/packed_weights.py --scorers ImageReward-v1.0 --images 1,16 --rounds 5

Each scorer is written with full-size random weights in its original file format (the
writers of ``dtype_cost.py``), loaded once in bf16, and timed with ``score_batch`` on
``--images`` decoded 512 px images, each with its own test.json prompt, malloc set as
the commands set it. Two rules for the same loaded model alternate round by round (the
order flips every round): ``every weight packed`` (``packs_weight`` always true, the
rule before) and ``the rule now`` (on AMX, products of 512 rows or more through layers
with more inputs than outputs run from the plain weight). The report gives each round's ratio (before over now: above 1 is
faster now), their median, whether the rewards are bitwise the same (where they are not,
each rule's mean and max error against the fp32 model), and the megabytes of packed
copies each rule keeps. The machine's CPU flags and torch version are printed.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))

from dtype_cost import written_files  # noqa: E402
from scorer_ceiling import measure, report_main, workload  # noqa: E402
from serve import machine  # noqa: E402

RULES = ("every weight packed", "the rule now")


def packed_megabytes(model: torch.nn.Module) -> float:
    from imagereward.models import layers

    total = 0
    for module in model.modules():
        cached = module.__dict__.get(layers._PACKED)
        if cached is not None:
            total += cached[1].numel() * cached[1].element_size()
    return total / 1e6


def drop_packed(model: torch.nn.Module) -> None:
    from imagereward.models import layers

    for module in model.modules():
        module.__dict__.pop(layers._PACKED, None)


def error_vs_fp32(name: str, files: Dict[str, str], pairs: Dict[str, List[Any]],
                  rewards: Dict[str, List[float]]) -> Dict[str, Dict[str, float]]:
    """Mean and max |bf16 - fp32| of each rule's rewards (the fp32 model loaded for this)."""
    import imagereward

    model = imagereward.load(name, files=files, device="cpu", batch_size=len(pairs["images"]))
    with torch.no_grad():
        exact = model.score_batch(pairs["prompts"], pairs["images"])
    del model
    gc.collect()
    out = {}
    for rule, values in rewards.items():
        errors = [abs(a - b) for a, b in zip(values, exact)]
        out[rule] = {"mean": statistics.mean(errors), "max": max(errors)}
    return out


def run(args: argparse.Namespace, workdir: Path) -> Dict[str, Any]:
    import imagereward
    from imagereward.allocator import keep_freed_memory
    from imagereward.models import layers

    keep_freed_memory()
    torch.set_num_threads(args.threads)
    rule_now = layers.packs_weight
    rules: Dict[str, Callable[[torch.Tensor, int], bool]] = {RULES[0]: lambda weight, rows: True,
                                                             RULES[1]: rule_now}
    report: Dict[str, Any] = {"machine": machine(args.threads), "torch": torch.__version__, "scorers": {}}
    try:
        for name in args.scorers:
            files = written_files(name, workdir)
            model = imagereward.load(name, files=files, device="cpu", batch_size=max(args.images), dtype="bf16")
            entry: Dict[str, Any] = {}
            report["scorers"][name] = entry
            for count in args.images:
                pairs = workload(count)
                times: Dict[str, List[float]] = {rule: [] for rule in RULES}
                rewards: Dict[str, List[float]] = {}
                megabytes: Dict[str, float] = {}
                for rule in RULES:  # each rule's packed copies are made (and counted) once
                    layers.packs_weight = rules[rule]
                    drop_packed(model)
                    with torch.no_grad():
                        rewards[rule] = model.score_batch(pairs["prompts"], pairs["images"])
                    megabytes[rule] = packed_megabytes(model)
                for index in range(args.rounds):
                    for rule in (RULES if index % 2 == 0 else RULES[::-1]):
                        layers.packs_weight = rules[rule]
                        times[rule].append(measure(model, pairs, args.repeats))
                ratios = [b / a for b, a in zip(times[RULES[0]], times[RULES[1]])]
                entry[str(count)] = {
                    "seconds": times, "ratios": ratios, "median_ratio": statistics.median(ratios),
                    "bitwise_same": rewards[RULES[0]] == rewards[RULES[1]],
                    "max_abs_diff": max(abs(a - b) for a, b in zip(*rewards.values())),
                    "packed_megabytes": megabytes,
                }
                if not entry[str(count)]["bitwise_same"]:  # a different rounding: which is nearer fp32?
                    entry[str(count)]["error_vs_fp32"] = error_vs_fp32(name, files, pairs, rewards)
                    print(f"[{name}, {count} pairs] mean / max |bf16 - fp32|: " + "; ".join(
                        f"{rule} {e['mean']:.4g} / {e['max']:.4g}"
                        for rule, e in entry[str(count)]["error_vs_fp32"].items()), file=sys.stderr, flush=True)
                print(f"[{name}, {count} pairs] before/now by round: " + ", ".join(f"{r:.3f}" for r in ratios)
                      + f"; median {statistics.median(ratios):.3f}; bitwise same: {entry[str(count)]['bitwise_same']}"
                      + f"; packed MB {megabytes[RULES[0]]:.0f} -> {megabytes[RULES[1]]:.0f}",
                      file=sys.stderr, flush=True)
            del model
            gc.collect()
    finally:
        layers.packs_weight = rule_now
    return report


def table(report: Dict[str, Any]) -> str:
    lines = ["| scorer | pairs per call | s before / now (medians) | before / now by round | median | rewards "
             "| packed copies (MB) before -> now |", "|---|---|---|---|---|---|---|"]
    for name, entry in report["scorers"].items():
        for count, result in entry.items():
            seconds = result["seconds"]
            lines.append(
                f"| {name} | {count} | {statistics.median(seconds[RULES[0]]):.3f} / "
                f"{statistics.median(seconds[RULES[1]]):.3f} | "
                + ", ".join(f"{r:.2f}" for r in result["ratios"])
                + f" | **{result['median_ratio']:.2f}x** | "
                + ("bitwise same" if result["bitwise_same"] else
                   f"max diff {result['max_abs_diff']:.2e}; mean abs error vs fp32 "
                   + " -> ".join(f"{result['error_vs_fp32'][rule]['mean']:.3g}" for rule in RULES))
                + f" | {result['packed_megabytes'][RULES[0]]:.0f} -> {result['packed_megabytes'][RULES[1]]:.0f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scorers", default="ImageReward-v1.0,CLIP,BLIP,Aesthetic,PickScore,HPSv2")
    parser.add_argument("--images", default="1,4,16", help="comma list of pairs per timed call")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2, help="timed calls per rule and round (best kept)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--workdir", type=Path, default=None, help="keep the written checkpoints here")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    args.scorers = [name.strip() for name in args.scorers.split(",") if name.strip()]
    args.images = [int(count) for count in args.images.split(",")]
    from imagereward.dtypes import cpu_has_amx

    if not cpu_has_amx():
        print("this CPU has no AMX: both rules pack every weight; nothing to compare", file=sys.stderr)
        return 0
    return report_main(args, run, table, "imagereward-packed-weights-")


if __name__ == "__main__":
    sys.exit(main())
