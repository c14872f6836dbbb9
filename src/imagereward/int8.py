"""int8 scoring on CPUs: linear layers on int8 matrix units (AMX, VNNI) with calibrated scales.

An approximation, never exact: rewards move by more than in bfloat16 (docs/performance.md
measures how far). It is for large scoring jobs where that is acceptable.

The scheme is static, so that a pair's reward does not depend on what else is scored:

- **Weights**: int8, one symmetric scale per output channel, made from the loaded
  weights when a layer first runs.
- **Activations** (each linear layer's input): uint8 with one scale and zero point per
  layer, fixed by a calibration: the range of that input over calibration pairs
  (:func:`calibrate`, or ``imagereward calibrate``), saved as JSON
  (:class:`Int8Calibration`). A value outside the calibrated range is clipped to it.
- **Products**: oneDNN's ``qlinear_pointwise`` (int32 accumulation, the bias, GELU and
  the residual addition applied to the dequantised output). Where a layer's GELU output
  feeds the next layer and nothing else (an MLP's two layers), the first layer writes it
  as uint8 at the second's input scale, and the second reads it as it is.
- Everything else (attention, LayerNorm, embeddings, reward heads) stays in the model's
  precision (bfloat16 or float32).

The calibration names the model and a fingerprint of its weights; it is refused for any
other weights, since scales calibrated on one model's activations are wrong for another.
"""

from __future__ import annotations

import hashlib
import math
import os
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from .errors import CalibrationError
from .int8_calibration import Int8Calibration
from .models.layers import INT8_HOOK, can_add, float_linear, weight_key

# Every this-many-th element of each parameter enters the weights' fingerprint.
FINGERPRINT_STRIDE = 1009

# torch 2.13 marks its quantised tensor type deprecated; its per-tensor quantisation
# kernel is still the fastest float -> uint8 conversion it has (about 1.5x the
# decomposed op). Only the values it returns (``int_repr``) are used.
warnings.filterwarnings(
    "ignore", message=r"torch\.quantize_per_tensor, torch\.quantize_per_channel", category=UserWarning
)


def weights_fingerprint(module: nn.Module) -> str:
    """A digest of ``module``'s parameter names, shapes and a strided sample of their
    values rounded to bfloat16 (so a float32 model and its bfloat16 copy agree)."""
    digest = hashlib.sha256()
    for name, parameter in module.named_parameters():
        sample = parameter.detach().reshape(-1)[::FINGERPRINT_STRIDE].to("cpu", torch.bfloat16)
        digest.update(f"{name}:{tuple(parameter.shape)}:".encode())
        digest.update(sample.view(torch.int16).numpy().tobytes())
    return digest.hexdigest()[:32]


def _quant_params(bounds: Tuple[float, float]) -> Tuple[float, int]:
    """uint8 scale and zero point covering ``bounds`` (widened to include 0)."""
    lo, hi = min(bounds[0], 0.0), max(bounds[1], 0.0)
    scale = max(hi - lo, 1e-8) / 255.0
    return scale, int(min(255, max(0, round(-lo / scale))))


def _quantize(x: torch.Tensor, scale: float, zero_point: int) -> torch.Tensor:
    """Float rows -> uint8 codes, rounded to nearest and clipped to [0, 255]. The codes are
    the quantised tensor's own storage, seen as uint8 (``int_repr`` would copy them)."""
    quantized = torch.quantize_per_tensor(x.float(), scale, zero_point, torch.quint8)
    codes = torch.empty(0, dtype=torch.uint8)
    return codes.set_(quantized.untyped_storage(), 0, quantized.shape, quantized.stride())


@dataclass
class QuantizedActivation:
    """A layer's uint8 output handed to the next layer as it is (not a tensor: nothing
    else may read it). ``rows`` are the leading dimensions, ``dtype`` the model's."""

    codes: torch.Tensor
    rows: Tuple[int, ...]
    dtype: torch.dtype


def _quantized_weight(weight: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Packed int8 weight, per-output-channel scales and (zero) zero points."""
    weight = weight.detach().float()
    scales = weight.abs().amax(dim=1).clamp(min=1e-12) / 127.0
    codes = torch.round(weight / scales[:, None]).clamp(-127, 127).to(torch.int8)
    packed = torch.ops.onednn.qlinear_prepack(codes, None)
    return packed, scales, torch.zeros_like(scales, dtype=torch.long)


class Int8Linear:
    """The int8 plan of one module's linear layer (its :data:`INT8_HOOK`), with the int8
    weight it made from the module's weight (made again when that weight changes)."""

    def __init__(self, input_range: Tuple[float, float], output_range: Optional[Tuple[float, float]] = None) -> None:
        self.input = _quant_params(input_range)
        self.output = None if output_range is None else _quant_params(output_range)
        self._cached: Optional[Tuple[Any, Tuple[Any, ...]]] = None

    def _weights(self, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> Tuple[Any, ...]:
        key = (weight_key(weight), None if bias is None else weight_key(bias))
        if self._cached is None or self._cached[0] != key:
            float_bias = None if bias is None else bias.detach().float()
            self._cached = (key, (*_quantized_weight(weight), float_bias))
        return self._cached[1]

    def __call__(self, owner: nn.Module, x: Any, weight: torch.Tensor, bias: Optional[torch.Tensor], *,
                 gelu: bool = False, residual: Optional[torch.Tensor] = None) -> Any:
        if torch.is_grad_enabled() and (weight.requires_grad or getattr(x, "requires_grad", False)):
            raise RuntimeError("int8 layers have no gradients: differentiate the float model "
                               "(loaded without int8)")
        scale, zero_point = self.input
        if isinstance(x, QuantizedActivation):
            codes, rows, dtype = x.codes, x.rows, x.dtype
        else:
            if x.device.type != "cpu":
                raise RuntimeError(f"int8 layers run on the CPU; got input on {x.device}")
            rows, dtype = tuple(x.shape[:-1]), x.dtype
            codes = _quantize(x.reshape(-1, x.shape[-1]), scale, zero_point)
        packed, weight_scales, weight_zero, float_bias = self._weights(weight, bias)
        features = weight.shape[0]
        if gelu and residual is None and self.output is not None:
            out_scale, out_zero = self.output
            out = torch.ops.onednn.qlinear_pointwise(
                codes, scale, zero_point, packed, weight_scales, weight_zero, float_bias,
                out_scale, out_zero, torch.uint8, "gelu", [], "none")
            return QuantizedActivation(out, rows, dtype)
        if residual is not None and not gelu and can_add(residual, rows, features, dtype):
            out = torch.ops.onednn.qlinear_pointwise.binary(
                codes, scale, zero_point, packed, weight_scales, weight_zero, residual.view(-1, features),
                float_bias, 1.0, 0, dtype, 1.0, 0, "add", 1.0, "none", [], "")
            return out.view(*rows, features)
        out = torch.ops.onednn.qlinear_pointwise(
            codes, scale, zero_point, packed, weight_scales, weight_zero, float_bias,
            1.0, 0, dtype, "gelu" if gelu else "none", [], "none" if gelu else "").view(*rows, features)
        return out if residual is None else out + residual


class _Recorder:
    """Calibration: every module that runs a linear layer records its input range, and
    which GELU outputs go straight into the next linear layer."""

    def __init__(self) -> None:
        self.ranges: Dict[str, List[float]] = {}
        self.fused: Dict[str, Optional[str]] = {}  # producer -> consumer, None once it is not
        self.pending: Optional[Tuple[str, torch.Tensor]] = None

    def settle(self, consumer: Optional[str] = None, x: Any = None) -> None:
        """The pending GELU output either fed ``consumer`` directly, or something else."""
        if self.pending is None:
            return
        producer, output = self.pending
        self.pending = None
        seen = self.fused.get(producer, consumer)
        self.fused[producer] = consumer if (x is output and seen == consumer) else None

    def observer(self, name: str) -> Any:
        def observe(owner: nn.Module, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], *,
                    gelu: bool = False, residual: Optional[torch.Tensor] = None) -> torch.Tensor:
            self.settle(name, x)
            if not x.dtype.is_floating_point or x.device.type != "cpu":
                raise CalibrationError(f"int8 calibration runs on the CPU in float; {name} got {x.dtype} on {x.device}")
            lo, hi = (float(v) for v in torch.aminmax(x.detach()))
            if not (math.isfinite(lo) and math.isfinite(hi)):
                raise CalibrationError(f"{name} saw a non-finite input during calibration")
            bounds = self.ranges.setdefault(name, [lo, hi])
            bounds[0], bounds[1] = min(bounds[0], lo), max(bounds[1], hi)
            out = float_linear(x, weight, bias, owner, gelu=gelu, residual=residual)
            if gelu and residual is None:
                self.pending = (name, out)
            return out

        return observe


def _check_engine(scorer: Any) -> None:
    if scorer.device.type != "cpu":
        raise ValueError(f"int8 scoring runs on the CPU; {scorer.name} is on {scorer.device}")
    if scorer.compute_dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"int8 scoring goes with fp32 or bf16 encoders, not {scorer.compute_dtype}")
    if not _onednn_int8_available():
        raise RuntimeError(f"int8 scoring needs oneDNN's int8 linear ops (onednn::qlinear_pointwise with "
                           f"its binary form), which torch {torch.__version__} lacks: use a newer CPU build")


def _onednn_int8_available() -> bool:
    try:
        return torch.backends.mkldnn.is_available() and hasattr(torch.ops.onednn.qlinear_pointwise, "binary")
    except (AttributeError, RuntimeError):
        return False


def _dtype_name(dtype: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.bfloat16: "bf16"}[dtype]


def calibrate(scorer: Any, prompts: Sequence[str], images: Sequence[Any],
              on_batch: Optional[Callable[[int], None]] = None) -> Int8Calibration:
    """Score the ``(prompt, image)`` pairs in float and record every linear layer's
    input range. Use pairs like those to be scored (a few hundred is plenty); a value
    seen later outside the recorded range is clipped to it. ``on_batch(pairs)`` is
    called after each batch (progress)."""
    _check_engine(scorer)
    if scorer.int8_calibration is not None:
        raise ValueError(f"{scorer.name} is already int8: calibrate a float model")
    if len(prompts) != len(images) or not images:
        raise ValueError(f"calibration needs (prompt, image) pairs; got {len(prompts)} prompts, {len(images)} images")
    recorder = _Recorder()
    owners = [(name, module) for name, module in scorer.named_modules() if name]  # those with a linear layer record
    for name, module in owners:
        module.__dict__[INT8_HOOK] = recorder.observer(name)
    try:
        for start in range(0, len(images), scorer.batch_size):
            batch = images[start:start + scorer.batch_size]
            scorer.score_batch(prompts[start:start + scorer.batch_size], batch)
            recorder.settle()
            if on_batch is not None:
                on_batch(len(batch))
    finally:
        for _, module in owners:
            module.__dict__.pop(INT8_HOOK, None)
    if not recorder.ranges:
        raise CalibrationError(f"{scorer.name} ran no linear layer that int8 can take")
    fused = {producer: consumer for producer, consumer in recorder.fused.items() if consumer is not None}
    return Int8Calibration(scorer.name, weights_fingerprint(scorer),
                           {name: (lo, hi) for name, (lo, hi) in recorder.ranges.items()},
                           fused, len(images), _dtype_name(scorer.compute_dtype))


def quantize_int8(scorer: Any, calibration: "Int8Calibration | str") -> None:
    """Run ``scorer``'s calibrated linear layers in int8 from now on, in every call
    (inference only: its parameters stop requiring gradients, and a call that needs
    them raises). ``calibration`` is an :class:`Int8Calibration` or the path of one
    saved by :meth:`Int8Calibration.save`."""
    if isinstance(calibration, (str, os.PathLike)):
        calibration = Int8Calibration.load(os.fspath(calibration))
    _check_engine(scorer)
    if calibration.model != scorer.name:
        raise CalibrationError(f"the int8 calibration is for {calibration.model}, not {scorer.name}")
    if calibration.fingerprint != weights_fingerprint(scorer):
        raise CalibrationError(f"the int8 calibration was made for other {scorer.name} weights "
                               "(fingerprints differ): calibrate these weights with `imagereward calibrate`")
    modules = dict(scorer.named_modules())
    missing = sorted(set(calibration.ranges) - set(modules))
    if missing:
        raise CalibrationError(f"the int8 calibration names layers {scorer.name} does not have: {missing[:3]}")
    for module in modules.values():  # a second calibration replaces the first one whole
        module.__dict__.pop(INT8_HOOK, None)
    for name, bounds in calibration.ranges.items():
        consumer = calibration.fused.get(name)
        output = None if consumer is None else calibration.ranges[consumer]
        modules[name].__dict__[INT8_HOOK] = Int8Linear(bounds, output)
    scorer.requires_grad_(False)
    scorer.int8_calibration = calibration


__all__ = [
    "CalibrationError", "Int8Calibration", "Int8Linear", "QuantizedActivation", "calibrate",
    "quantize_int8", "weights_fingerprint",
]
