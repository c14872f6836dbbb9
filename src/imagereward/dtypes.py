"""Precision names accepted by the loaders and the command line."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Optional, Union

import torch

from .errors import DeviceError

DTYPE_NAMES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "float": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
}

DtypeLike = Union[None, str, torch.dtype]


def resolve_dtype(dtype: DtypeLike) -> torch.dtype:
    """``None`` -> float32; names such as ``"bf16"``; or a floating ``torch.dtype``."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        if dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise ValueError(f"dtype must be float32, bfloat16 or float16, got {dtype}")
        return dtype
    if isinstance(dtype, str) and dtype.lower() in DTYPE_NAMES:
        return DTYPE_NAMES[dtype.lower()]
    raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(DTYPE_NAMES)}")


def resolve_device(device: Optional[Union[str, torch.device]]) -> torch.device:
    """``None`` picks CUDA when it is available now, else the CPU.

    A CUDA device that this torch build or machine cannot provide raises :class:`DeviceError`
    here, before any model is built.
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        target = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise DeviceError(f"unknown device {device!r}: {error}") from None
    if target.type == "cuda":
        if not torch.cuda.is_available():
            reason = (
                f"this torch {torch.__version__} was built without CUDA"
                if torch.version.cuda is None else "no CUDA GPU is visible"
            )
            raise DeviceError(f"CUDA is not available ({reason}); use --device cpu / device='cpu'")
        if target.index is not None and target.index >= torch.cuda.device_count():
            raise DeviceError(
                f"device {device!r} does not exist: {torch.cuda.device_count()} CUDA device(s) visible"
            )
    return target


def cpu_has_fast(dtype: torch.dtype) -> bool:
    """Whether this CPU runs ``dtype`` matrix products natively (AVX512-BF16/FP16, AMX).

    Without it PyTorch falls back to a path far slower than float32.
    """
    if dtype == torch.float32:
        return True
    try:
        if dtype == torch.bfloat16:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        return bool(torch.ops.mkldnn._is_mkldnn_fp16_supported())
    except (AttributeError, RuntimeError):  # private API: assume yes when unknown
        return True


# oneDNN's limit on the instructions it uses (``ONEDNN_MAX_CPU_ISA``, formerly ``DNNL_``).
ISA_LIMITS = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")


def _onednn_may_use(levels: tuple) -> bool:
    """Whether no ``ONEDNN_MAX_CPU_ISA`` limit keeps oneDNN below every ISA level whose
    name contains one of ``levels``."""
    for name in ISA_LIMITS:
        limit = os.environ.get(name, "").strip().upper()
        if limit and limit not in ("ALL", "DEFAULT") and not any(level in limit for level in levels):
            return False
    return True


def _cpu_flags() -> frozenset:
    """The CPU's feature flags as the kernel reports them (Linux; elsewhere none)."""
    try:
        with Path("/proc/cpuinfo").open() as info:
            for line in info:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[-1].split())
    except OSError:
        pass
    return frozenset()


@functools.lru_cache(maxsize=None)
def cpu_has_amx() -> bool:
    """Whether oneDNN runs bfloat16 products on AMX tiles here (Sapphire Rapids and later Xeons).

    The CPU's flags are read from the kernel (Linux; elsewhere ``False``), and an
    ``ONEDNN_MAX_CPU_ISA`` below the AMX levels (``AVX512_CORE_BF16``, ``AVX2``, ...) keeps
    oneDNN off them. Some bfloat16 paths that pay on AMX (fused post-ops, the fused
    attention kernel) were slower without it.
    """
    return _onednn_may_use(("AMX",)) and "amx_bf16" in _cpu_flags()


@functools.lru_cache(maxsize=None)
def cpu_has_avx512() -> bool:
    """Whether oneDNN runs float32 products with AVX-512 here (its ``AVX512_CORE`` level:
    the F, BW, VL and DQ extensions), read like :func:`cpu_has_amx`. Its float32 GELU
    post-op pays there and costs on AVX2."""
    return (_onednn_may_use(("AVX512_CORE", "AVX10", "AMX"))
            and {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= _cpu_flags())
