"""Configuration dataclasses for every model in the package.

The defaults are the sizes of the released ImageReward-v1.0 model, so
``ImageRewardConfig()`` describes the real thing and tests build tiny variants
by overriding a few fields. Configs are frozen: derive a changed copy with
:func:`dataclasses.replace`, never change one in place.
"""

from __future__ import annotations

import dataclasses
import json
import os
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, Tuple, Type, TypeVar, Union

PathLike = Union[str, "os.PathLike[str]"]
ConfigT = TypeVar("ConfigT")


def config_to_dict(config: Any) -> Dict[str, Any]:
    """A config dataclass as plain JSON-able data (nested configs as dicts, tuples as lists)."""
    return dataclasses.asdict(config)


def config_from_dict(cls: Type[ConfigT], data: Dict[str, Any]) -> ConfigT:
    """The ``cls`` config of :func:`config_to_dict`'s data; unknown fields raise ``TypeError``."""
    if not isinstance(data, dict):
        raise TypeError(f"{cls.__name__} data must be an object, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise TypeError(f"{cls.__name__} has no fields {unknown}")
    values: Dict[str, Any] = {}
    for name, value in data.items():
        kind = hints[name]
        if dataclasses.is_dataclass(kind):
            value = config_from_dict(kind, value)  # type: ignore[arg-type]
        elif isinstance(value, list):
            value = tuple(value)
        values[name] = value
    return cls(**values)

# Normalisation of the released model's raw rewards (mean/std on its test set).
IMAGEREWARD_MEAN = 0.16717362830052426
IMAGEREWARD_STD = 1.0333394966054072


@dataclass(frozen=True)
class VisionConfig:
    """BLIP's ViT image encoder (timm layout). Defaults: ViT-L/16 at 224 px."""

    image_size: int = 224
    patch_size: int = 16
    width: int = 1024
    depth: int = 24
    heads: int = 16
    mlp_ratio: float = 4.0
    layer_norm_eps: float = 1e-6
    drop_path_rate: float = 0.1

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


@dataclass(frozen=True)
class TextConfig:
    """BLIP's BERT text encoder with cross-attention ("MED"). Defaults: BERT-base."""

    vocab_size: int = 30524
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    layer_norm_eps: float = 1e-12
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    encoder_width: int = 1024
    pad_token_id: int = 0

    @classmethod
    def from_med_config(cls, path: PathLike, encoder_width: int) -> "TextConfig":
        """Read an original ``med_config.json`` (HF BertConfig keys).

        As in BLIP, ``encoder_width`` is taken from the vision encoder, not the file.
        """
        with open(path, "r", encoding="utf-8") as handle:
            raw = json.load(handle)
        act = raw.get("hidden_act", "gelu")
        if act != "gelu":
            raise ValueError(f"{path}: hidden_act {act!r} is not supported (only 'gelu')")
        return cls(
            vocab_size=int(raw["vocab_size"]),
            hidden_size=int(raw["hidden_size"]),
            num_layers=int(raw["num_hidden_layers"]),
            num_heads=int(raw["num_attention_heads"]),
            intermediate_size=int(raw["intermediate_size"]),
            max_position_embeddings=int(raw["max_position_embeddings"]),
            layer_norm_eps=float(raw.get("layer_norm_eps", 1e-12)),
            hidden_dropout=float(raw.get("hidden_dropout_prob", 0.1)),
            attention_dropout=float(raw.get("attention_probs_dropout_prob", 0.1)),
            encoder_width=encoder_width,
            pad_token_id=int(raw.get("pad_token_id", 0)),
        )


@dataclass(frozen=True)
class HeadConfig:
    """The reward MLP: linear layers with dropout between them and no activations."""

    hidden_dims: Tuple[int, ...] = (1024, 128, 64, 16)
    dropouts: Tuple[float, ...] = (0.2, 0.2, 0.1)


@dataclass(frozen=True)
class ImageRewardConfig:
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    max_text_length: int = 35
    reward_mean: float = IMAGEREWARD_MEAN
    reward_std: float = IMAGEREWARD_STD

    def to_dict(self) -> Dict[str, Any]:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "ImageRewardConfig":
        return config_from_dict(cls, data)


@dataclass(frozen=True)
class PreprocessConfig:
    """How pixels reach the image encoder: the whole chain, saved with a model.

    The defaults are the chain of BLIP and OpenAI CLIP: resize the shorter side to
    ``image_size`` (``interpolation``), centre-crop (``crop``), then convert to RGB
    (``convert_rgb="after_crop"``), scale to [0, 1] and normalise with ``mean``/``std``.

    ``crop`` is ``"center"`` (torchvision's ``CenterCrop`` offsets, rounded),
    ``"center_floor"`` (Hugging Face ``CLIPImageProcessor``'s, floored; PickScore),
    ``"pad"`` (HPSv2: the *longer* side to ``image_size`` on float pixels with torch's
    antialiased ``interpolation``, then black padding to a square) or ``"native"``
    (Qwen2-VL, HPSv3: the aspect ratio kept, both sides multiples of ``size_factor`` and
    ``min_pixels <= H * W <= max_pixels``; ``image_size`` is unused). ``convert_rgb``
    is ``"after_crop"`` (OpenAI CLIP, BLIP) or ``"first"`` (Hugging Face, HPSv2, Qwen2-VL).
    """

    image_size: int = 224
    interpolation: str = "bicubic"
    crop: str = "center"
    convert_rgb: str = "after_crop"
    mean: Tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    std: Tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
    min_pixels: int = 0
    max_pixels: int = 0
    size_factor: int = 0

    def to_dict(self) -> Dict[str, Any]:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "PreprocessConfig":
        return config_from_dict(cls, data)


CLIP_ACTIVATIONS = ("quick_gelu", "gelu")


@dataclass(frozen=True)
class CLIPConfig:
    """CLIP with a ViT image tower. Defaults: OpenAI ViT-L/14 at 224 px (``ViT-L-14.pt``).

    ``vision_head_width`` / ``text_head_width`` are the widths of one attention head
    (``width = heads * head_width``): 64 in OpenAI's models, 80 in OpenCLIP's ViT-H-14
    image tower. ``act`` is the MLP activation: ``"quick_gelu"`` (OpenAI) or the exact
    erf ``"gelu"`` (OpenCLIP ViT-H-14, PickScore, HPSv2).
    """

    embed_dim: int = 768
    image_size: int = 224
    patch_size: int = 14
    vision_width: int = 1024
    vision_layers: int = 24
    vision_heads: int = 16
    context_length: int = 77
    vocab_size: int = 49408
    text_width: int = 768
    text_layers: int = 12
    text_heads: int = 12
    layer_norm_eps: float = 1e-5
    vision_head_width: int = 64
    text_head_width: int = 64
    act: str = "quick_gelu"

    def __post_init__(self) -> None:
        if self.act not in CLIP_ACTIVATIONS:
            raise ValueError(f"act must be one of {CLIP_ACTIVATIONS}, got {self.act!r}")
        for tower in ("vision", "text"):
            width, heads = getattr(self, f"{tower}_width"), getattr(self, f"{tower}_heads")
            head_width = getattr(self, f"{tower}_head_width")
            if heads * head_width != width:
                raise ValueError(
                    f"{tower} tower: {heads} heads of width {head_width} do not make its "
                    f"width {width}; set {tower}_heads and {tower}_head_width to match"
                )

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @classmethod
    def from_widths(cls, vision_head_width: int = 64, text_head_width: int = 64, **sizes: Any) -> "CLIPConfig":
        """A config whose head counts follow from the tower widths and head widths."""
        vision_width = sizes.get("vision_width", cls.vision_width)
        text_width = sizes.get("text_width", cls.text_width)
        return cls(
            vision_heads=max(1, vision_width // vision_head_width),
            text_heads=max(1, text_width // text_head_width),
            vision_head_width=vision_head_width,
            text_head_width=text_head_width,
            **sizes,
        )


def openclip_vit_h_14() -> CLIPConfig:
    """OpenCLIP ViT-H-14 (PickScore, HPSv2): 1280-wide image tower with 80-wide heads, GELU."""
    return CLIPConfig.from_widths(
        vision_head_width=80, text_head_width=64, embed_dim=1024, image_size=224, patch_size=14,
        vision_width=1280, vision_layers=32, text_width=1024, text_layers=24, act="gelu",
    )


@dataclass(frozen=True)
class BLIPScoreConfig:
    """The BLIP encoders used by the BLIP baseline. Defaults: BLIP-large (``model_large.pth``)."""

    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    max_text_length: int = 35


# MPS's "overall" condition: the preference dimensions its released checkpoint was trained on.
MPS_OVERALL_CONDITION = (
    "light, color, clarity, tone, style, ambiance, artistry, shape, face, hair, hands, limbs, "
    "structure, instance, texture, quantity, attributes, position, number, location, word, things."
)


@dataclass(frozen=True)
class MPSConfig:
    """MPS: a CLIP ViT-H-14 and the condition-aware cross-modeling module on its tokens.

    ``condition`` is the text whose similarity to the prompt's tokens selects which of them
    the image attends to (``MPS_OVERALL_CONDITION``, the released checkpoint's); a prompt
    token is kept when its highest similarity to a condition token, divided by the
    prompt's highest, exceeds ``condition_threshold`` (0.3 in MPS's scoring code).
    """

    clip: CLIPConfig = field(default_factory=lambda: openclip_vit_h_14())
    cross_layers: int = 4
    cross_heads: int = 16
    cross_head_width: int = 64
    cross_ff_mult: int = 4
    condition: str = MPS_OVERALL_CONDITION
    condition_threshold: float = 0.3

    @property
    def context_length(self) -> int:
        return self.clip.context_length

    @property
    def image_size(self) -> int:
        return self.clip.image_size


def _qwen2_vl_7b() -> Dict[str, Any]:
    from .models.qwen2_vl import QWEN2_VL_7B  # plain data; imports nothing heavy

    return json.loads(json.dumps(QWEN2_VL_7B))


@dataclass(frozen=True)
class HPSv3Config:
    """HPSv3: Qwen2-VL (``vlm``, a Qwen2-VL ``config.json`` dict) and a float32 reward MLP
    (``head_widths`` hidden layers with ReLU, then ``outputs``: the mean and the log of the
    standard deviation) read at the reward token. (Its image sizes are preprocessing:
    the registry's ``PreprocessConfig``.)"""

    vlm: Dict[str, Any] = field(default_factory=_qwen2_vl_7b)
    head_widths: Tuple[int, ...] = (1024, 16)
    outputs: int = 2
