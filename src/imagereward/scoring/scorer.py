"""``RewardScorer``: one class for every scorer. A network, its front end, and the engine that runs them.

The registry's builder gives the parts (:class:`~imagereward.scoring.network.ScorerParts`):
the network, its tokenizer and its preprocessing. This class composes them and owns
everything about running them: input checks, decoding through the one item pipeline
(:mod:`imagereward.items`) in worker threads, batching, inference mode, placement on a
device, and the compute dtype recorded at placement. Networks know nothing of it.

The scorer holds the network's submodules under the network's own names, so its
``state_dict`` has the keys of the network (for ImageReward, those of the original
``ImageReward.pt``), and ``.to()``, ``.eval()``, ``.parameters()`` work as on the
original model. Other attributes of the network (``config``, ``score_gard``, ...)
are reachable on the scorer.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from ..errors import InputError, PromptError
from ..items import DEFAULT_LIMITS, ImageInput, ImageLimits, decoded_batches
from ..prompts import check_prompt, check_prompts, expand_prompts
from .base import RankResult, check_images, check_pixels, distinct_prompts, ranks_from_rewards
from .network import RewardNetwork, ScorerParts, TextRows


def _cat_rows(parts: List[torch.Tensor]) -> torch.Tensor:
    """Rows of several text passes; rows of token ids padded to different widths are
    right-padded with 0 to the widest (their lengths travel with them)."""
    if parts[0].dtype == torch.long and parts[0].ndim == 2:
        width = max(part.shape[1] for part in parts)
        parts = [torch.nn.functional.pad(part, (0, width - part.shape[1])) for part in parts]
    return torch.cat(parts)


def default_decode_workers() -> int:
    """Decoding threads: one per CPU this process may use, at least 4, at most 16 (PIL
    releases the GIL)."""
    from ..cpu_share import cpu_allocation

    return min(16, max(4, int(cpu_allocation())))


class RewardScorer(nn.Module):
    """Scores (prompt, image) pairs with one network; returned by :func:`imagereward.load`.

    ``batch_size`` is images per forward pass; ``num_workers`` decoding threads ahead
    of the model (``None``: :func:`default_decode_workers`; 0 decodes inline);
    ``limits`` what images are accepted (the same defaults at every door).
    """

    def __init__(
        self,
        name: str,
        parts: ScorerParts,
        *,
        batch_size: int = 16,
        num_workers: Optional[int] = None,
        limits: ImageLimits = DEFAULT_LIMITS,
    ) -> None:
        super().__init__()
        network = parts.network
        if network._parameters or network._buffers:  # noqa: SLF001 - the composition's precondition
            raise TypeError(f"{type(network).__name__} keeps tensors outside submodules")
        object.__setattr__(self, "network", network)  # not a child: its children are ours
        for child_name, child in network.named_children():
            self._modules[child_name] = child  # noqa: SLF001 - add_module would see the network
        self.name = name
        self.config = network.config
        self.tokenizer = parts.tokenizer
        self.preprocess = parts.preprocess
        self.batch_size = batch_size
        self.num_workers = default_decode_workers() if num_workers is None else num_workers
        self.limits = limits
        # Set by imagereward.int8.quantize_int8: the calibration its int8 layers run with.
        self.int8_calibration: Optional[Any] = None
        self._compute_dtype = self._encoder_dtype() or torch.float32

    network: RewardNetwork

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            network = self.__dict__.get("network")
            if network is None or name.startswith("_"):
                raise
            return getattr(network, name)

    def __repr__(self) -> str:
        int8 = "" if self.int8_calibration is None else ", int8"
        return f"RewardScorer({self.name!r}, {type(self.network).__name__}, dtype={self.compute_dtype}{int8})"

    # -- placement ----------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        """Where the parameters are now; inputs follow them (also after ``.to()``)."""
        return next(self.parameters()).device

    @property
    def compute_dtype(self) -> torch.dtype:
        """The encoders' precision, as set by :meth:`set_compute_dtype` or ``.to(dtype)``."""
        return self._compute_dtype

    def set_compute_dtype(self, dtype: torch.dtype) -> None:
        """Encoders in ``dtype``; reward heads (and temperatures) stay float32."""
        self.network.set_compute_dtype(dtype)
        self._compute_dtype = dtype

    def to(self, *args: Any, **kwargs: Any) -> "RewardScorer":  # type: ignore[override]
        """As ``nn.Module.to``; a floating dtype goes to :meth:`set_compute_dtype` (heads stay float32)."""
        device, dtype, non_blocking, _ = torch._C._nn._parse_to(*args, **kwargs)  # noqa: SLF001
        if dtype is not None and dtype.is_floating_point:
            self.set_compute_dtype(dtype)
        if device is not None:
            super().to(device=device, non_blocking=non_blocking)
        return self

    def _encoder_dtype(self) -> Optional[torch.dtype]:
        weights = [p for module in self.network.encoders() for p in module.parameters()]
        return weights[0].dtype if weights and weights[0].is_floating_point() else None

    def _apply(self, fn: Any, recurse: bool = True) -> "RewardScorer":
        """Every cast of ``nn.Module`` (``.half()``, ``.double()``, ...) keeps the recorded
        compute dtype equal to the encoders' own."""
        super()._apply(fn, recurse)
        self._compute_dtype = self._encoder_dtype() or self._compute_dtype
        return self

    def place(self, device: torch.device, dtype: torch.dtype = torch.float32) -> "RewardScorer":
        """Eval mode, the encoders' precision (builders may leave them in the checkpoint's),
        then the device."""
        self.eval()
        if dtype != self._encoder_dtype():
            self.set_compute_dtype(dtype)
        super().to(device)
        return self

    def compile_encoders(self, **options: Any) -> None:
        """``torch.compile`` each encoder in place (``options`` go to ``torch.compile``).

        Parameter names and the ``state_dict`` stay as they are. The first batch of
        each new shape pays the compile time (about a minute for ViT-L on a CPU).
        """
        for module in self.network.encoders():
            module.compile(**options)

    # -- the original API ---------------------------------------------------------------
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

    # -- batched API ---------------------------------------------------------------------
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

    def score_details(self, prompts: Sequence[str], images: Sequence[ImageInput]) -> Dict[str, List[float]]:
        """Everything the network says of N pairs, by name: ``{"score": [...]}`` for most
        scorers; ``{"mean": [...], "sigma": [...]}`` for HPSv3 (the reward and its
        uncertainty; ``score_batch`` gives the mean)."""
        prompts = check_prompts(prompts)
        images = check_images(images)
        if len(prompts) != len(images):
            raise PromptError(f"got {len(prompts)} prompts but {len(images)} images")
        return self._outputs(prompts, self._batches(images), self.network.details)

    def score_matrix(self, prompts: Sequence[str], images: Sequence[ImageInput]) -> torch.Tensor:
        """Scores of every prompt with every image: a float32 CPU tensor ``[P, I]``.

        Each image is decoded and encoded once, each distinct prompt tokenised once.
        Entry ``[p, i]`` equals ``score(prompts[p], images[i])`` up to float rounding.
        """
        prompts = check_prompts(prompts)
        if not prompts:
            raise PromptError("prompts is empty: give at least one prompt")
        images = check_images(images)
        return self._grid(prompts, (pixels for _, pixels in self._batches(images)))

    def warm_up(self) -> None:
        """Score one blank pair, so that a long-running worker's first real batch does not
        pay for reading the weights in, packing bf16 weights and choosing kernels."""
        from PIL import Image

        self.score_pixels([""], self.preprocess.to_pixels(Image.new("RGB", (224, 224)))[None])

    def score_pixels(self, prompts: Sequence[str], pixels: torch.Tensor) -> List[float]:
        """Rewards of row-aligned prompts and images already decoded by this scorer's chain.

        ``pixels`` is a batch ``[B, 3, S, S]`` of what :func:`imagereward.items.decode`
        makes (``uint8``; ``float32`` for padding chains), so decoding can happen
        elsewhere (another thread, process or machine); it is scored in one pass,
        with the same operations as :meth:`score_batch`.
        """
        prompts = check_prompts(prompts)
        self._check_decoded(pixels, len(prompts))
        if not prompts:
            return []
        return self._pairs(prompts, [(0, pixels)])

    def score_pixel_matrix(self, prompts: Sequence[str], pixels: torch.Tensor) -> torch.Tensor:
        """:meth:`score_matrix` of images already decoded by this scorer's chain: ``[P, B]``."""
        prompts = check_prompts(prompts)
        if not prompts:
            raise PromptError("prompts is empty: give at least one prompt")
        self._check_decoded(pixels, None)
        size = max(1, int(self.batch_size))
        return self._grid(prompts, (pixels[start : start + size] for start in range(0, pixels.shape[0], size)))

    def score_tensors(
        self, pixels: torch.Tensor, prompts: Union[str, Sequence[str], None] = None
    ) -> torch.Tensor:
        """Differentiable scores ``[N]`` for pixels ``[N, 3, H, W]`` in [0, 1].

        Resizing (antialiased), cropping or padding and normalising happen on tensors,
        so gradients reach ``pixels``. ``prompts`` is one string for all images or one
        per image (image-only scorers ignore it).
        """
        check_pixels(pixels)
        if self.tokenizer is None:
            text: TextRows = {}
        else:
            text = self.text_rows(expand_prompts(prompts, pixels.shape[0]))
        image = self.preprocess.tensor_transform(pixels.to(self.device)).to(self.compute_dtype)
        return self.network.score_rows(text, image)

    # -- engine ---------------------------------------------------------------------------
    def text_rows(self, prompts: Sequence[str]) -> TextRows:
        """The network's rows of ``prompts``, ``batch_size`` prompts per text pass, on the device."""
        if self.tokenizer is None:
            return {}
        device = self.device
        size = max(1, int(self.batch_size))
        chunks: List[TextRows] = []
        for start in range(0, len(prompts), size):
            tokens = self.tokenizer(list(prompts[start : start + size]))
            tokens = {k: v.to(device) for k, v in tokens.items()} if isinstance(tokens, dict) else tokens.to(device)
            chunks.append(self.network.encode_text(tokens))
        if len(chunks) == 1:
            return chunks[0]
        return {key: _cat_rows([chunk[key] for chunk in chunks]) for key in chunks[0]}

    def _check_decoded(self, pixels: Any, count: Optional[int]) -> None:
        size = self.preprocess.fixed_size
        rows = "B" if count is None else str(count)
        sides = ("H", "W") if size is None else (size, size)
        if (
            not isinstance(pixels, torch.Tensor) or pixels.ndim != 4
            or (count is not None and pixels.shape[0] != count)
            or pixels.shape[1] != 3
            or (size is not None and tuple(pixels.shape[2:]) != sides)
        ):
            shape = tuple(pixels.shape) if isinstance(pixels, torch.Tensor) else type(pixels).__name__
            raise InputError(
                f"pixels must be [{rows}, 3, {sides[0]}, {sides[1]}] as decoded for this scorer, got {shape}"
            )

    def _score_pairs(self, prompts: List[str], images: List[ImageInput]) -> List[float]:
        """Scores of row-aligned prompts and images; the callers have checked the images."""
        return self._pairs(prompts, self._batches(images))

    def _pairs(self, prompts: List[str], batches: Iterable[Tuple[int, torch.Tensor]]) -> List[float]:
        """Scores of row-aligned prompts and ``(start, decoded pixels)`` batches, in order;
        each distinct prompt is encoded once."""
        def score(text: TextRows, pixels: torch.Tensor) -> Dict[str, torch.Tensor]:
            return {"score": self.network.score_rows(text, pixels)}

        return self._outputs(prompts, batches, score).get("score", [])

    def _outputs(
        self, prompts: List[str], batches: Iterable[Tuple[int, torch.Tensor]],
        outputs: Callable[[TextRows, torch.Tensor], Dict[str, torch.Tensor]],
    ) -> Dict[str, List[float]]:
        """``outputs(text rows, normalised pixels)`` (named tensors ``[B]``) of row-aligned
        prompts and ``(start, decoded pixels)`` batches, as named lists in order."""
        unique, prompt_rows = distinct_prompts(prompts)
        named: Dict[str, List[float]] = {}
        with torch.inference_mode():
            text = self.text_rows(unique)
            for start, pixels in batches:
                rows = prompt_rows[start : start + pixels.shape[0]].to(self.device)
                batch_text = {k: v.index_select(0, rows) for k, v in text.items()}
                for key, value in outputs(batch_text, self._normalized(pixels)).items():
                    named.setdefault(key, []).extend(value.float().cpu().tolist())
        return named

    def _grid(self, prompts: List[str], batches: Iterable[torch.Tensor]) -> torch.Tensor:
        """Scores ``[P, I]`` of every prompt with every image of the decoded pixel batches;
        each distinct prompt is encoded once, each image once."""
        unique, prompt_rows = distinct_prompts(prompts)
        columns: List[torch.Tensor] = []
        with torch.inference_mode():
            text = self.text_rows(unique)
            for pixels in batches:
                features = self.network.image_features(self._normalized(pixels))
                columns.append(self.network.score_grid(text, features).float().cpu().expand(len(unique), -1))
        return torch.cat(columns, dim=1).index_select(0, prompt_rows)

    def _batches(self, images: List[ImageInput]) -> Any:
        return decoded_batches(self.preprocess, images, self.batch_size, self.limits, self.num_workers)

    def _normalized(self, pixels: torch.Tensor) -> torch.Tensor:
        """Decoded pixels moved to the device, normalised there, in the compute dtype."""
        device = self.device
        return self.preprocess.normalize(pixels.to(device, non_blocking=True)).to(self.compute_dtype)

