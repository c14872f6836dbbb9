"""Qwen2-VL's vision tower and language model, from ``transformers`` (the ``[vlm]`` extra).

A 7B vision-language model is not ported by hand: its two towers are transformers'
own classes, built here from a Qwen2-VL ``config.json`` dict with their parameters on
the ``meta`` device (a checkpoint's tensors are then assigned, so nothing is allocated
twice) and their buffers (rotary frequencies) computed for real. The parameter names
are those of transformers 4.45's ``Qwen2VLForConditionalGeneration`` (``visual.*`` and
``model.*``), which HPSv3's checkpoint uses, whatever transformers version is installed.
Only :mod:`imagereward.scoring.hpsv3` imports this module.
"""

from __future__ import annotations

import contextlib
from typing import Any, Dict, Iterator, Mapping, Tuple

import torch
from torch import nn

from ..errors import ExtraMissingError

# Qwen/Qwen2-VL-7B-Instruct's config.json (HPSv3's backbone).
QWEN2_VL_7B: Dict[str, Any] = {
    "model_type": "qwen2_vl",
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "num_hidden_layers": 28,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "hidden_act": "silu",
    "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0,
    "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
    "max_position_embeddings": 32768,
    "vocab_size": 152064,
    "tie_word_embeddings": False,
    "attention_dropout": 0.0,
    "use_sliding_window": False,
    "sliding_window": 32768,
    "max_window_layers": 28,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "vision_start_token_id": 151652,
    "vision_end_token_id": 151653,
    "vision_token_id": 151654,
    "image_token_id": 151655,
    "video_token_id": 151656,
    "vision_config": {
        "depth": 32, "embed_dim": 1280, "mlp_ratio": 4, "num_heads": 16, "in_chans": 3,
        "hidden_size": 3584, "patch_size": 14, "spatial_merge_size": 2, "spatial_patch_size": 14,
        "temporal_patch_size": 2,
    },
}


def _transformers_qwen2_vl() -> Any:
    try:
        from transformers.models.qwen2_vl import modeling_qwen2_vl
    except ImportError as error:
        raise ExtraMissingError(
            "HPSv3 runs on transformers' Qwen2-VL: pip install 'imagereward[vlm]' "
            f"(transformers >= 4.45) ({error})"
        ) from None
    return modeling_qwen2_vl


@contextlib.contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Modules built inside get their parameters on ``meta`` and their buffers for real."""
    register = nn.Module.register_parameter

    def on_meta(module: nn.Module, name: str, param: Any) -> None:
        register(module, name, param)
        if param is not None:
            module._parameters[name] = nn.Parameter(  # noqa: SLF001 - what register_parameter set
                param.to("meta"), requires_grad=param.requires_grad
            )

    nn.Module.register_parameter = on_meta  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.register_parameter = register  # type: ignore[method-assign]


def text_setting(vlm: Mapping[str, Any], key: str) -> int:
    """A language-model size of a Qwen2-VL config dict: top-level (transformers < 5) or
    under ``text_config``."""
    value = vlm.get(key, (vlm.get("text_config") or {}).get(key))
    if value is None:
        raise KeyError(f"the Qwen2-VL config has no {key}")
    return int(value)


def vision_settings(vlm: Mapping[str, Any]) -> Tuple[int, int, int]:
    """``(patch_size, temporal_patch_size, spatial_merge_size)`` of a Qwen2-VL config dict."""
    vision = dict(vlm.get("vision_config") or {})
    return int(vision.get("patch_size", 14)), int(vision.get("temporal_patch_size", 2)), int(
        vision.get("spatial_merge_size", 2))


def build_towers(vlm: Mapping[str, Any]) -> Tuple[nn.Module, nn.Module]:
    """``(visual, language_model)`` of a Qwen2-VL config dict, parameters on ``meta``;
    attention through ``scaled_dot_product_attention`` as HPSv3 runs it without flash-attn."""
    modeling = _transformers_qwen2_vl()
    from transformers import Qwen2VLConfig

    config = Qwen2VLConfig(**{k: v for k, v in vlm.items() if k != "model_type"})
    config._attn_implementation = "sdpa"  # noqa: SLF001 - the public setter differs across versions
    text_class = getattr(modeling, "Qwen2VLTextModel", None)  # transformers >= 4.52
    text_config = getattr(config, "text_config", None) if text_class is not None else config
    if text_class is None:
        text_class = modeling.Qwen2VLModel  # transformers < 4.52: the language model itself
    for sub in (config.vision_config, text_config):
        sub._attn_implementation = "sdpa"  # noqa: SLF001
    with parameters_on_meta():
        visual = modeling.Qwen2VisionTransformerPretrainedModel._from_config(config.vision_config)
        language = text_class._from_config(text_config)
    return visual, language


def vision_embeddings(visual: nn.Module, patches: torch.Tensor, grids: torch.Tensor) -> torch.Tensor:
    """The merged image tokens ``[sum of tokens, hidden]`` of flattened patches."""
    out = visual(patches.to(next(visual.parameters()).dtype), grid_thw=grids)
    return out if isinstance(out, torch.Tensor) else out.pooler_output  # transformers >= 5 wraps it


__all__ = ["QWEN2_VL_7B", "build_towers", "parameters_on_meta", "text_setting", "vision_embeddings", "vision_settings"]
