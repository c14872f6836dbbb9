"""``imagereward reward-stats``: each model's score statistics over the user's own pairs.

The file it writes puts several rewards on one scale: the server (``serve --stats``)
and :class:`~imagereward.rl.MultiReward` (``stats=``) standardise each model's scores
with it before weighting them.
"""

from __future__ import annotations

import argparse
from typing import Dict, List

from .common import (
    EXIT_CODES_HELP,
    EXIT_INPUT,
    CliError,
    HelpFormatter,
    add_download_options,
    add_dtype_option,
    add_file_options,
    add_general_options,
    add_int8_option,
    add_threads_option,
    apply_offline,
    device_name,
    load_scorer,
    locate_files,
    model_files,
    model_list,
    model_spec,
    positive_int,
)

DESCRIPTION = """\
Score a JSONL file of {"prompt", "image"} records (the batch job's input) with each model
and write each model's mean, standard deviation and count to a small JSON file. Use pairs
like those the reward will judge (your prompts, your generator's images): z-scores are
relative to them. Records whose image cannot be read are skipped and counted. A model that
the reward will run in int8 (serve --int8) should be measured in int8 too: --int8 with the
same calibration file.

examples:
  imagereward reward-stats pairs.jsonl --models ImageReward-v1.0,PickScore,HPSv2.1 --output stats.json
  imagereward serve --models PickScore,HPSv2.1 --stats stats.json --normalize zscore"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "reward-stats", help="each model's score mean and std over your pairs, for z-scores",
        description=DESCRIPTION, epilog=EXIT_CODES_HELP, formatter_class=HelpFormatter,
    )
    parser.add_argument("input", metavar="PAIRS", help="JSONL file of {\"prompt\", \"image\"} records")
    parser.add_argument("--models", type=model_list, required=True, metavar="A,B,...",
                        help="registered scorers, comma-separated (all: every one)")
    parser.add_argument("--output", "-o", required=True, metavar="FILE", help="the statistics file to write")
    parser.add_argument("--batch-size", type=positive_int, default=32, metavar="N",
                        help="pairs per forward pass (default: %(default)s)")
    parser.add_argument("--device", type=device_name, help="cpu, cuda, ... (default: CUDA when available)")
    add_file_options(parser, "local files instead of downloading")
    add_dtype_option(parser)
    add_int8_option(parser)
    add_threads_option(parser)
    add_download_options(parser)
    add_general_options(parser)
    parser.set_defaults(func=run, parser=parser)


def run(args: argparse.Namespace) -> int:
    from ..errors import InputError
    from ..items import score_items
    from ..reward_stats import RewardStats
    from ..runners.batch import read_records

    apply_offline(args)
    records = read_records(args.input)
    if len(records) < 2:
        raise CliError(f"{args.input}: statistics need at least 2 records, got {len(records)}", EXIT_INPUT)
    files = model_files(args, args.models, args.parser)
    specs = [model_spec(args, name, files[name]) for name in args.models]
    locate_files(specs)
    prompts = [record["prompt"] for record in records]
    images = [record["image"] for record in records]
    scores: Dict[str, List[float]] = {}
    for spec in specs:
        scorer = load_scorer(spec)
        results = score_items(scorer, prompts, images)
        bad = [value for value in results if isinstance(value, InputError)]
        scores[spec.name] = [value for value in results if not isinstance(value, InputError)]
        note = f", {len(bad)} skipped (first: {bad[0]})" if bad else ""
        print(f"imagereward: {spec.label}: {len(scores[spec.name])} pairs scored{note}", flush=True)
        del scorer
    try:
        stats = RewardStats.from_scores(scores)
    except InputError as error:
        raise CliError(f"{args.input}: {error}", EXIT_INPUT) from None
    stats.save(args.output)
    for name, entry in stats.models.items():
        print(f"{name}\tmean {entry.mean:.6g}\tstd {entry.std:.6g}\tcount {entry.count}")
    return 0
