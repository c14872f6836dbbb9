"""Would int8 linear layers (AMX int8 / VNNI) pay for scoring on this CPU? Measured, not shipped.

    flock /tmp/imagereward-cpu.lock python benchmarks/int8_cost.py [--checkpoint .bench/speed/ImageReward.pt]

One process, 2 threads (``--threads``), full-size random ImageReward (the checkpoint
``speed.py`` writes, or a fresh random one):

1. The four linear layers of a ViT-L block on 8 x 197 tokens: bf16 on a packed weight
   (what ``load(dtype="bf16")`` runs), oneDNN's int8 product alone (``onednn::qlinear_pointwise``
   on a prepacked per-channel int8 weight, the activation already quantised), and the same
   with the activation quantised per call (per-tensor, asymmetric uint8: what a dynamic
   scheme must pay), in GFLOP/s.
2. The whole model on 8 tensors of 224 px: bf16 against the same model whose linear layers
   run that dynamic int8 scheme (bf16 in and out, GELU fused), alternating calls, best
   wall time; each one's reward error against fp32 and the share of image pairs ordered
   as fp32 over ``--images`` random images.
3. If ``torchao`` is importable: its ``Int8DynamicActivationInt8WeightConfig`` on the image
   encoder under ``torch.compile`` (inductor, freezing), against the bf16 encoder.

The product does not offer int8 (see docs/performance.md for why); this script is the
record of the measurement, and the starting point for a static scheme.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import itertools
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))

from helpers import BERT_VOCAB, random_state_dict  # noqa: E402
from serve import machine  # noqa: E402

SHAPES = {"qkv": (1024, 3072), "proj": (1024, 1024), "fc1": (1024, 4096), "fc2": (4096, 1024)}
PROMPT = "a photograph of an astronaut riding a horse on the moon, highly detailed, 4k"


def best_seconds(work: Callable[[], Any], repeats: int) -> float:
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
    same = [bool((a[i] - a[j]) * (b[i] - b[j]) > 0) for i, j in itertools.combinations(range(len(a)), 2)]
    return sum(same) / len(same)


def whole_model(checkpoint: str, images: int, rounds: int) -> Dict[str, Any]:
    import imagereward
    from imagereward.models import layers

    plain = layers.linear
    weights: Dict[int, tuple] = {}

    def dynamic_int8(x, weight, bias, owner, *, gelu=False, residual=None):
        if torch.is_grad_enabled() or x.dtype != torch.bfloat16:
            return plain(x, weight, bias, owner, gelu=gelu, residual=residual)
        if id(owner) not in weights:
            weights[id(owner)] = int8_weight(weight)
        out = int8_linear(x, weights[id(owner)], bias, gelu)
        return out if residual is None else out + residual

    @contextlib.contextmanager
    def linear_path(path):  # the models' linear layers run ``path`` inside the block
        layers.linear = path
        try:
            yield
        finally:
            layers.linear = plain

    variants = {"bf16": plain, "int8-dynamic": dynamic_int8}
    exact = imagereward.load("ImageReward-v1.0", checkpoint=checkpoint, vocab_file=str(BERT_VOCAB), device="cpu")
    model = imagereward.load("ImageReward-v1.0", checkpoint=checkpoint, vocab_file=str(BERT_VOCAB),
                             device="cpu", dtype="bf16")
    pixels = torch.rand(images, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    timed = pixels[:8]
    results: Dict[str, Any] = {}
    with torch.no_grad():
        reference = exact.score_tensors(pixels, PROMPT).float()
        del exact
        for name, path in variants.items():
            with linear_path(path):
                scores = model.score_tensors(pixels, PROMPT).float()
            error = (scores - reference).abs()
            results[name] = {"mean_abs_error": float(error.mean()), "max_abs_error": float(error.max()),
                             "pairs_ordered_as_fp32": pairs_ordered_alike(scores, reference), "seconds": []}
        for _ in range(rounds):  # alternating, so that drift hits both
            for name, path in variants.items():
                with linear_path(path):
                    results[name]["seconds"].append(best_seconds(lambda: model.score_tensors(timed, PROMPT), 1))
    for name, entry in results.items():
        entry["seconds_per_image"] = min(entry["seconds"]) / len(timed)
        print(f"[int8] whole model {name}: {entry['seconds_per_image']:.4f} s/img, mean |err| vs fp32 "
              f"{entry['mean_abs_error']:.3f}, max {entry['max_abs_error']:.3f}, pairs ordered as fp32 "
              f"{100 * entry['pairs_ordered_as_fp32']:.1f}%", flush=True)
    results["fp32_spread_std"] = float(reference.std())
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
    parser.add_argument("--images", type=int, default=32)
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
    results = {"machine": machine(args.threads), "gemm": gemm_rates(args.repeats),
               "whole_model": whole_model(str(args.checkpoint), args.images, args.rounds),
               "torchao": torchao_encoder(str(args.checkpoint), 3)}
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
