"""Preference accuracy and rank correlation, as pure functions over plain lists.

Preference accuracy follows the original evaluation exactly: within each prompt,
every pair of images whose human ranks differ is counted once; it is a hit when
the image with the smaller (better) human rank has a *strictly* larger reward.
Equal rewards are misses, pairs tied by the annotators are skipped, and the
accuracy is pooled over all counted pairs of all prompts. A pair in which
either reward is NaN is not counted (no comparison with NaN is true, so it can
be neither a hit nor a fair miss); such pairs are reported in ``nan_pairs``.

Human ranks are compared only with each other, so they need not be contiguous
(``[1, 2, 5, 3]`` as in ``test.json`` is fine).

Besides the pooled number, :func:`preference_accuracy` gives the mean of the
per-prompt accuracies and a bootstrap confidence interval that resamples
prompts (pairs of one prompt are not independent).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import numpy as np


@dataclass(frozen=True)
class PairCounts:
    """Pair counts of one prompt."""

    hits: int = 0
    pairs: int = 0  # counted pairs: distinct human ranks, no NaN reward
    human_ties: int = 0  # skipped: equal human ranks
    reward_ties: int = 0  # counted as misses: equal rewards
    nan_pairs: int = 0  # skipped: a NaN reward


def count_pairs(ranking: Sequence[float], rewards: Sequence[float]) -> PairCounts:
    """Hits and counted pairs of one prompt (see the module docstring for the rules)."""
    if len(ranking) != len(rewards):
        raise ValueError(f"ranking has {len(ranking)} entries but rewards has {len(rewards)}")
    hits = pairs = human_ties = reward_ties = nan_pairs = 0
    n = len(ranking)
    for i in range(n):
        for j in range(i + 1, n):
            if ranking[i] == ranking[j]:
                human_ties += 1
                continue
            better, worse = (i, j) if ranking[i] < ranking[j] else (j, i)
            r_better, r_worse = float(rewards[better]), float(rewards[worse])
            if math.isnan(r_better) or math.isnan(r_worse):
                nan_pairs += 1
                continue
            pairs += 1
            if r_better > r_worse:
                hits += 1
            elif r_better == r_worse:
                reward_ties += 1
    return PairCounts(hits, pairs, human_ties, reward_ties, nan_pairs)


@dataclass
class AccuracyResult:
    """Preference accuracy of one model over a test set (fractions in [0, 1])."""

    accuracy: float  # pooled over all counted pairs: the paper's "Preference Acc."
    per_prompt_accuracy: float  # mean over prompts with at least one counted pair
    hits: int
    pairs: int
    prompts: int  # prompts with at least one counted pair
    human_ties: int
    reward_ties: int
    nan_pairs: int
    ci_low: Optional[float]  # None when no bootstrap was run
    ci_high: Optional[float]
    confidence: float
    n_bootstrap: int

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def bootstrap_interval(
    hits: Sequence[int],
    pairs: Sequence[int],
    *,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: Optional[int] = 0,
) -> tuple:
    """Percentile interval of the pooled accuracy, resampling prompts with replacement.

    ``n_bootstrap <= 0`` means no interval: ``(None, None)``.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    hits_arr = np.asarray(hits, dtype=np.float64)
    pairs_arr = np.asarray(pairs, dtype=np.float64)
    if n_bootstrap <= 0:
        return None, None
    if pairs_arr.size == 0 or pairs_arr.sum() == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    index = rng.integers(0, pairs_arr.size, size=(n_bootstrap, pairs_arr.size))
    samples = hits_arr[index].sum(axis=1) / pairs_arr[index].sum(axis=1)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(samples, [alpha, 1.0 - alpha])
    return float(low), float(high)


def summarize(
    counts: Sequence[PairCounts],
    *,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: Optional[int] = 0,
) -> AccuracyResult:
    """Pool per-prompt counts into an :class:`AccuracyResult`."""
    counted = [c for c in counts if c.pairs > 0]
    hits = sum(c.hits for c in counted)
    pairs = sum(c.pairs for c in counted)
    low, high = bootstrap_interval(
        [c.hits for c in counted],
        [c.pairs for c in counted],
        n_bootstrap=n_bootstrap,
        confidence=confidence,
        seed=seed,
    )
    return AccuracyResult(
        accuracy=hits / pairs if pairs else math.nan,
        per_prompt_accuracy=(
            float(np.mean([c.hits / c.pairs for c in counted])) if counted else math.nan
        ),
        hits=hits,
        pairs=pairs,
        prompts=len(counted),
        human_ties=sum(c.human_ties for c in counts),
        reward_ties=sum(c.reward_ties for c in counts),
        nan_pairs=sum(c.nan_pairs for c in counts),
        ci_low=low,
        ci_high=high,
        confidence=confidence,
        n_bootstrap=n_bootstrap,
    )


def preference_accuracy(
    rankings: Sequence[Sequence[float]],
    rewards: Sequence[Sequence[float]],
    *,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: Optional[int] = 0,
) -> AccuracyResult:
    """Preference accuracy of per-prompt ``rewards`` against human ``rankings`` (1 = best)."""
    if len(rankings) != len(rewards):
        raise ValueError(f"got {len(rankings)} rankings but {len(rewards)} reward lists")
    counts = []
    for index, (ranking, reward) in enumerate(zip(rankings, rewards)):
        try:
            counts.append(count_pairs(ranking, reward))
        except ValueError as error:
            raise ValueError(f"prompt {index}: {error}") from None
    return summarize(counts, n_bootstrap=n_bootstrap, confidence=confidence, seed=seed)


@dataclass
class PreferenceAccuracy:
    """Accumulating form of :func:`preference_accuracy`: ``update`` per prompt, then ``compute``."""

    n_bootstrap: int = 1000
    confidence: float = 0.95
    seed: Optional[int] = 0
    counts: List[PairCounts] = field(default_factory=list)

    def update(self, ranking: Sequence[float], rewards: Sequence[float]) -> PairCounts:
        counts = count_pairs(ranking, rewards)
        self.counts.append(counts)
        return counts

    def compute(self) -> AccuracyResult:
        return summarize(
            self.counts, n_bootstrap=self.n_bootstrap, confidence=self.confidence, seed=self.seed
        )

    def reset(self) -> None:
        self.counts.clear()


def average_ranks(values: Sequence[float], descending: bool = False) -> List[float]:
    """1-based ranks; tied values share the mean of their ranks."""
    order = sorted(range(len(values)), key=lambda i: -values[i] if descending else values[i])
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for position in range(start, end + 1):
            ranks[order[position]] = (start + end) / 2.0 + 1.0
        start = end + 1
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (Pearson correlation of average ranks); NaN if undefined."""
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} values but y has {len(y)}")
    if len(x) < 2:
        return math.nan
    rx, ry = np.asarray(average_ranks(x)), np.asarray(average_ranks(y))
    dx, dy = rx - rx.mean(), ry - ry.mean()
    denominator = math.sqrt(float((dx * dx).sum() * (dy * dy).sum()))
    return float((dx * dy).sum() / denominator) if denominator else math.nan
