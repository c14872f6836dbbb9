"""What int8 scoring (``load(int8=...)``, ``--int8``) costs and gains on this CPU.

    flock /tmp/imagereward-cpu.lock python benchmarks/int8_cost.py [--checkpoint .bench/speed/ImageReward.pt]

One process, 2 threads (``--threads``), full-size random ImageReward (the checkpoint
``speed.py`` writes, or a fresh random one):

1. The four linear layers of a ViT-L block on 8 x 197 tokens: bf16 on a packed weight
   (what ``load(dtype="bf16")`` runs), oneDNN's int8 product alone (``onednn::qlinear_pointwise``
   on a prepacked per-channel int8 weight, the activation already quantised), and the same
   with the activation's range found and quantised per call (per-tensor, asymmetric uint8:
   what a dynamic scheme must pay, and why the product's scheme is static), in GFLOP/s.
2. The product's int8: calibrated (``imagereward.int8.calibrate``) on ``--calibration-pairs``
   synthetic images with the odd prompts, on the bf16 and on the fp32 model; then every
   variant (fp32, bf16, int8 on bf16, int8 on fp32) scores the parity set of
   ``fixtures.py`` (the four example images and ten odd ones, every odd prompt) with
   ``score_matrix``: mean and max |reward - fp32|, relative to the fp32 rewards' spread,
   and the share of image pairs each prompt orders as fp32. Then model time on 16
   tensors of 224 px, variants alternating, best of ``--rounds``.
3. If ``torchao`` is importable: its ``Int8DynamicActivationInt8WeightConfig`` on the image
   encoder under ``torch.compile`` (inductor, freezing), against the bf16 encoder.

Random weights are harsh on reduced precision (their features differ little between
images); the figures bound the cost, they do not predict it for trained weights.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))

from fixtures import PROMPTS, calibration_pairs, odd_images  # noqa: E402
from helpers import BERT_VOCAB, random_state_dict  # noqa: E402
from serve import machine  # noqa: E402

SHAPES = {"qkv": (1024, 3072), "proj": (1024, 1024), "fc1": (1024, 4096), "fc2": (4096, 1024)}
PROMPT = "a photograph of an astronaut riding a horse on the moon, highly detailed, 4k"


def best_seconds(work: Callable[[], Any], repeats: int) -> float:
    """Best of ``repeats`` timed calls after one untimed (0: one timed call, no warm-up)."""
    if repeats == 0:
        start = time.perf_counter()
        work()
        return time.perf_counter() - start
    work()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return min(times)


def int8_weight(weight: torch.Tensor) -> tuple:
    """Symmetric per-output-channel int8, prepacked for oneDNN: (packed, scales, zero points)."""
    w = weight.detach().float()
    scales = w.abs().amax(1).clamp(min=1e-12) / 127
    q = torch.round(w / scales[:, None]).clamp(-128, 127).to(torch.int8)
    return torch.ops.onednn.qlinear_prepack(q, None), scales, torch.zeros_like(scales, dtype=torch.long)


def quantize(x: torch.Tensor) -> tuple:
    """Per-tensor asymmetric uint8 of ``x`` [rows, width]: (codes, scale, zero point)."""
    low, high = torch.aminmax(x)
    low, high = min(float(low), 0.0), max(float(high), 0.0)
    scale = max(high - low, 1e-8) / 255
    zero = int(round(-low / scale))
    return torch.quantize_per_tensor(x.float(), scale, zero, torch.quint8).int_repr(), scale, zero


def int8_linear(x: torch.Tensor, packed: tuple, bias: Optional[torch.Tensor], gelu: bool) -> torch.Tensor:
    weight, scales, zeros = packed
    codes, scale, zero = quantize(x.reshape(-1, x.shape[-1]))
    out = torch.ops.onednn.qlinear_pointwise(
        codes, scale, zero, weight, scales, zeros, None if bias is None else bias.float(), 1.0, 0,
        x.dtype, "gelu" if gelu else "none", [], "none" if gelu else "")
    return out.view(*x.shape[:-1], -1)


def gemm_rates(repeats: int) -> Dict[str, Dict[str, float]]:
    rows, out = 8 * 197, {}
    generator = torch.Generator().manual_seed(0)
    for name, (fan_in, fan_out) in SHAPES.items():
        x = torch.randn(rows, fan_in, generator=generator).bfloat16()
        weight = torch.randn(fan_out, fan_in, generator=generator) * fan_in**-0.5
        bias = torch.zeros(fan_out)
        packed_bf16 = torch.ops.mkldnn._reorder_linear_weight(weight.bfloat16(), None)
        packed_int8 = int8_weight(weight)
        codes, scale, zero = quantize(x)
        flops = 2.0 * rows * fan_in * fan_out
        with torch.no_grad():
            bf16 = best_seconds(lambda: torch.ops.mkldnn._linear_pointwise(
                x, packed_bf16, bias.bfloat16(), "none", [], ""), repeats)
            product = best_seconds(lambda: torch.ops.onednn.qlinear_pointwise(
                codes, scale, zero, *packed_int8, bias, 1.0, 0, torch.bfloat16, "none", [], ""), repeats)
            dynamic = best_seconds(lambda: int8_linear(x, packed_int8, bias, False), repeats)
        out[name] = {"bf16_gflops": flops / bf16 / 1e9, "int8_product_gflops": flops / product / 1e9,
                     "int8_dynamic_gflops": flops / dynamic / 1e9}
        print(f"[int8] {name} {fan_in}x{fan_out}: " + ", ".join(f"{k} {v:.0f}" for k, v in out[name].items()),
              flush=True)
    return out


def pairs_ordered_alike(a: torch.Tensor, b: torch.Tensor) -> float:
    """Share of image pairs that each prompt (a row) orders as the reference does."""
    same = [bool((row_a[i] - row_a[j]) * (row_b[i] - row_b[j]) > 0)
            for row_a, row_b in zip(a, b) for i, j in itertools.combinations(range(a.shape[1]), 2)]
    return sum(same) / len(same)


def whole_model(checkpoint: str, workdir: Path, calibration_count: int, rounds: int) -> Dict[str, Any]:
    """The product's int8 (``load(int8=...)``) against fp32 and bf16: error on the parity
    set, and model time on 16 tensors of 224 px, alternating."""
    import imagereward
    from imagereward.int8 import calibrate

    def load(dtype: str, int8: Optional[str] = None) -> Any:
        return imagereward.load("ImageReward-v1.0", checkpoint=checkpoint, vocab_file=str(BERT_VOCAB),
                                device="cpu", dtype=dtype, int8=int8)

    images = odd_images(workdir)
    prompts, calibration_images = calibration_pairs(workdir / "calibration", calibration_count)
    models: Dict[str, Any] = {"fp32": load("fp32"), "bf16": load("bf16")}
    for base in ("bf16", "fp32"):
        start = time.perf_counter()
        calibration = calibrate(models[base], prompts, calibration_images)
        seconds = time.perf_counter() - start
        path = workdir / f"int8-{base}.json"
        calibration.save(str(path))
        print(f"[int8] calibrated on {base} with {calibration_count} pairs in {seconds:.1f} s: "
              f"{len(calibration.ranges)} layers, {len(calibration.fused)} GELU outputs handed on as uint8",
              flush=True)
        models[f"int8 ({base})"] = load(base, str(path))
    results: Dict[str, Any] = {}
    with torch.no_grad():
        reference = models["fp32"].score_matrix(PROMPTS, images).float()
        spread = float(reference.std(dim=1).mean())
        for name, model in models.items():
            if name == "fp32":
                continue
            scores = model.score_matrix(PROMPTS, images).float()
            error = (scores - reference).abs()
            results[name] = {"mean_abs_error": float(error.mean()), "max_abs_error": float(error.max()),
                             "error_over_spread": float(error.mean()) / spread,
                             "pairs_ordered_as_fp32": pairs_ordered_alike(scores, reference), "seconds": []}
        pixels = torch.rand(16, 3, 224, 224, generator=torch.Generator().manual_seed(0))
        results["fp32"] = {"seconds": []}
        for model in models.values():
            model.score_tensors(pixels[:2], PROMPT)  # first-call work (weight packing) out of the timing
        for _ in range(rounds):  # alternating, so that drift hits every variant
            for name, model in models.items():
                results[name]["seconds"].append(best_seconds(lambda: model.score_tensors(pixels, PROMPT), 0))
    for name, entry in results.items():
        entry["seconds_per_image"] = min(entry["seconds"]) / len(pixels)
        accuracy = "" if name == "fp32" else (
            f", mean |err| vs fp32 {entry['mean_abs_error']:.3f} ({entry['error_over_spread']:.3f} of the spread), "
            f"max {entry['max_abs_error']:.3f}, pairs ordered as fp32 {100 * entry['pairs_ordered_as_fp32']:.1f}%")
        print(f"[int8] whole model {name}: {entry['seconds_per_image']:.4f} s/img{accuracy}", flush=True)
    bf16 = results["bf16"]["seconds_per_image"]
    print(f"[int8] int8 (bf16) is {bf16 / results['int8 (bf16)']['seconds_per_image']:.2f}x bf16; "
          f"int8 (fp32) is {results['fp32']['seconds_per_image'] / results['int8 (fp32)']['seconds_per_image']:.2f}x fp32",
          flush=True)
    results["fp32_spread_std"] = spread
    return results


def torchao_encoder(checkpoint: str, repeats: int) -> Optional[Dict[str, Any]]:
    try:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
    except ImportError:
        print("[int8] torchao is not installed: its row is skipped", flush=True)
        return None
    import torch._inductor.config as inductor

    import imagereward

    inductor.freezing = True
    model = imagereward.load("ImageReward-v1.0", checkpoint=checkpoint, vocab_file=str(BERT_VOCAB),
                             device="cpu", dtype="bf16")
    encoder = model.network.encoders()[0]
    x = torch.rand(8, 3, 224, 224, generator=torch.Generator().manual_seed(0)).bfloat16()
    with torch.no_grad():
        expected = encoder(x).float()
        quantized = copy.deepcopy(encoder)  # its int8 weight tensors take the F.linear path
        quantize_(quantized, Int8DynamicActivationInt8WeightConfig(),
                  filter_fn=lambda module, _: isinstance(module, torch.nn.Linear))
        compiled = torch.compile(quantized)
        start = time.perf_counter()
        got = compiled(x).float()
        compile_seconds = time.perf_counter() - start
        int8 = best_seconds(lambda: compiled(x), repeats)
        bf16 = best_seconds(lambda: encoder(x), repeats)
    relative = float((got - expected).norm() / expected.norm())
    print(f"[int8] torchao int8 encoder, compiled: {int8:.3f} s, bf16 eager {bf16:.3f} s (8 images), "
          f"first call {compile_seconds:.0f} s, relative error of the tokens {relative:.3f}", flush=True)
    return {"int8_compiled_seconds": int8, "bf16_seconds": bf16, "compile_seconds": compile_seconds,
            "relative_error": relative}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=HERE.parent / ".bench" / "speed" / "ImageReward.pt")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--calibration-pairs", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from imagereward.allocator import keep_freed_memory

    keep_freed_memory()
    if not args.checkpoint.exists():
        from imagereward.config import ImageRewardConfig

        args.checkpoint.parent.mkdir(parents=True, exist_ok=True)
        torch.save(random_state_dict(ImageRewardConfig(), seed=1), args.checkpoint)
    workdir = Path(tempfile.mkdtemp(prefix="imagereward-int8-"))
    results = {"machine": machine(args.threads), "gemm": gemm_rates(args.repeats),
               "whole_model": whole_model(str(args.checkpoint), workdir, args.calibration_pairs, args.rounds),
               "torchao": torchao_encoder(str(args.checkpoint), 3)}
    shutil.rmtree(workdir)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
