"""The preference-accuracy metric on hand-made cases, the real test.json, and Spearman's rho."""

import json
import math
import random

import pytest

from helpers import TEST_JSON
from imagereward.eval.metrics import (
    PreferenceAccuracy,
    average_ranks,
    bootstrap_interval,
    count_pairs,
    preference_accuracy,
    spearman,
)


def reference_accuracy(rankings, rewards):
    """A literal transcription of the rule: pooled hits / pairs over distinct-rank pairs."""
    hits = pairs = 0
    for ranking, reward in zip(rankings, rewards):
        for i in range(len(ranking)):
            for j in range(len(ranking)):
                if ranking[i] < ranking[j] and not (math.isnan(reward[i]) or math.isnan(reward[j])):
                    pairs += 1
                    hits += reward[i] > reward[j]
    return hits, pairs


def test_perfect_and_reversed():
    assert count_pairs([1, 2, 3], [3.0, 2.0, 1.0]).hits == 3
    reversed_ = count_pairs([1, 2, 3], [1.0, 2.0, 3.0])
    assert (reversed_.hits, reversed_.pairs) == (0, 3)


def test_human_ties_are_skipped():
    counts = count_pairs([1, 1, 2], [0.0, 5.0, 1.0])
    assert (counts.pairs, counts.human_ties) == (2, 1)
    assert counts.hits == 1  # image 1 (rank 1) beats image 2; image 0 does not


def test_equal_rewards_are_misses():
    counts = count_pairs([1, 2, 3], [0.5, 0.5, 0.1])
    assert (counts.hits, counts.pairs, counts.reward_ties) == (2, 3, 1)


def test_non_contiguous_ranks():
    # test.json's first item: ranks [1, 2, 5, 3] -> order 0, 1, 3, 2
    counts = count_pairs([1, 2, 5, 3], [4.0, 3.0, 1.0, 2.0])
    assert (counts.hits, counts.pairs) == (6, 6)
    counts = count_pairs([1, 2, 5, 3], [4.0, 3.0, 2.0, 1.0])
    assert (counts.hits, counts.pairs) == (5, 6)


def test_nan_rewards_make_pairs_uncounted():
    counts = count_pairs([1, 2, 3], [float("nan"), 1.0, 0.0])
    assert (counts.hits, counts.pairs, counts.nan_pairs) == (1, 1, 2)
    result = preference_accuracy([[1, 2]], [[float("nan"), float("nan")]])
    assert result.pairs == 0 and math.isnan(result.accuracy) and result.nan_pairs == 1


def test_pooled_versus_per_prompt():
    result = preference_accuracy([[1, 2], [1, 2, 3]], [[1.0, 0.0], [0.0, 1.0, 2.0]], n_bootstrap=0)
    assert (result.hits, result.pairs, result.prompts) == (1, 4, 2)
    assert result.accuracy == pytest.approx(0.25)
    assert result.per_prompt_accuracy == pytest.approx(0.5)


def test_prompts_with_only_ties_do_not_enter_the_average():
    result = preference_accuracy([[1, 1], [1, 2]], [[0.0, 1.0], [1.0, 0.0]], n_bootstrap=0)
    assert (result.prompts, result.per_prompt_accuracy, result.human_ties) == (1, 1.0, 1)


def test_matches_literal_rule_on_random_data_with_ties():
    rng = random.Random(3)
    rankings, rewards = [], []
    for _ in range(200):
        n = rng.randint(2, 9)
        rankings.append([rng.randint(1, 6) for _ in range(n)])
        rewards.append([rng.choice([0.0, 0.5, 1.0, float("nan"), rng.random()]) for _ in range(n)])
    result = preference_accuracy(rankings, rewards, n_bootstrap=0)
    assert (result.hits, result.pairs) == reference_accuracy(rankings, rewards)


def test_real_test_json_counts_6399_pairs():
    items = json.loads(TEST_JSON.read_text(encoding="utf-8"))
    assert len(items) == 466
    rankings = [item["ranking"] for item in items]
    rewards = [[-float(rank) for rank in ranking] for ranking in rankings]  # agrees with humans
    result = preference_accuracy(rankings, rewards, n_bootstrap=0)
    assert result.pairs == 6399
    assert result.human_ties == 831
    assert result.accuracy == 1.0
    constant = preference_accuracy(rankings, [[0.0] * len(r) for r in rankings], n_bootstrap=0)
    assert (constant.pairs, constant.hits, constant.reward_ties) == (6399, 0, 6399)


def test_bootstrap_interval():
    hits, pairs = [3, 1, 4, 0, 5], [5, 2, 6, 3, 5]
    low, high = bootstrap_interval(hits, pairs, n_bootstrap=500, seed=1)
    assert low <= sum(hits) / sum(pairs) <= high
    assert (low, high) == bootstrap_interval(hits, pairs, n_bootstrap=500, seed=1)
    assert bootstrap_interval([2, 3], [2, 3], n_bootstrap=100) == (1.0, 1.0)
    with pytest.raises(ValueError):
        bootstrap_interval(hits, pairs, confidence=1.5)


def test_accumulator_matches_function():
    rankings = [[1, 2, 5, 3], [1, 1, 2]]
    rewards = [[0.1, 0.4, 0.2, 0.3], [0.0, 1.0, 0.5]]
    metric = PreferenceAccuracy(n_bootstrap=50)
    for ranking, reward in zip(rankings, rewards):
        metric.update(ranking, reward)
    assert metric.compute() == preference_accuracy(rankings, rewards, n_bootstrap=50)
    metric.reset()
    assert metric.compute().pairs == 0


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError, match="prompt 1"):
        preference_accuracy([[1, 2], [1, 2]], [[0.0, 1.0], [0.0]])
    with pytest.raises(ValueError):
        preference_accuracy([[1, 2]], [])


def test_spearman_on_the_papers_table_1():
    human = [1, 2, 3, 4, 5, 6]  # openjourney, sd2-1, dalle2, sd1-4, vd, cogview2
    image_reward = [0.2614, 0.2458, 0.2114, 0.1344, -0.2470, -1.2376]
    clip = [0.2726, 0.2683, 0.2684, 0.2763, 0.2606, 0.2044]
    assert spearman(human, [-s for s in image_reward]) == pytest.approx(1.0)
    assert spearman(human, [-s for s in clip]) == pytest.approx(0.6)


def test_average_ranks_and_degenerate_spearman():
    assert average_ranks([3.0, 1.0, 3.0, 2.0]) == [3.5, 1.0, 3.5, 2.0]
    assert average_ranks([3.0, 1.0, 2.0], descending=True) == [1.0, 3.0, 2.0]
    assert math.isnan(spearman([1.0], [2.0]))
    assert math.isnan(spearman([1.0, 1.0], [1.0, 2.0]))
