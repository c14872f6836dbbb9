"""``imagereward eval``: preference accuracy of reward models on a ``test.json`` test set."""

from __future__ import annotations

import argparse
import gc
import os
from typing import Any, Dict, List

from ..registry import PAPER_SCORERS
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
)

EPILOG = f"""\
examples:
  imagereward eval --download                      # the paper's test set, all four models
  imagereward eval --models ImageReward-v1.0 --checkpoint ImageReward.pt
  imagereward eval --data my.json --images my_images/ --models CLIP,BLIP --output-dir out/
  imagereward eval --models CLIP,Aesthetic --checkpoint CLIP=ViT-L-14.pt --checkpoint Aesthetic=sac.pth
  imagereward eval --reuse --output-dir out/       # recompute the table from test_<model>.json

outputs (in --output-dir):
  test_<model>.json  predictions in the original format: [{{id, prompt, ranking, rewards}}]
  accuracy.json      every number of the table, per model
  report.md          the table as markdown, with the plot
  report.png         accuracy per model and the reward distribution of each model

The accuracy is the original's: pooled over all pairs of images with different
human ranks; a hit when the better-ranked image gets a strictly larger reward
(equal rewards are misses); human ties and pairs with a NaN reward are skipped.

{EXIT_CODES_HELP}"""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="preference accuracy on test.json, as the paper's Table 3",
        description="Score a test.json-format test set with reward models, write "
        "test_<model>.json per model and print the preference accuracy table.",
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    data = parser.add_argument_group("data")
    data.add_argument(
        "--data", metavar="FILE", default=os.path.join("data", "test.json"),
        help="test annotations: a list of {id, prompt, generations, ranking} (default: %(default)s)",
    )
    data.add_argument(
        "--images", metavar="DIR", default=os.path.join("data", "test_images"),
        help="folder the 'generations' paths are relative to (default: %(default)s)",
    )
    data.add_argument(
        "--download", action="store_true",
        help="fetch what is missing: the original test.json (pinned, checksummed) to --data "
        "and test_images.zip from the hub repo THUDM/ImageReward, unpacked into --images",
    )
    run = parser.add_argument_group("evaluation")
    run.add_argument(
        "--models", type=model_list, default=",".join(PAPER_SCORERS), metavar="LIST",
        help=f"comma-separated scorers ({model_names_help()}), or 'all' for every one "
        "(default: the paper's four, %(default)s)",
    )
    run.add_argument(
        "--output-dir", metavar="DIR", default="results",
        help="where test_<model>.json and the report go (default: %(default)s)",
    )
    run.add_argument(
        "--reuse", action="store_true",
        help="recompute the table from the test_<model>.json files already in --output-dir; "
        "no model is loaded, and missing files are listed (exit 3)",
    )
    run.add_argument(
        "--bootstrap", type=int, default=1000, metavar="N",
        help="bootstrap resamples of prompts for the confidence interval; 0 to skip "
        "(default: %(default)s)",
    )
    run.add_argument(
        "--confidence", type=float, default=0.95, help="confidence level (default: %(default)s)"
    )
    run.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: %(default)s)")
    run.add_argument("--no-plot", action="store_true", help="skip report.png (no matplotlib needed)")
    add_model_options(parser, "local ImageReward weights (ImageReward.pt, .safetensors or a "
                      "save_pretrained folder) for ImageReward-v1.0")
    add_general_options(parser)
    parser.set_defaults(func=run_eval, parser=parser)


def _ensure_data(args: argparse.Namespace) -> None:
    from ..eval.data import fetch_test_json

    if os.path.isfile(args.data):
        return
    if not args.download:
        raise CliError(
            f"test data not found: {args.data} (pass --download to fetch the original test set)",
            EXIT_INPUT,
        )
    fetch_test_json(args.data)


def _ensure_images(args: argparse.Namespace, items: List[Any]) -> None:
    from ..eval.data import fetch_test_images, missing_images

    absent = not os.path.isdir(args.images) or not os.listdir(args.images)
    if absent and args.download:
        fetch_test_images(args.images, items[0].generations[0])
    if absent and not os.path.isdir(args.images):
        raise CliError(
            f"image folder not found: {args.images} (pass --download to fetch the test images)",
            EXIT_INPUT,
        )
    missing = missing_images(items, args.images)
    if missing:
        total = sum(len(item.generations) for item in items)
        raise CliError(
            f"{len(missing)} of {total} test images missing under {args.images}, e.g. {missing[0]}",
            EXIT_INPUT,
        )


def run_eval(args: argparse.Namespace) -> int:
    from ..eval import preference, report
    from ..eval.data import TEST_JSON_SHA256, DataError, load_test_json, write_json
    from ..hub import sha256_file

    apply_offline(args)
    files = model_files(args, args.models, args.parser, default_model=IMAGEREWARD)
    specs = {m: model_spec(args, m, files[m]) for m in args.models}
    if not 0.0 < args.confidence < 1.0:
        args.parser.error("--confidence must be between 0 and 1")
    _ensure_data(args)
    try:
        items = load_test_json(args.data)
    except DataError as error:
        raise CliError(str(error), EXIT_INPUT) from None
    if not items:
        raise CliError(f"{args.data} holds no prompts", EXIT_INPUT)
    paths = {m: preference.predictions_path(args.output_dir, m) for m in args.models}
    to_score = [] if args.reuse else list(args.models)
    missing = [paths[m] for m in args.models if args.reuse and not os.path.isfile(paths[m])]
    if missing:
        raise CliError(
            f"--reuse needs the predictions of every model in --models; missing: {', '.join(missing)} "
            "(run without --reuse to score those models, or leave them out of --models)",
            EXIT_INPUT,
        )
    if not args.no_plot and not report.can_plot():  # the PNG is optional: the rest comes out
        note(args, report.PLOT_SKIPPED_NOTE)
        args.no_plot = True
    if to_score:
        _ensure_images(args, items)
        locate_files([specs[m] for m in to_score])

    rewards: Dict[str, List[List[float]]] = {}
    for model in args.models:
        if model in to_score:
            try:
                rewards[model] = _score(specs[model], items, args)
            except CliError as error:
                done = [m for m in to_score if m in rewards]
                if not done:
                    raise
                saved = ", ".join(paths[m] for m in done)
                raise CliError(f"{error} (saved: {saved}; add --reuse to keep them)", error.code) from error
            preference.write_predictions(paths[model], preference.prediction_records(items, rewards[model]))
        else:
            try:
                rewards[model] = preference.read_predictions(paths[model], items)
            except DataError as error:
                raise CliError(str(error), EXIT_INPUT) from None

    bootstrap = dict(n_bootstrap=max(0, args.bootstrap), confidence=args.confidence, seed=args.seed)
    results = {m: preference.evaluate_rewards(items, rewards[m], **bootstrap) for m in args.models}
    official = sha256_file(args.data) == TEST_JSON_SHA256
    written = [paths[m] for m in to_score]
    summary = {"data": args.data, "images": args.images, "official_test_set": official,
               "checkpoints": {m: specs[m].files["weights"] for m in args.models if "weights" in specs[m].files},
               "models": report.results_dict(results)}
    shown = {specs[m].label: results[m] for m in args.models}  # tables and plot
    written.append(write_json(os.path.join(args.output_dir, "accuracy.json"), summary, indent=2))
    plot = None
    if not args.no_plot:
        flat = {specs[m].label: [v for r in rewards[m] for v in r] for m in args.models}
        plot = report.plot_accuracy(os.path.join(args.output_dir, "report.png"), shown, flat, paper=official)
        written.append(plot)
    markdown = report.accuracy_report(shown, args.data, official, plot and os.path.basename(plot))
    written.append(report.write_text(os.path.join(args.output_dir, "report.md"), markdown))
    print(report.accuracy_table(shown, paper=official))
    note(args, f"imagereward: wrote {', '.join(written)}")
    return 0


def _score(spec: Any, items: List[Any], args: argparse.Namespace) -> List[List[float]]:
    from ..eval.preference import score_items
    from ..errors import InputError

    scorer = load_scorer(spec)
    try:
        return score_items(
            scorer, items, args.images, chunk_size=4 * args.batch_size, desc=spec.name,
            progress=not args.no_progress,
        )
    except InputError as error:
        raise CliError(str(error), EXIT_INPUT) from error
    finally:
        del scorer
        gc.collect()
