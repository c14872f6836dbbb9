"""Reports: markdown tables (no dependencies) and PNG plots (matplotlib, imported lazily)."""

from __future__ import annotations

import math
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence

from ..errors import ReportError
from ..registry import published_accuracies
from .metrics import AccuracyResult

# Preference accuracy (%) on the 466-prompt test set, Table 3 of the paper.
PAPER_ACCURACY = published_accuracies()


def _pct(value: float, digits: int = 2) -> str:
    return "–" if value is None or math.isnan(value) else f"{100.0 * value:.{digits}f}"


def _markdown(header: Sequence[str], rows: Sequence[Sequence[str]], align: str) -> str:
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows)]

    def line(cells: Sequence[str]) -> str:
        padded = [
            str(c).ljust(w) if a == "l" else str(c).rjust(w) for c, w, a in zip(cells, widths, align)
        ]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join(
        ("-" * (w + 1) + ":") if a == "r" else (":" + "-" * (w + 1)) for w, a in zip(widths, align)
    ) + "|"
    return "\n".join([line(header), rule, *(line(r) for r in rows)])


def accuracy_table(results: Mapping[str, AccuracyResult], paper: bool = False) -> str:
    """Markdown table of preference accuracy per model; ``paper`` adds the published numbers."""
    confidence = next(iter(results.values())).confidence if results else 0.95
    interval = has_interval(results)  # no column at all when no bootstrap was run
    header = ["Model", "Pref. acc. (%)"]
    header += [f"{round(100 * confidence)}% CI (%)"] if interval else []
    header += ["Per-prompt acc. (%)", "Pairs", "Prompts"]
    if paper:
        header.append("Paper (%)")
    rows = []
    for model, r in results.items():
        row = [model, _pct(r.accuracy)]
        if interval:
            row.append("–" if r.ci_low is None else f"{_pct(r.ci_low)}–{_pct(r.ci_high)}")
        row += [_pct(r.per_prompt_accuracy), str(r.pairs), str(r.prompts)]
        if paper:
            reference = PAPER_ACCURACY.get(model)
            row.append("–" if reference is None else f"{reference:.2f}")
        rows.append(row)
    return _markdown(header, rows, "l" + "r" * (len(header) - 1))


def has_interval(results: Mapping[str, AccuracyResult]) -> bool:
    """Whether any result carries a bootstrap confidence interval."""
    return any(r.ci_low is not None for r in results.values())


def benchmark_table(
    scores: Mapping[str, Mapping[str, float]],
    ranks: Mapping[str, Mapping[str, float]],
    models: Sequence[str],
    human_ranking: Sequence[str],
    correlations: Mapping[str, Optional[float]],
) -> str:
    """Markdown table: one row per generation model, ``score (rank)`` per metric, then rho."""
    metrics = list(scores)
    header = ["Model", "Human rank", *metrics]
    rows: List[List[str]] = []
    for model in models:
        human = str(human_ranking.index(model) + 1) if model in human_ranking else "–"
        cells = [f"{scores[m][model]:.4f} ({ranks[m][model]:g})" for m in metrics]
        rows.append([model, human, *cells])
    rows.append(
        ["Spearman ρ", "–", *("–" if correlations[m] is None else f"{correlations[m]:.2f}" for m in metrics)]
    )
    return _markdown(header, rows, "lr" + "r" * len(metrics))


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise ReportError(
            "the PNG report needs matplotlib: pip install 'imagereward[report]' (or pass --no-plot)"
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def can_plot() -> bool:
    """Whether matplotlib is installed (checked before a long run, without importing pyplot)."""
    import importlib.util

    try:
        return importlib.util.find_spec("matplotlib") is not None
    except ValueError:  # a module set to None in sys.modules
        return False


PLOT_SKIPPED_NOTE = (
    "imagereward: note: matplotlib is not installed, so report.png is skipped "
    "(pip install 'imagereward[report]' for it; --no-plot silences this)"
)


def plot_accuracy(
    path: str,
    results: Mapping[str, AccuracyResult],
    rewards: Mapping[str, Sequence[float]],
    paper: bool = False,
) -> str:
    """PNG: accuracy per model with its confidence interval, and each model's reward histogram."""
    plt = _pyplot()
    models = list(results)
    figure, axes = plt.subplots(1, 1 + len(models), figsize=(4.2 * (1 + len(models)), 3.6), squeeze=False)
    axis = axes[0][0]
    values = [100 * results[m].accuracy for m in models]
    errors = None
    if has_interval(results):
        errors = [
            [100 * (results[m].accuracy - results[m].ci_low) if results[m].ci_low is not None else 0.0
             for m in models],
            [100 * (results[m].ci_high - results[m].accuracy) if results[m].ci_high is not None else 0.0
             for m in models],
        ]
    positions = list(range(len(models)))
    axis.bar(positions, values, yerr=errors, capsize=4, color="tab:blue", label="this run")
    if paper:
        published = [(i, PAPER_ACCURACY[m]) for i, m in enumerate(models) if m in PAPER_ACCURACY]
        if published:
            axis.scatter(*zip(*published), marker="_", s=400, color="tab:red", zorder=3, label="paper")
    axis.axhline(50, color="grey", linewidth=0.8, linestyle="--")
    axis.set_ylim(0, 100)
    axis.set_xticks(positions)
    axis.set_xticklabels(models, rotation=20, ha="right")
    axis.set_ylabel("preference accuracy (%)")
    axis.set_title("Preference accuracy")
    axis.legend(loc="lower right", fontsize="small")
    for axis, model in zip(axes[0][1:], models):
        finite = [v for v in rewards[model] if not math.isnan(v)]
        axis.hist(finite, bins=40, color="tab:green")
        axis.set_title(f"{model} rewards (n={len(finite)})")
        axis.set_xlabel("reward")
    return _save(figure, path, plt)


def plot_benchmark(path: str, per_prompt: Mapping[str, Mapping[str, Sequence[float]]]) -> str:
    """PNG: per metric, the distribution of per-prompt mean rewards of each generation model."""
    plt = _pyplot()
    metrics = list(per_prompt)
    figure, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 4.0), squeeze=False)
    for axis, metric in zip(axes[0], metrics):
        models = list(per_prompt[metric])
        axis.boxplot([list(per_prompt[metric][m]) for m in models], showmeans=True)
        axis.set_xticks(range(1, len(models) + 1))
        axis.set_xticklabels(models, rotation=20, ha="right")
        axis.set_title(f"{metric}: per-prompt mean reward (▲ = model score)")
    return _save(figure, path, plt)


def _save(figure: Any, path: str, plt: Any) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def write_text(path: str, text: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text if text.endswith("\n") else text + "\n")
    return path


def accuracy_report(
    results: Mapping[str, AccuracyResult], data: str, paper: bool, plot: Optional[str] = None
) -> str:
    """The markdown report of an evaluation run."""
    lines = [
        "# Preference accuracy",
        "",
        f"Test set: `{data}`.",
        "",
        "Accuracy is pooled over all image pairs with different human ranks; a pair is a",
        "hit when the better-ranked image gets a strictly larger reward",
        "(equal rewards are misses, human ties and pairs with a NaN reward are not counted).",
        *(["The interval is a percentile bootstrap over prompts."] if has_interval(results) else []),
        "",
        accuracy_table(results, paper=paper),
    ]
    if plot:
        lines += ["", f"![accuracy and reward distributions]({plot})"]
    return "\n".join(lines)


def benchmark_report(table: str, prompts: str, images: str, plot: Optional[str] = None) -> str:
    lines = [
        "# Benchmark",
        "",
        f"Prompts: `{prompts}`; generations: `{images}`.",
        "",
        "Each score is the mean over prompts of the per-prompt mean reward; the rank is",
        "among the listed models (1 = best).",
        "Spearman ρ compares each metric's ranking with the human ranking.",
        "",
        table,
    ]
    if plot:
        lines += ["", f"![per-prompt mean rewards]({plot})"]
    return "\n".join(lines)


def results_dict(results: Mapping[str, AccuracyResult]) -> Dict[str, Dict[str, Any]]:
    return {model: result.to_dict() for model, result in results.items()}
