"""Rewards for RL trainers: several reward models, weighted, in-process or on a reward server.

:class:`MultiReward` holds the models (local scorers, or the models of a server at
``remote=URL``), optional z-score statistics and weights, and gives the reward in the
shapes trainers call:

- :meth:`MultiReward.ddpo_fn`: ``fn(images, prompts, metadata) -> (rewards, info)``,
  the reward function of ddpo-pytorch-style trainers (``rewards`` a ``float32 [N]``
  array; ``info`` holds each model's scores and the seconds taken);
- :meth:`MultiReward.grpo_fn`: ``fn(images, prompts, metadata) -> (scores, info)``
  with one ``[N]`` array per model and their weighted sum under ``"avg"``, the shape
  of Flow-GRPO/DanceGRPO-style multi-reward functions;
- :meth:`MultiReward.differentiable` and :meth:`MultiReward.loss`: the reward of pixel
  tensors with gradients, for reward-backprop trainers (AlignProp, ReFL); local only.

Images are PIL images, ``uint8`` arrays or tensors, or float arrays or tensors in
[0, 1] (``NCHW`` tensors, ``NHWC`` arrays, or lists of single images). Float pixels
are rounded to ``uint8`` first, locally and remotely alike, and every image is decoded
once for all models (through :func:`imagereward.items.decode_for` here, or by the
server's ingress), so the local and remote rewards are the same numbers. Scores are
standardised and weighted here, with the same code either way.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image

from ..errors import ImageTypeError, InputError
from ..prompts import expand_prompts
from ..reward_stats import RewardStats, check_scaling, check_weights, normalized, weighted_reward
from ..wire import uint8_pixels

PIXEL_RANGES = ("0,1", "-1,1")
Item = Union[Image.Image, np.ndarray]


def as_items(images: Any) -> List[Item]:
    """Trainer images as items both ways of scoring read alike: PIL images as they are,
    everything else as ``uint8 [H, W, C]`` arrays."""
    if hasattr(images, "detach"):  # a torch tensor: a batch NCHW, or one image CHW
        images = images.detach().cpu()
        if images.dtype.is_floating_point:
            images = images.float()
        array = images.numpy()
        batch = array if array.ndim == 4 else array[None]
        return [_item(image, index, channels_first=True) for index, image in enumerate(batch)]
    if isinstance(images, np.ndarray):
        batch = images if images.ndim == 4 else images[None]
        return [_item(image, index, channels_first=False) for index, image in enumerate(batch)]
    if not isinstance(images, (list, tuple)):
        raise ImageTypeError(
            f"images must be a tensor, an array or a list of images, got {type(images).__name__}"
        )
    items: List[Item] = []
    for index, image in enumerate(images):
        if isinstance(image, Image.Image):
            items.append(image)
        elif hasattr(image, "detach"):
            tensor = image.detach().cpu()
            items.append(_item((tensor.float() if tensor.dtype.is_floating_point else tensor).numpy(),
                               index, channels_first=True))
        elif isinstance(image, np.ndarray):
            items.append(_item(image, index, channels_first=False))
        else:
            raise ImageTypeError(
                f"images[{index}]: expected a PIL image, an array or a tensor, got {type(image).__name__}"
            )
    return items


def _item(array: np.ndarray, index: int, channels_first: bool) -> np.ndarray:
    try:
        return uint8_pixels(array, channels_first)
    except InputError as error:
        raise type(error)(f"images[{index}]: {error}") from None


class MultiReward:
    """Several reward models as one reward: ``sum of weights[m] * score_m`` (scores
    optionally z-scored with ``stats``).

    ``models`` is a list of registered names (every one weighted 1 unless ``weights``
    says), a ``{name: weight}`` dict, or ``{name: scorer}`` of loaded scorers.
    Locally (``remote=None``) each model is loaded with ``device``, ``dtype`` and its
    ``files`` (``{name: {role: path}}``); with ``remote="http://host:port"`` the models
    are the server's, and ``client_options`` go to :class:`~imagereward.client.RewardClient`.
    ``stats`` is a file from ``imagereward reward-stats`` (or a :class:`RewardStats`),
    needed for ``normalize="zscore"``.
    """

    def __init__(
        self,
        models: Union[Sequence[str], Mapping[str, Any]],
        *,
        weights: Optional[Mapping[str, float]] = None,
        normalize: str = "none",
        stats: Union[str, RewardStats, None] = None,
        remote: Optional[str] = None,
        device: Optional[str] = None,
        dtype: Optional[str] = None,
        files: Optional[Mapping[str, Mapping[str, str]]] = None,
        api_key: Optional[str] = None,
        client_options: Optional[Mapping[str, Any]] = None,
    ) -> None:
        scorers: Dict[str, Any] = {}
        if isinstance(models, Mapping):
            names = list(models)
            values = list(models.values())
            if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
                weights = dict(models) if weights is None else weights
            else:
                scorers = dict(models)
        else:
            names = list(models)
        if not names:
            raise InputError("models is empty: give at least one reward model")
        self.models = names
        self.weights = check_weights(weights if weights is not None else {n: 1.0 for n in names}, names)
        self.stats = RewardStats.load(stats) if isinstance(stats, str) else stats
        self.normalize = check_scaling(normalize, self.stats, names)
        self.remote = remote
        if remote is not None:
            if scorers:
                raise InputError("remote=URL scores with the server's models: pass model names, not scorers")
            from ..client import RewardClient

            self._client: Any = RewardClient(remote, api_key, **dict(client_options or {}))
            self.scorers: Dict[str, Any] = {}
        else:
            self._client = None
            self.scorers = scorers or _load(names, device, dtype, files or {})

    # -- the reward in trainers' shapes ------------------------------------------------------
    def scores(self, images: Any, prompts: Union[str, Sequence[str]]) -> Dict[str, np.ndarray]:
        """Each model's scores ``float32 [N]`` (z-scored when ``normalize="zscore"``)."""
        items = as_items(images)
        prompt_list = expand_prompts(prompts, len(items))
        if self._client is not None:
            raw = self._client.rewards(prompt_list, items, models=self.models, normalize="none").scores
        else:
            raw = _score_locally(self.scorers, prompt_list, items)
        scaled = normalized({m: raw[m] for m in self.models}, self.normalize, self.stats)
        return {model: np.asarray(values, dtype=np.float32) for model, values in scaled.items()}

    def __call__(self, images: Any, prompts: Union[str, Sequence[str]]) -> np.ndarray:
        """The weighted reward ``float32 [N]``."""
        return self._reward(self.scores(images, prompts))

    def ddpo_fn(self) -> Callable[..., Tuple[np.ndarray, Dict[str, Any]]]:
        """``fn(images, prompts, metadata) -> (rewards [N], info)`` for ddpo-pytorch-style trainers."""

        def reward_fn(images: Any, prompts: Sequence[str], metadata: Any = None) -> Tuple[np.ndarray, Dict[str, Any]]:
            start = time.perf_counter()
            scores = self.scores(images, prompts)
            return self._reward(scores), {"scores": scores, "seconds": time.perf_counter() - start}

        return reward_fn

    def grpo_fn(self) -> Callable[..., Tuple[Dict[str, np.ndarray], Dict[str, Any]]]:
        """``fn(images, prompts, metadata) -> ({model: [N], ..., "avg": [N]}, info)``: each model's
        scores and their weighted sum, the shape of GRPO-style multi-reward functions."""

        def reward_fn(images: Any, prompts: Sequence[str], metadata: Any = None) -> Tuple[Dict[str, np.ndarray], Dict[str, Any]]:
            start = time.perf_counter()
            scores = self.scores(images, prompts)
            return {**scores, "avg": self._reward(scores)}, {"seconds": time.perf_counter() - start}

        return reward_fn

    def differentiable(self, pixels: Any, prompts: Union[str, Sequence[str]], pixel_range: str = "0,1") -> Any:
        """The weighted reward ``[N]`` of pixel tensors ``[N, 3, H, W]`` with gradients to the pixels.

        ``pixel_range`` is ``"0,1"`` or ``"-1,1"`` (a VAE's decoded output). Each model resizes
        and normalises on tensors (:meth:`~imagereward.scoring.scorer.RewardScorer.score_tensors`);
        the numbers differ from :meth:`__call__` by the resampling of tensors against PIL's.
        """
        if self._client is not None:
            raise InputError("a remote reward has no gradients: use a local MultiReward (remote=None)")
        if pixel_range not in PIXEL_RANGES:
            raise InputError(f"pixel_range must be one of {PIXEL_RANGES}, got {pixel_range!r}")
        if pixel_range == "-1,1":
            pixels = (pixels + 1.0) / 2.0
        total = None
        for model, weight in self.weights.items():
            scorer = self.scorers[model]
            scores = scorer.score_tensors(pixels.to(scorer.device), prompts).float()
            if self.normalize == "zscore":
                stats = self.stats.models[model]  # type: ignore[union-attr]
                scores = (scores - stats.mean) / stats.std
            term = weight * scores.to(pixels.device)
            total = term if total is None else total + term
        return total

    def loss(self, pixels: Any, prompts: Union[str, Sequence[str]], pixel_range: str = "0,1") -> Any:
        """``-mean(reward)``: the loss a reward-backprop trainer minimises."""
        return -self.differentiable(pixels, prompts, pixel_range).mean()

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    def _reward(self, scores: Mapping[str, np.ndarray]) -> np.ndarray:
        return np.asarray(weighted_reward(scores, self.weights), dtype=np.float32)


def _load(names: Sequence[str], device: Optional[str], dtype: Optional[str],
          files: Mapping[str, Mapping[str, str]]) -> Dict[str, Any]:
    from ..spec import ModelSpec, resolve_files

    resolved = resolve_files(list(names), {k: dict(v) for k, v in files.items()})
    return {name: ModelSpec(name, resolved.get(name, {}), device=device, dtype=dtype).load() for name in names}


def _score_locally(scorers: Mapping[str, Any], prompts: List[str], items: List[Item]) -> Dict[str, List[float]]:
    """Each scorer's scores, every item decoded once and run through each distinct chain."""
    from ..items import collate_pixels, decode_for

    keys = {name: scorer.preprocess.config for name, scorer in scorers.items()}
    chains = {scorer.preprocess.config: scorer.preprocess for scorer in scorers.values()}  # equal configs, one chain
    decoded = [decode_for(chains, item, name=f"images[{i}]") for i, item in enumerate(items)]
    scores: Dict[str, List[float]] = {}
    for name, scorer in scorers.items():
        pixels = collate_pixels([pixels_of[keys[name]] for pixels_of in decoded])
        scores[name] = scorer.score_pixels(prompts, pixels)
    return scores
