"""Scoring the preference test set and the original ``test_<model>.json`` prediction files.

A prediction file is a list of ``{"id", "prompt", "ranking", "rewards"}`` in the
order of ``test.json``, where ``ranking`` holds the predicted 1-based ranks
(1 = highest reward) and ``rewards`` the scores, both in image order.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Sequence

from .data import DataError, TestItem, image_paths, read_json_list, write_json
from .metrics import AccuracyResult, preference_accuracy


def predictions_path(output_dir: str, model: str) -> str:
    return os.path.join(output_dir, f"test_{model}.json")


def score_items(
    scorer: Any,
    items: Sequence[TestItem],
    images_dir: str,
    *,
    chunk_size: int = 64,
    desc: str = "scoring",
    progress: bool = True,
) -> List[List[float]]:
    """Rewards per item, in image order; prompts are grouped into chunks for ``score_batch``."""
    from ..progress import progress as progress_of

    results: List[List[float]] = []
    total = sum(len(item.generations) for item in items)
    with progress_of(total, "image", desc, progress) as bar:
        start = 0
        while start < len(items):
            stop, count = start, 0
            while stop < len(items) and (count == 0 or count + len(items[stop].generations) <= chunk_size):
                count += len(items[stop].generations)
                stop += 1
            chunk = items[start:stop]
            prompts = [item.prompt for item in chunk for _ in item.generations]
            paths = [path for item in chunk for path in image_paths(item, images_dir)]
            rewards = scorer.score_batch(prompts, paths)
            offset = 0
            for item in chunk:
                results.append([float(r) for r in rewards[offset : offset + len(item.generations)]])
                offset += len(item.generations)
            bar.update(count)
            start = stop
    return results


def prediction_records(items: Sequence[TestItem], rewards: Sequence[Sequence[float]]) -> List[Dict[str, Any]]:
    from ..scoring.base import ranks_from_rewards

    return [
        {"id": item.id, "prompt": item.prompt, "ranking": ranks_from_rewards(list(r)), "rewards": list(r)}
        for item, r in zip(items, rewards)
    ]


def write_predictions(path: str, records: Sequence[Dict[str, Any]]) -> str:
    """Write a prediction file atomically (indent 4, non-ASCII kept, as the original)."""
    return write_json(path, list(records), indent=4)


def read_predictions(path: str, items: Sequence[TestItem]) -> List[List[float]]:
    """Rewards from a prediction file, matched to ``items`` by id and checked for size."""
    raw = read_json_list(path, "predictions")
    by_id: Dict[str, Any] = {}
    for index, entry in enumerate(raw):
        if not isinstance(entry, dict) or not isinstance(entry.get("rewards"), list):
            raise DataError(f"{path} item {index}: expected an object with a 'rewards' list")
        by_id[str(entry.get("id", index))] = entry["rewards"]
    rewards: List[List[float]] = []
    for item in items:
        if item.id not in by_id:
            raise DataError(f"{path} has no prediction for test item {item.id!r}")
        values = by_id[item.id]
        if len(values) != len(item.generations):
            raise DataError(
                f"{path} item {item.id!r}: {len(values)} rewards for {len(item.generations)} images"
            )
        rewards.append([float("nan") if v is None else float(v) for v in values])
    return rewards


def evaluate_rewards(
    items: Sequence[TestItem], rewards: Sequence[Sequence[float]], **bootstrap: Any
) -> AccuracyResult:
    return preference_accuracy([item.ranking for item in items], rewards, **bootstrap)
