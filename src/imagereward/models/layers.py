"""Small building blocks shared by the transformer encoders."""

from __future__ import annotations

import functools
import os
from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..dtypes import cpu_has_amx, cpu_has_avx512, cpu_has_fast


# "0" turns the oneDNN path of Linear off (for side-by-side measurements).
ONEDNN_ENV = "IMAGEREWARD_ONEDNN_LINEAR"


@functools.lru_cache(maxsize=None)
def _onednn_linear_available() -> bool:
    if os.environ.get(ONEDNN_ENV, "1") == "0" or not torch.backends.mkldnn.is_available():
        return False
    try:
        torch.ops.mkldnn._linear_pointwise  # noqa: B018  (private op: present or not)
    except (AttributeError, RuntimeError):
        return False
    return True


@functools.lru_cache(maxsize=None)
def _onednn_bf16_available() -> bool:
    """oneDNN's bf16 linear op needs AVX-512 (BW, VL, DQ) or AVX-NE-CONVERT; on an
    AVX2-only CPU it refuses, and bf16 stays on ``F.linear``."""
    return cpu_has_fast(torch.bfloat16)


def _is_compiling() -> bool:
    check = getattr(torch.compiler, "is_compiling", None)  # torch >= 2.3
    return bool(check and check())


# Weights the oneDNN path takes; tensor subclasses (torchao's int8 tensors) go to F.linear.
_PLAIN_TENSORS = (torch.Tensor, nn.Parameter)


# An int8 plan (or a calibration observer) a module carries outside its state dict:
# see :mod:`imagereward.int8`. It runs that module's linear layer in inference.
INT8_HOOK = "_int8_hook"


def runs_int8(module: nn.Module) -> bool:
    """Whether ``module``'s linear layer has an int8 plan (or is being calibrated for one)."""
    return INT8_HOOK in module.__dict__


def linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
           owner: nn.Module, *, gelu: bool = False,
           residual: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``F.linear``, then GELU (the exact erf form) if ``gelu``, then ``+ residual`` if given.

    A module quantised with :func:`imagereward.int8.quantize_int8` runs it on int8
    matrix units (which have no gradients); see :func:`float_linear` for the rest.
    """
    hook = owner.__dict__.get(INT8_HOOK)
    if hook is not None and not _is_compiling():
        return hook(owner, x, weight, bias, gelu=gelu, residual=residual)
    return float_linear(x, weight, bias, owner, gelu=gelu, residual=residual)


def float_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                 owner: nn.Module, *, gelu: bool = False,
                 residual: Optional[torch.Tensor] = None) -> torch.Tensor:
    """:func:`linear` in the weights' own floating precision.

    CPU inference runs on oneDNN, bfloat16 with a packed weight. PyTorch runs float32
    linear layers on CPU through MKL, which on non-Intel CPUs (AMD EPYC) picks slower
    kernels than oneDNN's: on a Zen 4 EPYC a ViT-L-sized layer runs about 1.15x faster
    through oneDNN. Large float32 products on AMX Xeons stay on MKL, which is faster
    there (:func:`runs_on_mkl`). In bfloat16 (where oneDNN takes it: AVX-512 or
    AVX-NE-CONVERT) the weight is also reordered once into oneDNN's blocked layout where that pays
    (:func:`packs_weight`); the packed copy is cached on ``owner`` (one weight per module),
    outside its state dict, and made again whenever the weight changes (another tensor,
    dtype or in-place update). GELU and residual additions run inside the product as
    oneDNN post-ops where that pays (:func:`fuses_post_ops`), which saves a pass over
    the activations. The same math up to float rounding (in float32 bitwise the same:
    oneDNN's erf GELU and ATen's agree to the bit). With gradients, under ``torch.compile``, for
    weights that are tensor subclasses (torchao's quantised tensors), or elsewhere it is
    plain ``F.linear``.
    """
    rows = x.numel() // max(x.shape[-1], 1)
    onednn = onednn_inference(x, weight, bias)
    on_mkl = onednn and runs_on_mkl(x.dtype, rows)  # inference, where ATen's product is faster
    if on_mkl and residual is not None and not gelu and can_add(residual, x.shape[:-1], weight.shape[0], x.dtype):
        return mkl_product(x, weight, bias, residual=residual)
    if onednn and not on_mkl:
        if x.dtype == torch.bfloat16 and packs_weight(weight, rows):
            weight = _packed(owner, weight)
        if fuses_post_ops(x.dtype):
            if gelu and residual is None:
                return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "gelu", [], "none")
            if residual is not None and not gelu and can_add(residual, x.shape[:-1], weight.shape[0], x.dtype):
                return torch.ops.mkldnn._linear_pointwise.binary(x, residual, weight, bias, "add")
        out = torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    else:
        out = F.linear(x, weight, bias)
    if gelu:
        # MKL's output is ours alone and needs no gradient: GELU in place (1.2x faster
        # than into a new tensor at 4,112 x 4,096, the same kernel and values)
        out = torch.ops.aten.gelu_(out) if on_mkl else F.gelu(out)
    return out if residual is None else out + residual


def onednn_inference(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> bool:
    """Whether :func:`float_linear`'s inference paths (oneDNN's op; MKL for large float32
    products, :func:`runs_on_mkl`) take ``x`` through this weight and bias: CPU inference in
    float32 or in bfloat16 where oneDNN takes it, plain tensors of ``x``'s dtype, no
    gradients needed, not under ``torch.compile``."""
    return (
        not _is_compiling()
        and (x.dtype == torch.float32 or (x.dtype == torch.bfloat16 and _onednn_bf16_available()))
        and x.device.type == "cpu"
        and weight.dtype == x.dtype
        and type(weight) in _PLAIN_TENSORS  # not a subclass (a quantised or sharded weight)
        and (bias is None or bias.dtype == x.dtype)
        and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
        and torch.backends.mkldnn.enabled
        and _onednn_linear_available()
    )


# From this many rows on, float32 products run through MKL on AMX Xeons.
MKL_FLOAT32_ROWS = 1024


def runs_on_mkl(dtype: torch.dtype, rows: int) -> bool:
    """Whether a float32 inference product of ``rows`` rows runs through ATen's own path
    (MKL's sgemm) rather than oneDNN's.

    On an AMX Xeon (Sapphire Rapids class) MKL was the faster of the two for large
    products and oneDNN for small ones, the same at every layer shape of the towers
    (ViT-L, ViT-H, BERT), each weight read from memory as in a whole model: oneDNN took
    0.93-0.97 of MKL's time at 394 rows, 0.99-1.07 at 591-788, 1.01-1.07 at 1,024 and
    1.03-1.09 at 1,576-3,152. So from 1,024 rows (ViT-L on 6 images of 197 tokens) they
    go to MKL there, with GELU as its own operation and a residual added by the product
    itself (``addmm``). Elsewhere (CPUs without AMX; on a Zen 4 EPYC oneDNN was faster)
    every float32 product stays on oneDNN, as before, and so does every product under
    CPU autocast, which would turn ATen's product (not oneDNN's op) into bfloat16.
    """
    return dtype == torch.float32 and rows >= MKL_FLOAT32_ROWS and cpu_has_amx() and not _cpu_autocast()


def _cpu_autocast() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4
        return torch.is_autocast_cpu_enabled()


def mkl_product(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], *,
                alpha: float = 1.0, residual: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``alpha * F.linear(x, weight) + bias`` on ATen's path (MKL's sgemm, whose own factor
    ``alpha`` scales the product at no cost), plus ``residual`` if given, which is then
    the product's accumulator (``addmm``'s added matrix) rather than a sum made after it.
    ``residual`` must have the output's shape (:func:`can_add`)."""
    matrix = x.reshape(-1, x.shape[-1])
    if residual is not None:
        out = torch.addmm(residual.reshape(-1, weight.shape[0]), matrix, weight.t(), alpha=alpha)
        if bias is not None:
            out.add_(bias)
        return out.view(residual.shape)
    if bias is not None:
        out = torch.addmm(bias, matrix, weight.t(), alpha=alpha)
    else:
        out = torch.mm(matrix, weight.t())
        if alpha != 1:
            out.mul_(alpha)
    return out.view(*x.shape[:-1], weight.shape[0])


# From this many rows on, bf16 products of narrowing layers run from the plain weight on AMX.
PLAIN_WEIGHT_ROWS = 512


def packs_weight(weight: torch.Tensor, rows: int) -> bool:
    """Whether a bfloat16 product of ``rows`` rows on oneDNN runs from a copy of ``weight``
    reordered once into oneDNN's blocked layout, rather than from the weight as it is.

    Packing pays for small products (a ViT-L ``qkv`` of one image, 197 rows: 0.47 ms
    packed against 0.66 plain on AMX). But on AMX large products of a layer that
    narrows (more inputs than outputs: the MLP's second product, ``fc2``) ran faster
    from the plain weight, which oneDNN packs block by block as the product reaches it,
    once the weights came from memory, as in a whole model whose weights do not fit in
    the cache: ViT-L's ``fc2`` on 16 images (3,152 rows) took 8.4 ms plain against
    11.9 packed; at 4,112 rows ViT-H's took 16.2 against 17.1 and BERT's output layer
    6.0 against 6.5; below about 400 rows plain was as fast or slower (BERT's at 77
    rows 0.32 ms against 0.23), and widening layers were as fast or faster packed. So
    on AMX narrowing layers run from the plain weight from 512 rows on (no packed copy
    is made for them unless smaller products come); elsewhere (AVX-512 bf16 without
    AMX, not measured) every weight is packed, as before.
    """
    return not (rows >= PLAIN_WEIGHT_ROWS and weight.shape[1] > weight.shape[0] and cpu_has_amx())


def fuses_post_ops(dtype: torch.dtype) -> bool:
    """Whether GELU and residual additions run as oneDNN post-ops of a ``dtype`` product:
    bfloat16 on CPUs with AMX, float32 on CPUs with AVX-512. Elsewhere the separate
    operations were as fast or faster (float32 ``fc1`` + GELU of ViT-L took 0.87x the
    time of the separate operations with AVX-512 and 1.07x on AVX2)."""
    if dtype == torch.bfloat16:
        return cpu_has_amx()
    return dtype == torch.float32 and cpu_has_avx512()


def can_add(residual: torch.Tensor, rows: Tuple[int, ...], features: int, dtype: torch.dtype) -> bool:
    """Whether oneDNN's binary post-op takes ``residual``: the product's own output shape
    (leading dimensions ``rows``, ``features`` columns) and ``dtype``, contiguous."""
    return residual.dtype == dtype and residual.shape == (*rows, features) and residual.is_contiguous()


_PACKED = "_packed_weight"
# Weights a module derives for oneDNN beside its parameters (see clip.FeedForward).
DERIVED = "_derived_weights"


def weight_key(weight: torch.Tensor) -> Tuple[Any, ...]:
    """What identifies a weight's values for a cache made from them: its storage, version
    (changed by in-place updates), dtype and shape."""
    # Inference tensors (made under torch.inference_mode) keep no version counter.
    version = None if weight.is_inference() else weight._version
    return weight.data_ptr(), version, weight.dtype, tuple(weight.shape)


def pack(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` reordered into oneDNN's blocked layout for bfloat16 products."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), None)


def _packed(owner: nn.Module, weight: torch.Tensor) -> torch.Tensor:
    key = weight_key(weight)
    cached = owner.__dict__.get(_PACKED)
    if cached is None or cached[0] != key:
        cached = (key, pack(weight))
        owner.__dict__[_PACKED] = cached
    return cached[1]


class PackedWeightCache:
    """Mixin for modules that call :func:`linear`: copies and pickles leave the cache
    (and any int8 plan)."""

    def __getstate__(self) -> Dict[str, Any]:
        state = super().__getstate__()  # type: ignore[misc]
        return {k: v for k, v in state.items() if k not in (_PACKED, DERIVED, INT8_HOOK)}


class Linear(PackedWeightCache, nn.Linear):
    """``nn.Linear`` through :func:`linear`: same parameters and state dict keys."""

    def forward(
        self, x: torch.Tensor, *, gelu: bool = False, residual: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """``linear(x)``, then GELU if ``gelu``, then ``+ residual`` if given (see :func:`linear`)."""
        return linear(x, self.weight, self.bias, self, gelu=gelu, residual=residual)


def split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """``[B, N, H*D]`` -> ``[B, H, N, D]``."""
    batch, length, width = x.shape
    return x.view(batch, length, num_heads, width // num_heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """``[B, H, N, D]`` -> ``[B, N, H*D]``."""
    batch, heads, length, dim = x.shape
    return x.transpose(1, 2).reshape(batch, length, heads * dim)


def attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: Optional[torch.Tensor] = None,
    dropout: float = 0.0,
    causal: bool = False,
) -> torch.Tensor:
    """Scaled dot-product attention on ``[B, H, N, D]`` tensors (scale ``D**-0.5``).

    bfloat16 inference on a CPU without AMX takes two batched matrix products around a
    softmax (which computes in float32 inside): the query is scaled before the first
    product (exact for a power-of-two scale such as ViT-L's 64**-0.5), keys and values
    are made contiguous once, and no float32 copy of the scores is made. Inside ViT-L
    at 197 tokens this was faster than the fused kernel on an AVX512-BF16 EPYC; with
    AMX the fused kernel is the faster one and is used.
    """
    if (
        not _is_compiling()
        and query.dtype == torch.bfloat16
        and query.device.type == "cpu"
        and not cpu_has_amx()
        and not causal
        and dropout == 0.0
        and not torch.is_grad_enabled()
    ):
        scores = torch.matmul(query * query.shape[-1] ** -0.5, key.contiguous().transpose(-1, -2))
        if mask is not None:
            scores = scores + mask.to(scores.dtype)
        return torch.matmul(scores.softmax(dim=-1), value.contiguous())
    return F.scaled_dot_product_attention(
        query, key, value, attn_mask=mask, dropout_p=dropout, is_causal=causal
    )


class DropPath(nn.Module):
    """Stochastic depth: drop a residual branch per sample, only in training."""

    def __init__(self, rate: float = 0.0) -> None:
        super().__init__()
        self.rate = rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.rate == 0.0 or not self.training:
            return x
        keep = 1.0 - self.rate
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        return x * x.new_empty(shape).bernoulli_(keep).div_(keep)

    def extra_repr(self) -> str:
        return f"rate={self.rate}"
