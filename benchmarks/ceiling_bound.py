"""Where each scorer's time goes, against the machine's matrix-product ceiling, and what
issue 26's goals (0.85 of the ceiling in bf16, 0.9 in fp32) would ask of everything but
the linear layers.

    python benchmarks/ceiling_bound.py --workdir .bench/sc --dtypes bf16
    python benchmarks/ceiling_bound.py --scorers ImageReward-v1.0 --dtypes fp32,bf16 --rounds 3

Each scorer is written with full-size random weights in its original format (the
writers of ``dtype_cost.py``) and loaded in each of ``--dtypes``. Its work per pair is
counted as ``scorer_ceiling.py`` counts it (``FlopCounterMode`` on the fp32 model), and
the ceiling is measured the same way (``speed_side.gemm``), right before each profiled
call, as this host's speed drifts. Each of ``--rounds`` rounds runs one call of
``score_batch`` on ``--images`` decoded 512 px images with their own prompts under
``torch.profiler`` (after two warm-up calls); the round with the fastest call (without
the profiler) is reported, with every round's share. Each operation's own time is put in one of these groups:

- ``linear products``: the linear layers and the patch embedding (oneDNN's linear op,
  MKL's ``addmm``/``mm``, the convolution), with their FLOPs worked out from their shapes,
  so their own rate shows;
- ``batched products`` (``bmm``: the text encoders' folded cross-attention), with FLOPs;
- ``attention kernel`` (the fused scaled-dot-product attention), with FLOPs;
- ``layer norm``, ``softmax`` (outside the fused kernel), ``other ops`` (element-wise
  operations, copies, everything else torch runs);
- ``outside torch ops``: the call's wall time less every operation's own time (Python,
  resizing the images, tokenising).

The FLOPs the groups' shapes account for are checked against the count (``FLOPs
placed``: 1.00 when every product was recognised). The bound: with the linear products
as they run now (each at its measured time), the share of the ceiling the whole call
would reach if nothing else took any time; and the time everything else may take for
the call to reach the goal, against the time it takes now. The machine's CPU flags and
torch version are printed with it.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))

from dtype_cost import written_files  # noqa: E402
from scorer_ceiling import (  # noqa: E402
    DTYPES, flops_per_pair, parse_scorers_args, prepare, report_main, scorers_parser,
)
from speed_side import gemm  # noqa: E402

GROUPS = ("linear products", "batched products", "attention kernel", "layer norm", "softmax",
          "other ops", "outside torch ops")
GOALS = {"fp32": 0.9, "bf16": 0.85}  # issue 26's shares of the ceiling
LINEAR_OPS = ("mkldnn::_linear_pointwise", "aten::addmm", "aten::mm", "aten::mkldnn_convolution")
ATTENTION_OPS = ("aten::_scaled_dot_product_flash_attention_for_cpu",)


def _rows(shape: Sequence[int]) -> int:
    rows = 1
    for size in shape[:-1]:
        rows *= size
    return rows


def op_flops(name: str, shapes: List[List[int]]) -> Optional[float]:
    """FLOPs of one call of a product-like operation, from its input shapes (None: not one)."""
    if name == "mkldnn::_linear_pointwise":
        # unary: (x, weight, bias, attr, scalars, algorithm); binary: (x, other, weight, bias, attr)
        weight = shapes[2] if len(shapes) == 5 else shapes[1]
        return 2.0 * _rows(shapes[0]) * weight[0] * weight[1]
    if name == "aten::addmm":
        (m, k), (_, n) = shapes[1], shapes[2]
        return 2.0 * m * k * n
    if name == "aten::mm":
        (m, k), (_, n) = shapes[0], shapes[1]
        return 2.0 * m * k * n
    if name == "aten::bmm":
        (b, m, k), (_, _, n) = shapes[0], shapes[1]
        return 2.0 * b * m * k * n
    if name == "aten::mkldnn_convolution":  # a patch embedding: stride equal to the kernel
        (b, c, h, w), (out_channels, _, kh, kw) = shapes[0], shapes[1]
        return 2.0 * b * out_channels * c * kh * kw * (h // kh) * (w // kw)
    if name in ATTENTION_OPS:
        (b, heads, queries, dim), keys = shapes[0], shapes[1][2]
        return 4.0 * b * heads * queries * keys * dim
    return None


def group_of(name: str) -> str:
    if name in LINEAR_OPS:
        return "linear products"
    if name == "aten::bmm":
        return "batched products"
    if name in ATTENTION_OPS:
        return "attention kernel"
    if name == "aten::native_layer_norm":
        return "layer norm"
    if name in ("aten::_softmax", "aten::softmax"):
        return "softmax"
    return "other ops"


def profiled_call(model: Any, pairs: Dict[str, List[Any]]) -> Dict[str, Any]:
    """One ``score_batch`` under the profiler: seconds and FLOPs per group and the wall time,
    and the best wall time of three calls without the profiler.

    The seconds come from a call profiled without input shapes, which cost ImageReward's
    bf16 call 6-8% more; the FLOPs (which do not depend on timing) from one with them."""
    from torch.profiler import ProfilerActivity, profile

    def call() -> float:
        start = time.perf_counter()
        model.score_batch(pairs["prompts"], pairs["images"])
        return time.perf_counter() - start

    with torch.no_grad():
        unprofiled = min(call() for _ in range(3))
        with profile(activities=[ProfilerActivity.CPU]) as timed:
            wall = call()
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as shaped:
            call()
    seconds = {group: 0.0 for group in GROUPS}
    for event in timed.key_averages():
        seconds[group_of(event.key)] += event.self_cpu_time_total / 1e6
    seconds["outside torch ops"] = max(wall - sum(seconds.values()), 0.0)
    flops = {group: 0.0 for group in GROUPS}
    for event in shaped.key_averages(group_by_input_shape=True):
        per_call = op_flops(event.key, event.input_shapes)  # None for every op of "other ops"
        if per_call:
            flops[group_of(event.key)] += per_call * event.count
    return {"wall": wall, "unprofiled_wall": unprofiled, "seconds": seconds, "flops": flops}


def bound(call: Dict[str, Any], total_flops: float, ceiling_gflops: float, goal: float) -> Dict[str, float]:
    """The share now (without the profiler), the linear products' own share, the share
    with everything but them free, and the time the rest may take for ``goal`` (all of
    these from the profiled call)."""
    ceiling = ceiling_gflops * 1e9
    linear = call["seconds"]["linear products"]
    rest = call["wall"] - linear
    allowed = total_flops / (goal * ceiling) - linear
    return {
        "share": total_flops / call["unprofiled_wall"] / ceiling,
        "profiled_share": total_flops / call["wall"] / ceiling,
        "linear_share_of_ceiling": call["flops"]["linear products"] / max(linear, 1e-12) / ceiling,
        "share_if_rest_free": total_flops / max(linear, 1e-12) / ceiling,
        "flops_placed": sum(call["flops"].values()) / total_flops,
        "goal": goal,
        "rest_seconds": rest,
        "rest_allowed_seconds": allowed,
        "rest_speedup_needed": rest / allowed if allowed > 0 else float("inf"),
    }


def run(args: argparse.Namespace, workdir: Path) -> Dict[str, Any]:
    import imagereward

    pairs, report = prepare(args)
    for name in args.scorers:  # one scorer in memory at a time
        files = written_files(name, workdir)
        counted = imagereward.load(name, files=files, device="cpu", batch_size=args.images)
        total = flops_per_pair(counted, pairs) * args.images
        del counted
        gc.collect()
        entry: Dict[str, Any] = {"gflop": total / 1e9}
        for dtype in args.dtypes:
            model = imagereward.load(name, files=files, device="cpu", batch_size=args.images,
                                     dtype=None if dtype == "fp32" else dtype)
            shares: List[float] = []
            for round_index in range(args.rounds):
                ceilings = gemm({"threads": args.threads, "dtypes": [dtype], "repeats": 5, "impl": "ours"})
                ceiling = ceilings["ceiling"][dtype]["gflops"]
                call = profiled_call(model, pairs)
                measured = {**call, "ceiling_gflops": ceiling, **bound(call, total, ceiling, GOALS[dtype])}
                print(f"[{name} {dtype}, round {round_index + 1}] {call['wall']:.3f} s, "
                      f"{measured['share']:.2f} of {ceiling:.0f} GFLOP/s", file=sys.stderr, flush=True)
                shares.append(measured["share"])
                if dtype not in entry or call["unprofiled_wall"] < entry[dtype]["unprofiled_wall"]:
                    entry[dtype] = measured
            entry[dtype]["shares_by_round"] = shares
            del model
            gc.collect()
        report["scorers"][name] = entry
    return report


def cell(row: Dict[str, Any], group: str) -> str:
    """A group's seconds, and its rate where it has FLOPs."""
    seconds, flops = row["seconds"][group], row["flops"][group]
    rate = f" ({flops / seconds / 1e12:.2f} TF/s)" if flops and seconds else ""
    return f"{seconds:.3f}{rate}"


def budget(row: Dict[str, Any]) -> str:
    """The rest's time now against what the goal allows, and how much less it would need."""
    allowed, needed = row["rest_allowed_seconds"], row["rest_speedup_needed"]
    if allowed <= 0:
        return f"{row['rest_seconds']:.3f} / none"
    verdict = "met" if needed <= 1 else f"{needed:.1f}x less"
    return f"{row['rest_seconds']:.3f} / {allowed:.3f} ({verdict})"


def table(report: Dict[str, Any]) -> str:
    header = (["scorer", "dtype", "wall (s)", *GROUPS, "ceiling (GFLOP/s)", "share (profiled; by round)",
               "linear products' share", "share if the rest were free", "goal",
               "the rest now / allowed for the goal", "FLOPs placed"])
    lines = [f"{report['pairs']} pairs per call; seconds of one profiled `score_batch`, each group's own time "
             "(its rate where it has FLOPs), in the round of the fastest call", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, entry in report["scorers"].items():
        for dtype in DTYPES:
            if dtype not in entry:
                continue
            row = entry[dtype]
            by_round = ", ".join(f"{share:.2f}" for share in row["shares_by_round"])
            cells = [name, dtype, f"{row['wall']:.3f}", *(cell(row, group) for group in GROUPS),
                     f"{row['ceiling_gflops']:.0f}", f"{row['share']:.2f} ({row['profiled_share']:.2f}; {by_round})",
                     f"{row['linear_share_of_ceiling']:.2f}", f"{row['share_if_rest_free']:.2f}", str(row["goal"]),
                     budget(row), f"{row['flops_placed']:.2f}"]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = scorers_parser(__doc__, "pairs in the profiled call (one batch)", "bf16")
    parser.add_argument("--rounds", type=int, default=2, help="profiled calls per model (the fastest is kept)")
    return report_main(parse_scorers_args(parser), run, table, "imagereward-ceiling-bound-")


if __name__ == "__main__":
    sys.exit(main())
