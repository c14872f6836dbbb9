"""Which path a linear layer's product takes, old rule against the rule now, on the same model.

    flock /tmp/imagereward-cpu.lock python benchmarks/linear_paths.py --workdir .bench/sc
    python benchmarks/linear_paths.py --scorers ImageReward-v1.0 --images 1,16 --rounds 5
    python benchmarks/linear_paths.py --rule float32-mkl --images 1,4,16 --rounds 4
    python benchmarks/linear_paths.py --rule quick-gelu-silu --scorers CLIP,Aesthetic --images 4,16

``--rule packed-weights`` (bf16, ``layers.packs_weight``): ``every weight packed`` (the
rule before) against the rule now (on AMX, products of 512 rows or more through layers
with more inputs than outputs run from the plain weight, not a packed copy).
``--rule float32-mkl`` (fp32, ``layers.runs_on_mkl``): ``every product on oneDNN`` (the
rule before) against the rule now (on AMX Xeons, products of 1,024 rows or more run
through MKL). ``--rule quick-gelu-swish`` (bf16, ``clip.FeedForward._swish_applies``;
scorers with OpenAI's QuickGELU: ``--scorers CLIP,Aesthetic``): ``QuickGELU after the
product`` against the rule now (on AMX, QuickGELU inside ``c_fc``'s product as oneDNN's
swish post-op, on scaled weights). ``--rule quick-gelu-silu`` (fp32,
``clip.FeedForward._silu_applies``; ``--scorers CLIP,Aesthetic``): ``QuickGELU in three
passes`` against the rule now (on AMX, where both products run through MKL, QuickGELU as
one in-place SiLU pass, its factors given to the products as sgemm's alpha). On a CPU
without AMX both rules are the same and nothing is compared.

Each scorer is written with full-size random weights in its original file format (the
writers of ``dtype_cost.py``), loaded once in the rule's dtype, and timed with
``score_batch`` on ``--images`` decoded 512 px images, each with its own test.json
prompt, malloc set as the commands set it. The two rules alternate round by round (the
order flips every round). The report gives each round's ratio (before over now: above 1
is faster now), their median, whether the rewards are bitwise the same (where they are
not, for bf16 each rule's mean and max error against the fp32 model; for fp32 the max
difference), and for bf16 the megabytes of packed and scaled copies each rule keeps. The machine's
CPU flags and torch version are printed.
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

# --rule: (dtype, the module and attribute it patches, the rule before it)
RULE_CHOICES = {
    "packed-weights": ("bf16", "imagereward.models.layers", "packs_weight", "every weight packed",
                       lambda weight, rows: True),
    "float32-mkl": ("fp32", "imagereward.models.layers", "runs_on_mkl", "every product on oneDNN",
                    lambda dtype, rows: False),
    "quick-gelu-swish": ("bf16", "imagereward.models.clip:FeedForward", "_swish_applies",
                         "QuickGELU after the product", lambda self, x: False),
    "quick-gelu-silu": ("fp32", "imagereward.models.clip:FeedForward", "_silu_applies",
                        "QuickGELU in three passes", lambda self, x: False),
}


def patch_target(path: str) -> Any:
    """The module (``package.module``) or class (``package.module:Class``) a rule patches."""
    import importlib

    module, _, name = path.partition(":")
    target = importlib.import_module(module)
    return getattr(target, name) if name else target


NOW = "the rule now"


def packed_megabytes(model: torch.nn.Module) -> float:
    """Megabytes of the weight copies ``model`` keeps beside its parameters: oneDNN's packed
    weights and ``clip.FeedForward``'s scaled ones."""
    from imagereward.models import layers

    total = 0
    for module in model.modules():
        cached = module.__dict__.get(layers._PACKED)
        if cached is not None:
            total += cached[1].numel() * cached[1].element_size()
        derived = module.__dict__.get(layers.DERIVED)  # clip.FeedForward's scaled weights
        if derived is not None:
            total += sum(t.numel() * t.element_size() for t in derived[1].values() if t is not None)
    return total / 1e6


def drop_packed(model: torch.nn.Module) -> None:
    """Forget the copies :func:`packed_megabytes` counts, so that the next call makes them."""
    from imagereward.models import layers

    for module in model.modules():
        module.__dict__.pop(layers._PACKED, None)
        module.__dict__.pop(layers.DERIVED, None)


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

    keep_freed_memory()
    torch.set_num_threads(args.threads)
    dtype, where, function, before, rule_before = RULE_CHOICES[args.rule]
    target = patch_target(where)
    rule_now = getattr(target, function)
    sides = (before, NOW)
    rules: Dict[str, Callable[..., bool]] = {before: rule_before, NOW: rule_now}
    report: Dict[str, Any] = {"machine": machine(args.threads), "torch": torch.__version__, "rule": args.rule,
                              "dtype": dtype, "sides": sides, "scorers": {}}
    try:
        for name in args.scorers:
            files = written_files(name, workdir)
            model = imagereward.load(name, files=files, device="cpu", batch_size=max(args.images), dtype=dtype)
            entry: Dict[str, Any] = {}
            report["scorers"][name] = entry
            for count in args.images:
                pairs = workload(count)
                times: Dict[str, List[float]] = {side: [] for side in sides}
                rewards: Dict[str, List[float]] = {}
                megabytes: Dict[str, float] = {}
                for side in sides:  # each rule's packed copies are made (and counted) once
                    setattr(target, function, rules[side])
                    drop_packed(model)
                    with torch.no_grad():
                        rewards[side] = model.score_batch(pairs["prompts"], pairs["images"])
                    megabytes[side] = packed_megabytes(model)
                for index in range(args.rounds):
                    for side in (sides if index % 2 == 0 else sides[::-1]):
                        setattr(target, function, rules[side])
                        times[side].append(measure(model, pairs, args.repeats))
                ratios = [b / a for b, a in zip(times[before], times[NOW])]
                result = entry[str(count)] = {
                    "seconds": times, "ratios": ratios, "median_ratio": statistics.median(ratios),
                    "bitwise_same": rewards[before] == rewards[NOW],
                    "max_abs_diff": max(abs(a - b) for a, b in zip(*rewards.values())),
                    "packed_megabytes": megabytes,
                }
                if not result["bitwise_same"] and dtype == "bf16":  # a different rounding: which is nearer fp32?
                    result["error_vs_fp32"] = error_vs_fp32(name, files, pairs, rewards)
                    print(f"[{name}, {count} pairs] mean / max |bf16 - fp32|: " + "; ".join(
                        f"{side} {e['mean']:.4g} / {e['max']:.4g}"
                        for side, e in result["error_vs_fp32"].items()), file=sys.stderr, flush=True)
                print(f"[{name}, {count} pairs] before/now by round: " + ", ".join(f"{r:.3f}" for r in ratios)
                      + f"; median {statistics.median(ratios):.3f}; bitwise same: {result['bitwise_same']}"
                      + f" (max diff {result['max_abs_diff']:.3g})"
                      + f"; packed MB {megabytes[before]:.0f} -> {megabytes[NOW]:.0f}",
                      file=sys.stderr, flush=True)
            del model
            gc.collect()
    finally:
        setattr(target, function, rule_now)
    return report


def table(report: Dict[str, Any]) -> str:
    before, now = report["sides"]
    lines = [f"{report['rule']} ({report['dtype']}): {before} -> {now}", "",
             "| scorer | pairs per call | s before / now (medians) | before / now by round | median | rewards "
             "| packed copies (MB) before -> now |", "|---|---|---|---|---|---|---|"]
    for name, entry in report["scorers"].items():
        for count, result in entry.items():
            seconds = result["seconds"]
            if result["bitwise_same"]:
                rewards = "bitwise same"
            elif "error_vs_fp32" in result:
                rewards = (f"max diff {result['max_abs_diff']:.2e}; mean abs error vs fp32 "
                           + " -> ".join(f"{result['error_vs_fp32'][side]['mean']:.3g}" for side in report["sides"]))
            else:
                rewards = f"max diff {result['max_abs_diff']:.2e}"
            lines.append(
                f"| {name} | {count} | {statistics.median(seconds[before]):.3f} / "
                f"{statistics.median(seconds[now]):.3f} | "
                + ", ".join(f"{r:.2f}" for r in result["ratios"])
                + f" | **{result['median_ratio']:.2f}x** | {rewards}"
                + f" | {result['packed_megabytes'][before]:.0f} -> {result['packed_megabytes'][now]:.0f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rule", choices=sorted(RULE_CHOICES), default="packed-weights")
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
        print("this CPU has no AMX: both rules are the same here; nothing to compare", file=sys.stderr)
        return 0
    return report_main(args, run, table, "imagereward-linear-paths-")


if __name__ == "__main__":
    sys.exit(main())
