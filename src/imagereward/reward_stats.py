"""Several rewards on one scale: per-model z-score statistics and weighted sums.

Scorers answer on their own scales (ImageReward about N(0, 1), PickScore 100 x a
cosine, HPS and CLIP cosines near 0.2-0.3), so a weighted sum of raw scores is
dominated by whichever scale is widest. :class:`RewardStats` holds each model's mean
and standard deviation over the user's own prompts and images (computed once by
``imagereward reward-stats`` and saved as a small JSON file) and standardises scores
with them; :func:`weighted_reward` sums them.

The file::

    {"format": "imagereward-reward-stats/1",
     "models": {"PickScore": {"mean": 21.3, "std": 1.4, "count": 5000}, ...}}

No statistics ship with the package: they depend on the weights and on the data.
This module needs neither torch nor numpy, so the server's ingress and the clients
read it as they are.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Dict, Iterable, List, Literal, Mapping, Optional, Sequence

from .errors import InputError, StatsFileError

FORMAT = "imagereward-reward-stats/1"
Normalize = Literal["none", "zscore"]
NORMALIZE_MODES = ("none", "zscore")


@dataclass(frozen=True)
class ScoreStats:
    """One model's scores over a reference set: mean, population standard deviation, count."""

    mean: float
    std: float
    count: int

    @classmethod
    def of(cls, scores: Iterable[float]) -> "ScoreStats":
        values = [float(v) for v in scores]
        if len(values) < 2:
            raise InputError(f"statistics need at least 2 scores, got {len(values)}")
        if not all(math.isfinite(v) for v in values):
            raise InputError("statistics got a score that is not finite")
        mean = math.fsum(values) / len(values)
        std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / len(values))
        if std == 0.0:
            raise InputError("every score is the same: the standard deviation is 0, so z-scores are undefined")
        return cls(mean, std, len(values))


class RewardStats:
    """Per-model :class:`ScoreStats`, read from or written to a statistics file."""

    def __init__(self, models: Mapping[str, ScoreStats]) -> None:
        self.models: Dict[str, ScoreStats] = dict(models)

    @classmethod
    def from_scores(cls, scores: Mapping[str, Sequence[float]]) -> "RewardStats":
        return cls({model: ScoreStats.of(values) for model, values in scores.items()})

    @classmethod
    def load(cls, path: str) -> "RewardStats":
        try:
            with open(path, "r", encoding="utf-8") as handle:
                data = json.load(handle)
        except FileNotFoundError:
            raise StatsFileError(f"reward statistics file not found: {path}") from None
        except (OSError, ValueError) as error:
            raise StatsFileError(f"cannot read reward statistics file {path}: {error}") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("models"), dict):
            raise StatsFileError(f"{path} is not a reward statistics file (format {FORMAT!r})")
        models = {}
        for model, entry in data["models"].items():
            try:
                stats = ScoreStats(float(entry["mean"]), float(entry["std"]), int(entry["count"]))
            except (KeyError, TypeError, ValueError):
                raise StatsFileError(f"{path}: model {model!r} needs numbers mean, std and count") from None
            if not (math.isfinite(stats.mean) and math.isfinite(stats.std) and stats.std > 0):
                raise StatsFileError(f"{path}: model {model!r} needs a finite mean and a positive std")
            models[model] = stats
        return cls(models)

    def save(self, path: str) -> None:
        data = {"format": FORMAT, "models": {
            model: {"mean": s.mean, "std": s.std, "count": s.count} for model, s in self.models.items()
        }}
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        temporary = f"{path}.tmp-{os.getpid()}"
        with open(temporary, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2)
            handle.write("\n")
        os.replace(temporary, path)

    def check_covers(self, models: Iterable[str]) -> None:
        missing = [model for model in models if model not in self.models]
        if missing:
            raise InputError(
                f"no z-score statistics for {', '.join(missing)}; the statistics cover "
                f"{', '.join(self.models) or 'no model'} (compute them with imagereward reward-stats)"
            )

    def zscore(self, model: str, scores: Sequence[float]) -> List[float]:
        self.check_covers([model])
        stats = self.models[model]
        return [(float(v) - stats.mean) / stats.std for v in scores]


def check_normalize(mode: str) -> str:
    if mode not in NORMALIZE_MODES:
        raise InputError(f"normalize must be one of {', '.join(NORMALIZE_MODES)}, got {mode!r}")
    return mode


def check_scaling(mode: str, stats: Optional[RewardStats], models: Iterable[str]) -> str:
    """``mode`` if the scores of ``models`` can be scaled that way: ``"zscore"`` needs
    statistics covering every one of them."""
    check_normalize(mode)
    if mode == "zscore":
        if stats is None:
            raise InputError("normalize 'zscore' needs reward statistics (a file from imagereward reward-stats)")
        stats.check_covers(models)
    return mode


def normalized(
    scores: Mapping[str, Sequence[float]], mode: str, stats: Optional[RewardStats]
) -> Dict[str, List[float]]:
    """Each model's scores as they are (``"none"``) or standardised (``"zscore"``)."""
    if check_scaling(mode, stats, scores) == "none":
        return {model: [float(v) for v in values] for model, values in scores.items()}
    return {model: stats.zscore(model, values) for model, values in scores.items()}  # type: ignore[union-attr]


def check_weights(weights: Mapping[str, float], models: Sequence[str]) -> Dict[str, float]:
    """Weights by model name, each a finite number for a model among ``models``."""
    checked = {}
    for model, weight in weights.items():
        if model not in models:
            raise InputError(f"weights name {model!r}, which is not among the models scored ({', '.join(models)})")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
            raise InputError(f"weights[{model!r}] must be a finite number, got {weight!r}")
        checked[model] = float(weight)
    return checked


def weighted_reward(scores: Mapping[str, Sequence[float]], weights: Mapping[str, float]) -> List[float]:
    """``sum over models of weights[m] * scores[m]``, image by image; a model without a
    weight does not count (its scores are reported, not summed)."""
    if not weights:
        raise InputError("weights is empty: give at least one model's weight")
    lengths = {len(scores[model]) for model in weights}
    if len(lengths) != 1:
        raise InputError("the weighted models scored different numbers of images")
    count = lengths.pop()
    return [math.fsum(weights[m] * float(scores[m][i]) for m in weights) for i in range(count)]


__all__ = [
    "FORMAT",
    "NORMALIZE_MODES",
    "RewardStats",
    "ScoreStats",
    "StatsFileError",
    "check_normalize",
    "check_scaling",
    "check_weights",
    "normalized",
    "weighted_reward",
]
