"""What a scorer's network offers the engine: text rows, image features, scores. Tensors only.

A network knows nothing of files, batching, threads or devices: it takes tokens its
tokenizer made and normalised pixels, and returns tensors with gradients where the
computation has them. :class:`~imagereward.scoring.scorer.RewardScorer` composes one
with its tokenizer and preprocessing and runs it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..preprocess import ImagePreprocessor

TextRows = Dict[str, torch.Tensor]


def repeated_row(text: TextRows, row: int, count: int) -> TextRows:
    """Row ``row`` of text rows, repeated for ``count`` images (views, no copies)."""
    return {key: value[row : row + 1].expand(count, *value.shape[1:]) for key, value in text.items()}


class RewardNetwork(nn.Module):
    """Base of every scorer network; subclasses implement the methods below.

    ``FLOAT32_MODULES`` name submodules that stay float32 whatever the encoders'
    precision (reward heads); ``FLOAT32_PARAMETERS`` name single parameters that do
    (PickScore's and MPS's temperature). A network keeps no parameters or buffers of its own,
    only in submodules, so that a scorer can hold the same modules under the same names.
    """

    FLOAT32_MODULES: Tuple[str, ...] = ()
    FLOAT32_PARAMETERS: Tuple[str, ...] = ()
    config: Any

    def encode_text(self, tokens: Any) -> TextRows:
        """Rows ``[N, ...]`` per prompt from what the tokenizer made (already on the device)."""
        raise NotImplementedError

    def score_rows(self, text: TextRows, pixels: torch.Tensor) -> torch.Tensor:
        """Scores ``[B]`` of row-aligned text rows and normalised pixels ``[B, 3, S, S]``."""
        raise NotImplementedError

    def details(self, text: TextRows, pixels: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Every output of :meth:`score_rows`'s pass by name (``{"score": [B]}`` unless the
        network has more to say, like HPSv3's uncertainty)."""
        return {"score": self.score_rows(text, pixels)}

    def image_features(self, pixels: torch.Tensor) -> Any:
        """What :meth:`score_grid` needs of a batch of normalised pixels, computed once."""
        raise NotImplementedError

    def score_grid(self, text: TextRows, features: Any) -> torch.Tensor:
        """Scores ``[P, B]`` of all ``P`` text rows with ``B`` images (``[1, B]`` where the
        prompt does not matter)."""
        raise NotImplementedError

    def encoders(self) -> List[nn.Module]:
        """The image and text encoders: where nearly all the compute is."""
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def set_compute_dtype(self, dtype: torch.dtype) -> None:
        """Cast to ``dtype``; :attr:`FLOAT32_MODULES` stay float32, and so do the values of
        :attr:`FLOAT32_PARAMETERS` (kept from before the cast, which would round them)."""
        kept = {name: self.get_parameter(name).data.float().clone() for name in self.FLOAT32_PARAMETERS}
        self.to(dtype)
        for name in self.FLOAT32_MODULES:
            getattr(self, name).float()
        for name, value in kept.items():
            parameter = self.get_parameter(name)
            parameter.data = value.to(parameter.device)


@dataclass(frozen=True)
class ScorerParts:
    """What a registry builder returns: the network and its front end.

    ``tokenizer`` turns a list of prompts into what :meth:`RewardNetwork.encode_text`
    takes (``None`` for image-only scorers); ``preprocess`` is the image chain that
    travels with the weights.
    """

    network: RewardNetwork
    tokenizer: Optional[Callable[[Sequence[str]], Any]]
    preprocess: ImagePreprocessor
