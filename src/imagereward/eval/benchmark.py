"""The paper's Table 1: text-to-image models ranked by mean reward on benchmark prompts.

Generations live in ``<images>/<model>/<prompt_id>_<k>.<ext>``. A model's score
under a metric is the mean over prompts of the mean reward of that prompt's
images; the ranking of models by score is compared with a human ranking by
Spearman's rho.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

from .data import DataError, read_json_list
from .metrics import average_ranks, spearman

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
_NAME = re.compile(r"^(?P<id>.+)_(?P<k>\d+)$")


@dataclass(frozen=True)
class BenchmarkPrompt:
    id: str
    prompt: str


def load_prompts(path: str) -> List[BenchmarkPrompt]:
    """Read ``benchmark-prompts.json`` (a list of ``{"id", "prompt"}``)."""
    raw = read_json_list(path, "prompts")
    if not raw:
        raise DataError(f"{path}: expected a non-empty list of prompts")
    prompts = []
    for index, entry in enumerate(raw):
        if not isinstance(entry, dict) or not isinstance(entry.get("prompt"), str) or "id" not in entry:
            raise DataError(f"{path} item {index}: expected an object with 'id' and 'prompt'")
        prompts.append(BenchmarkPrompt(str(entry["id"]), entry["prompt"]))
    return prompts


def list_models(images_dir: str) -> List[str]:
    """Every sub-folder of ``images_dir``, sorted."""
    return sorted(
        name for name in os.listdir(images_dir) if os.path.isdir(os.path.join(images_dir, name))
    )


def find_generations(model_dir: str, prompts: Sequence[BenchmarkPrompt]) -> Dict[str, List[str]]:
    """Image paths per prompt id, ordered by ``k``; every prompt must have at least one."""
    found: Dict[str, List[tuple]] = {p.id: [] for p in prompts}
    for name in os.listdir(model_dir):
        stem, ext = os.path.splitext(name)
        match = _NAME.match(stem)
        if ext.lower() in IMAGE_EXTENSIONS and match and match.group("id") in found:
            found[match.group("id")].append((int(match.group("k")), os.path.join(model_dir, name)))
    empty = [pid for pid, files in found.items() if not files]
    if empty:
        raise DataError(
            f"{model_dir}: no images named <prompt_id>_<k>.png for {len(empty)} of "
            f"{len(prompts)} prompts (first: {empty[0]!r})"
        )
    return {pid: [path for _, path in sorted(files)] for pid, files in found.items()}


def score_model(
    scorer: Any,
    prompts: Sequence[BenchmarkPrompt],
    generations: Dict[str, List[str]],
    *,
    desc: str = "scoring",
    progress: bool = True,
) -> List[Dict[str, Any]]:
    """Per-prompt records ``{"id", "prompt", "mean_score", "rewards"}`` (the original's format)."""
    from ..progress import progress as progress_of

    records = []
    with progress_of(len(prompts), "prompt", desc, progress) as bar:
        for item in prompts:
            paths = generations[item.id]
            rewards = [float(r) for r in scorer.score_batch([item.prompt] * len(paths), paths)]
            records.append(
                {"id": item.id, "prompt": item.prompt, "mean_score": sum(rewards) / len(rewards), "rewards": rewards}
            )
            bar.update(1)
    return records


def result_path(output_dir: str, metric: str, model: str) -> str:
    return os.path.join(output_dir, metric, f"{metric}-benchmark-{model}-result.json")


def summary_path(output_dir: str, metric: str) -> str:
    return os.path.join(output_dir, f"{metric}-benchmark-results.json")


def read_records(path: str) -> List[Dict[str, Any]]:
    records = read_json_list(path, "benchmark results")
    if not all(isinstance(r, dict) and "mean_score" in r for r in records):
        raise DataError(f"{path}: expected a list of {{'id', 'prompt', 'mean_score', 'rewards'}}")
    return records


def metric_ranks(scores: Dict[str, float]) -> Dict[str, float]:
    """Rank of each model under a metric (1 = highest score; ties share the mean rank)."""
    names = list(scores)
    return dict(zip(names, average_ranks([scores[n] for n in names], descending=True)))


def rank_correlation(scores: Dict[str, float], human_ranking: Sequence[str]) -> Optional[float]:
    """Spearman's rho between a metric's scores and a human ranking (best first).

    Only models in both are compared; ``None`` when fewer than two are.
    """
    common = [m for m in human_ranking if m in scores]
    if len(common) < 2:
        return None
    human = [float(human_ranking.index(m)) for m in common]  # smaller is better
    metric = [-scores[m] for m in common]  # larger score is better
    return spearman(human, metric)
