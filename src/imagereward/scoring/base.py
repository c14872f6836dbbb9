"""The scoring contract shared by ImageReward and the baseline scorers.

A scorer turns (prompt, image) pairs into one float each. Subclasses say how to
prepare prompts (:meth:`RewardScorer.encode_prompts`), how to score a batch of
preprocessed pixels against prepared prompt rows (:meth:`RewardScorer.score_rows`),
and how to score every prompt against a batch of images whose features were
computed once (:meth:`RewardScorer.image_features`, :meth:`RewardScorer.score_grid`);
this module supplies input checking, decoding in worker threads, batching,
inference mode, device and dtype placement, and the original return conventions.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Protocol, Sequence, Tuple, Union, runtime_checkable

import torch

from ..config import PreprocessConfig
from ..errors import ImageTypeError, InputError, PromptError
from ..preprocess import ImageInput, ImagePreprocessor, check_image_input

TextRows = Dict[str, torch.Tensor]


@dataclass
class RankResult:
    """Rewards and 1-based ranks (1 = best) of a list of images, both in input order."""

    ranking: List[int]
    rewards: List[float]


@runtime_checkable
class Scorer(Protocol):
    """What every scorer returned by :func:`imagereward.load` offers."""

    preprocess: ImagePreprocessor
    batch_size: int

    @property
    def device(self) -> torch.device: ...

    def score(
        self, prompt: str, image: Union[ImageInput, Sequence[ImageInput]]
    ) -> Union[float, List[float]]: ...

    def inference_rank(
        self, prompt: str, generations_list: Sequence[ImageInput]
    ) -> Tuple[Union[int, List[int]], Union[float, List[float]]]: ...

    def rank(self, prompt: str, images: Sequence[ImageInput]) -> "RankResult": ...

    def score_batch(self, prompts: Sequence[str], images: Sequence[ImageInput]) -> List[float]: ...

    def score_matrix(self, prompts: Sequence[str], images: Sequence[ImageInput]) -> torch.Tensor: ...

    def score_tensors(
        self, pixels: torch.Tensor, prompts: Union[str, Sequence[str]]
    ) -> torch.Tensor: ...


def check_prompt(prompt: Any, name: str = "prompt") -> str:
    if not isinstance(prompt, str):
        raise PromptError(f"{name} must be a str, got {type(prompt).__name__}")
    return prompt


def expand_prompts(prompts: Union[str, Sequence[str]], count: int) -> List[str]:
    """One prompt per image: a single string is repeated ``count`` times."""
    if isinstance(prompts, str):
        return [prompts] * count
    prompts = [check_prompt(p, f"prompts[{i}]") for i, p in enumerate(prompts)]
    if len(prompts) != count:
        raise PromptError(f"got {len(prompts)} prompts for {count} images")
    return prompts


def check_prompts(prompts: Any) -> List[str]:
    """A list or tuple of str (a bare string is refused: it is one prompt, not a list)."""
    if isinstance(prompts, str) or not isinstance(prompts, (list, tuple)):
        raise PromptError(f"prompts must be a list or tuple of str, got {type(prompts).__name__}")
    return [check_prompt(p, f"prompts[{i}]") for i, p in enumerate(prompts)]


def check_images(images: Any) -> List[ImageInput]:
    """A non-empty list or tuple of valid image inputs (paths are checked to exist)."""
    if not isinstance(images, (list, tuple)):
        raise ImageTypeError(f"images must be a list or tuple, got {type(images).__name__}")
    if len(images) == 0:
        raise InputError("images is empty: give at least one image")
    for image in images:
        check_image_input(image)
    return list(images)


def distinct_prompts(prompts: List[str]) -> Tuple[List[str], torch.Tensor]:
    """The distinct prompts in first-seen order, and each prompt's row among them."""
    unique = list(dict.fromkeys(prompts))
    row_of = {prompt: row for row, prompt in enumerate(unique)}
    return unique, torch.tensor([row_of[p] for p in prompts], dtype=torch.long)


def default_decode_workers() -> int:
    return min(16, max(4, os.cpu_count() or 1))


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


class RewardScorer:
    """Mixin for ``nn.Module`` scorers. Attributes set by subclasses:

    ``preprocess`` (an :class:`ImagePreprocessor`), ``batch_size``, ``num_workers``
    (threads that decode and preprocess images ahead of the model; 0 decodes inline).
    """

    preprocess: ImagePreprocessor
    batch_size: int
    num_workers: int
    # Submodules that stay in float32 whatever the encoders' precision (reward heads).
    FLOAT32_MODULES: Tuple[str, ...] = ()

    def init_scoring(
        self,
        preprocess: Optional[ImagePreprocessor],
        image_size: int,
        batch_size: int,
        num_workers: Optional[int],
    ) -> None:
        """Attach preprocessing (by default the BLIP/CLIP chain at ``image_size``) and batching.

        ``num_workers=None`` takes one decoding thread per CPU core, at least 4 and at
        most 16 (PIL releases the GIL while it decodes and resizes).
        """
        self.preprocess = preprocess or ImagePreprocessor(PreprocessConfig(image_size=image_size))
        self.batch_size = batch_size
        self.num_workers = default_decode_workers() if num_workers is None else num_workers

    # -- to implement -------------------------------------------------------------
    def encode_prompts(self, prompts: Sequence[str]) -> TextRows:
        """Tensors with one row per prompt (token ids, or text embeddings)."""
        raise NotImplementedError

    def score_rows(self, text: TextRows, pixels: torch.Tensor) -> torch.Tensor:
        """Scores ``[B]`` for row-aligned prompt rows and normalised pixels ``[B, 3, S, S]``."""
        raise NotImplementedError

    def image_features(self, pixels: torch.Tensor) -> Any:
        """What :meth:`score_grid` needs of a batch of normalised pixels, computed once."""
        raise NotImplementedError

    def score_grid(self, text: TextRows, features: Any) -> torch.Tensor:
        """Scores ``[P, B]`` of all ``P`` prompt rows with ``B`` images' features.

        ``[1, B]`` where scores do not depend on the prompt.
        """
        raise NotImplementedError

    def encoders(self) -> List[torch.nn.Module]:
        """The image and text encoders: where nearly all the compute is."""
        raise NotImplementedError

    def score_tensors(
        self, pixels: torch.Tensor, prompts: Union[str, Sequence[str]]
    ) -> torch.Tensor:
        """Differentiable scores ``[N]`` for pixels ``[N, 3, H, W]`` in [0, 1]."""
        raise NotImplementedError

    def set_compute_dtype(self, dtype: torch.dtype) -> None:
        """Cast the encoders to ``dtype``; :attr:`FLOAT32_MODULES` stay in float32."""
        self.to(dtype)  # type: ignore[attr-defined]
        for name in self.FLOAT32_MODULES:
            getattr(self, name).float()

    def compile_encoders(self, **options: Any) -> None:
        """``torch.compile`` each encoder in place (``options`` go to ``torch.compile``).

        Parameter names and the ``state_dict`` stay as they are. The first batch of
        each new shape pays the compile time (about a minute for ViT-L on a CPU);
        it pays off on GPUs and long jobs, barely on CPUs (about 3% for ViT-L in fp32).
        """
        for module in self.encoders():
            module.compile(**options)

    # -- placement ----------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        """Where the parameters are now; inputs follow them (also after ``.to()``)."""
        return next(self.parameters()).device  # type: ignore[attr-defined]

    @property
    def compute_dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype  # type: ignore[attr-defined]

    # -- public API ---------------------------------------------------------------
    def score(
        self, prompt: str, image: Union[ImageInput, Sequence[ImageInput]]
    ) -> Union[float, List[float]]:
        """Reward of one image (a float), or the list of rewards of a list of images."""
        check_prompt(prompt)
        if isinstance(image, (list, tuple)):
            return self.inference_rank(prompt, image)[1]
        return self._score_pairs([prompt], check_images([image]))[0]

    def inference_rank(
        self, prompt: str, generations_list: Sequence[ImageInput]
    ) -> Tuple[Union[int, List[int]], Union[float, List[float]]]:
        """``(ranking, rewards)`` in input order, as the original package returns them.

        For a one-element list the original returns the bare ``1`` and a bare float,
        and so does this method; :meth:`rank` always returns lists.
        """
        result = self.rank(prompt, generations_list)
        if len(result.rewards) == 1:
            return result.ranking[0], result.rewards[0]
        return result.ranking, result.rewards

    def rank(self, prompt: str, images: Sequence[ImageInput]) -> RankResult:
        check_prompt(prompt)
        images = check_images(images)
        rewards = self._score_pairs([prompt] * len(images), images)
        return RankResult(ranks_from_rewards(rewards), rewards)

    def score_batch(self, prompts: Sequence[str], images: Sequence[ImageInput]) -> List[float]:
        """Rewards of N independent (prompt, image) pairs."""
        prompts = check_prompts(prompts)
        images = check_images(images)
        if len(prompts) != len(images):
            raise PromptError(f"got {len(prompts)} prompts but {len(images)} images")
        return self._score_pairs(prompts, images)

    def score_matrix(self, prompts: Sequence[str], images: Sequence[ImageInput]) -> torch.Tensor:
        """Scores of every prompt with every image: a float32 CPU tensor ``[P, I]``.

        Each image is decoded and encoded once, each distinct prompt tokenised once,
        so ``P`` prompts cost far less than ``P`` calls of :meth:`rank`. Entry
        ``[p, i]`` equals ``score(prompts[p], images[i])`` up to float rounding.
        """
        prompts = check_prompts(prompts)
        if not prompts:
            raise PromptError("prompts is empty: give at least one prompt")
        images = check_images(images)
        unique, prompt_rows = distinct_prompts(prompts)
        device, dtype = self.device, self.compute_dtype
        columns: List[torch.Tensor] = []
        with torch.inference_mode():
            text = {k: v.to(device) for k, v in self.encode_prompts(unique).items()}
            for _, pixels in self._pixel_batches(images):
                features = self.image_features(self._on_device(pixels, device, dtype))
                grid = self.score_grid(text, features).float().cpu()
                columns.append(grid.expand(len(unique), -1))
        return torch.cat(columns, dim=1).index_select(0, prompt_rows)

    # -- engine ---------------------------------------------------------------------
    def _score_pairs(self, prompts: List[str], images: List[ImageInput]) -> List[float]:
        """Scores of row-aligned prompts and images; the callers have checked the images."""
        unique, prompt_rows = distinct_prompts(prompts)
        device, dtype = self.device, self.compute_dtype
        scores: List[float] = []
        with torch.inference_mode():
            text = {k: v.to(device) for k, v in self.encode_prompts(unique).items()}
            for start, pixels in self._pixel_batches(images):
                rows = prompt_rows[start : start + pixels.shape[0]].to(device)
                batch_text = {k: v.index_select(0, rows) for k, v in text.items()}
                out = self.score_rows(batch_text, self._on_device(pixels, device, dtype))
                scores.extend(out.float().cpu().tolist())
        return scores

    def _on_device(
        self, pixels: torch.Tensor, device: torch.device, dtype: torch.dtype
    ) -> torch.Tensor:
        """A batch from ``to_pixels`` moved to ``device``, normalised there, in the compute dtype."""
        return self.preprocess.normalize(pixels.to(device, non_blocking=True)).to(dtype)

    def _pixel_batches(self, images: List[ImageInput]) -> Iterator[Tuple[int, torch.Tensor]]:
        """Pixel batches ``[B, 3, S, S]`` (``uint8``, or ``float32`` for padding chains) in
        order; decoding runs ahead in worker threads."""
        size = max(1, int(self.batch_size))
        chunks = [images[i : i + size] for i in range(0, len(images), size)]
        decode = self.preprocess.to_pixels
        if self.num_workers <= 0:
            for index, chunk in enumerate(chunks):
                yield index * size, torch.stack([decode(im) for im in chunk])
            return
        with ThreadPoolExecutor(max_workers=self.num_workers) as pool:
            pending = [pool.map(decode, chunk) for chunk in chunks[:2]]
            for index in range(len(chunks)):
                batch = torch.stack(list(pending.pop(0)))
                if index + 2 < len(chunks):
                    pending.append(pool.map(decode, chunks[index + 2]))
                yield index * size, batch
