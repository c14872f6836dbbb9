"""The scoring contract: what every runner may call on a scorer, the result types, input checks."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, List, Protocol, Sequence, Tuple, Union, runtime_checkable

import torch

from ..errors import ImageTypeError, InputError
from ..items import ImageInput, ImageLimits, check_item
from ..preprocess import ImagePreprocessor

# How far float pixels may stray outside [0, 1] before they are refused (bicubic
# resizing of [0, 1] images overshoots by a few percent; 0-255 floats are far outside).
PIXEL_TOLERANCE = 0.5


@dataclass
class RankResult:
    """Rewards and 1-based ranks (1 = best) of a list of images, both in input order."""

    ranking: List[int]
    rewards: List[float]


@runtime_checkable
class Scorer(Protocol):
    """Everything a runner calls on a scorer returned by :func:`imagereward.load`."""

    name: str
    preprocess: ImagePreprocessor
    limits: ImageLimits
    batch_size: int
    num_workers: int

    @property
    def device(self) -> torch.device: ...

    @property
    def compute_dtype(self) -> torch.dtype: ...

    def score(
        self, prompt: str, image: Union[ImageInput, Sequence[ImageInput]]
    ) -> Union[float, List[float]]: ...

    def inference_rank(
        self, prompt: str, generations_list: Sequence[ImageInput]
    ) -> Tuple[Union[int, List[int]], Union[float, List[float]]]: ...

    def rank(self, prompt: str, images: Sequence[ImageInput]) -> "RankResult": ...

    def score_batch(self, prompts: Sequence[str], images: Sequence[ImageInput]) -> List[float]: ...

    def score_matrix(self, prompts: Sequence[str], images: Sequence[ImageInput]) -> torch.Tensor: ...

    def score_pixels(self, prompts: Sequence[str], pixels: torch.Tensor) -> List[float]: ...

    def score_tensors(
        self, pixels: torch.Tensor, prompts: Union[str, Sequence[str], None] = None
    ) -> torch.Tensor: ...


def check_images(images: Any) -> List[ImageInput]:
    """A non-empty list or tuple of valid image inputs (paths are checked to exist)."""
    if not isinstance(images, (list, tuple)):
        raise ImageTypeError(f"images must be a list or tuple, got {type(images).__name__}")
    if len(images) == 0:
        raise InputError("images is empty: give at least one image")
    for image in images:
        check_item(image)
    return list(images)


def check_pixels(pixels: Any) -> None:
    """Float pixels ``[N, 3, H, W]`` in [0, 1] (a cheap check, also under autograd)."""
    if not isinstance(pixels, torch.Tensor):
        raise InputError(
            f"pixels must be a float tensor [N, 3, H, W] in [0, 1], got {type(pixels).__name__} "
            "(score_tensors takes pixels first, then prompts)"
        )
    if pixels.ndim != 4 or pixels.shape[1] != 3:
        raise InputError(f"pixels must be [N, 3, H, W], got shape {tuple(pixels.shape)}")
    if not pixels.is_floating_point():
        raise InputError(f"pixels must be a float tensor in [0, 1], got {pixels.dtype}")
    if pixels.numel() and pixels.device.type != "meta":
        with torch.no_grad():
            low, high = torch.aminmax(pixels.detach())
        if low < -PIXEL_TOLERANCE or high > 1 + PIXEL_TOLERANCE:
            raise InputError(
                f"pixels must lie in [0, 1], got values from {float(low):.3g} to {float(high):.3g} "
                "(divide 0-255 pixels by 255; map [-1, 1] pixels with (x + 1) / 2)"
            )


def distinct_prompts(prompts: List[str]) -> Tuple[List[str], torch.Tensor]:
    """The distinct prompts in first-seen order, and each prompt's row among them."""
    unique = list(dict.fromkeys(prompts))
    row_of = {prompt: row for row, prompt in enumerate(unique)}
    return unique, torch.tensor([row_of[p] for p in prompts], dtype=torch.long)


def ranks_from_rewards(rewards: Sequence[float]) -> List[int]:
    """1-based ranks by descending reward; ties keep input order; NaN ranks last."""
    order = sorted(
        range(len(rewards)),
        key=lambda i: math.inf if math.isnan(rewards[i]) else -rewards[i],
    )
    ranks = [0] * len(rewards)
    for position, index in enumerate(order):
        ranks[index] = position + 1
    return ranks


__all__ = [
    "RankResult",
    "Scorer",
    "check_images",
    "check_pixels",

    "distinct_prompts",
    "ranks_from_rewards",
]
