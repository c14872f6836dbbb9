"""``imagereward benchmark``: the paper's Table 1 over folders of generations."""

from __future__ import annotations

import argparse
import gc
import os
from typing import Any, Dict, List

from ..eval.data import PAPER_MODELS
from .common import (
    note,
    EXIT_CODES_HELP,
    EXIT_INPUT,
    IMAGEREWARD,
    CliError,
    HelpFormatter,
    add_general_options,
    add_model_options,
    apply_offline,
    load_scorer,
    locate_files,
    model_files,
    model_spec,
    model_list,
    model_names_help,
    split_list,
)

PAPER_ORDER = ",".join(PAPER_MODELS)

EPILOG = f"""\
layout:
  --images DIR holds one folder per text-to-image model, each with the images
  <prompt_id>_<k>.png (k = 0, 1, ...) for every prompt of --prompts.

examples:
  imagereward benchmark                         # the paper's six models, ImageReward and CLIP
  imagereward benchmark --models all --metrics ImageReward-v1.0 --images gens/
  imagereward benchmark --models a,b,c --human-ranking b,a,c --output-dir out/

outputs (in --output-dir, as the original):
  <metric>/<metric>-benchmark-<model>-result.json  [{{id, prompt, mean_score, rewards}}]
  <metric>-benchmark-results.json                  {{model: score}}
  benchmark.json, report.md, report.png             scores, ranks, Spearman rho, plot

A model's score is the mean over prompts of the per-prompt mean reward.

{EXIT_CODES_HELP}"""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "benchmark",
        help="rank text-to-image models by mean reward (Table 1)",
        description="Score folders of generations per text-to-image model with each metric, "
        "rank the models and compare with a human ranking (Spearman's rho).",
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    data = parser.add_argument_group("data")
    data.add_argument(
        "--prompts", metavar="FILE", default=os.path.join("benchmark", "benchmark-prompts.json"),
        help="list of {id, prompt} (default: %(default)s)",
    )
    data.add_argument(
        "--images", metavar="DIR", default=os.path.join("benchmark", "generations"),
        help="one sub-folder of images per generation model (default: %(default)s)",
    )
    data.add_argument(
        "--models", metavar="LIST", default="default",
        help="generation models (sub-folders): comma list, 'default' (the paper's six: "
        f"{PAPER_ORDER}) or 'all' sub-folders (default: %(default)s)",
    )
    run = parser.add_argument_group("benchmark")
    run.add_argument(
        "--metrics", type=model_list, default="ImageReward-v1.0,CLIP", metavar="LIST",
        help=f"reward models to score with ({model_names_help()}), or 'all' "
        "(default: %(default)s)",
    )
    run.add_argument(
        "--human-ranking", metavar="LIST", default=PAPER_ORDER,
        help="generation models from most to least preferred by people, for Spearman's rho "
        "(default: the paper's Table 1, %(default)s)",
    )
    run.add_argument(
        "--output-dir", metavar="DIR", default=os.path.join("benchmark", "results"),
        help="where results go (default: %(default)s)",
    )
    run.add_argument(
        "--reuse", action="store_true",
        help="use existing per-model result files in --output-dir instead of scoring again",
    )
    run.add_argument("--no-plot", action="store_true", help="skip report.png (no matplotlib needed)")
    add_model_options(parser, "local ImageReward weights for the ImageReward-v1.0 metric")
    add_general_options(parser)
    parser.set_defaults(func=run_benchmark, parser=parser)


def _models(args: argparse.Namespace) -> List[str]:
    from ..eval.benchmark import list_models

    if not os.path.isdir(args.images):
        raise CliError(f"generations folder not found: {args.images}", EXIT_INPUT)
    choice = args.models.strip().lower()
    if choice == "all":  # human ranking order first, then the rest by name
        human = split_list(args.human_ranking)
        models = sorted(
            list_models(args.images),
            key=lambda m: (human.index(m) if m in human else len(human), m),
        )
    else:
        models = split_list(PAPER_ORDER if choice == "default" else args.models)
    if not models:
        raise CliError(f"no model folders in {args.images}", EXIT_INPUT)
    missing = [m for m in models if not os.path.isdir(os.path.join(args.images, m))]
    if missing:
        raise CliError(
            f"no folder for model {missing[0]!r} in {args.images} (found: "
            f"{', '.join(list_models(args.images)) or 'none'})",
            EXIT_INPUT,
        )
    return models


def run_benchmark(args: argparse.Namespace) -> int:
    from ..eval import benchmark as bench
    from ..eval import report
    from ..eval.data import DataError, write_json

    apply_offline(args)
    files = model_files(args, args.metrics, args.parser, default_model=IMAGEREWARD)
    specs = {m: model_spec(args, m, files[m]) for m in args.metrics}
    if not os.path.isfile(args.prompts):
        raise CliError(f"prompts file not found: {args.prompts}", EXIT_INPUT)
    try:
        prompts = bench.load_prompts(args.prompts)
        models = _models(args)
        human = split_list(args.human_ranking)
        if not args.no_plot and not report.can_plot():  # the PNG is optional: the rest comes out
            note(args, report.PLOT_SKIPPED_NOTE)
            args.no_plot = True
        if args.reuse:  # every result file must be there: --reuse never loads a model
            missing = [bench.result_path(args.output_dir, metric, model) for metric in args.metrics
                       for model in models if not os.path.isfile(bench.result_path(args.output_dir, metric, model))]
            if missing:
                raise CliError(
                    f"--reuse needs the results of every metric for every model; missing: {', '.join(missing)} "
                    "(run without --reuse to score them)", EXIT_INPUT)
        else:
            locate_files(list(specs.values()))
        per_prompt: Dict[str, Dict[str, List[float]]] = {}
        for metric in args.metrics:
            per_prompt[metric] = _run_metric(specs[metric], models, prompts, args)
    except DataError as error:
        raise CliError(str(error), EXIT_INPUT) from None

    scores = {m: {g: sum(v) / len(v) for g, v in per_prompt[m].items()} for m in args.metrics}
    ranks = {m: bench.metric_ranks(scores[m]) for m in args.metrics}
    rho = {m: bench.rank_correlation(scores[m], human) for m in args.metrics}
    written = [
        write_json(bench.summary_path(args.output_dir, m), scores[m]) for m in args.metrics
    ]
    summary = {"prompts": args.prompts, "images": args.images, "human_ranking": human,
               "scores": scores, "ranks": ranks, "spearman": rho}
    written.append(write_json(os.path.join(args.output_dir, "benchmark.json"), summary))
    labels = {m: specs[m].label for m in args.metrics}  # tables name custom files
    table = report.benchmark_table(
        {labels[m]: scores[m] for m in args.metrics}, {labels[m]: ranks[m] for m in args.metrics}, models,
        human, {labels[m]: rho[m] for m in args.metrics},
    )
    plot = None
    if not args.no_plot:
        plot = report.plot_benchmark(os.path.join(args.output_dir, "report.png"),
                                     {labels[m]: per_prompt[m] for m in args.metrics})
        written.append(plot)
    markdown = report.benchmark_report(table, args.prompts, args.images, plot and os.path.basename(plot))
    written.append(report.write_text(os.path.join(args.output_dir, "report.md"), markdown))
    print(table)
    note(args, f"imagereward: wrote {', '.join(written)}")
    return 0


def _run_metric(spec: Any, models: List[str], prompts: List[Any], args: argparse.Namespace) -> Dict[str, List[float]]:
    """Per-prompt mean rewards of each generation model under one metric."""
    from ..eval import benchmark as bench
    from ..eval.data import write_json
    from ..errors import InputError

    metric = spec.name
    scorer = None
    per_prompt: Dict[str, List[float]] = {}
    try:
        for model in models:
            path = bench.result_path(args.output_dir, metric, model)
            if args.reuse:
                records = bench.read_records(path)
            else:
                generations = bench.find_generations(os.path.join(args.images, model), prompts)
                if scorer is None:
                    scorer = load_scorer(spec)
                try:
                    records = bench.score_model(
                        scorer, prompts, generations, desc=f"{metric} / {model}",
                        progress=not args.no_progress,
                    )
                except InputError as error:
                    raise CliError(str(error), EXIT_INPUT) from error
                write_json(path, records)
            per_prompt[model] = [float(r["mean_score"]) for r in records]
    finally:
        del scorer
        gc.collect()
    return per_prompt
