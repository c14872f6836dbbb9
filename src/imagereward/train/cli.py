"""``imagereward train`` and ``python -m imagereward.train``: options from a file and flags."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import List, Optional

from ..options import add_arguments, options_from_args
from .config import TrainConfig

DESCRIPTION = (
    "Train an ImageReward model on ranked generations (ImageReward's recipe by default). "
    "Run the same command under torchrun for data-parallel training."
)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return options_from_args(args, TrainConfig)


def run(args: argparse.Namespace) -> int:
    """Train with the parsed options; progress is printed by rank 0 only."""
    try:
        config = config_from_args(args)
        config.accumulation(int(os.environ.get("WORLD_SIZE", "1") or 1))  # a usage error, said now
    except (ValueError, OSError, ImportError) as error:
        print(f"imagereward train: error: {error}", file=sys.stderr)
        return 2
    rank = int(os.environ.get("RANK", "0") or 0)
    logging.basicConfig(format="%(asctime)s %(name)s: %(message)s")  # unless already set up
    logging.getLogger("imagereward.train").setLevel(logging.INFO if rank == 0 else logging.WARNING)
    from .trainer import train

    result = train(config)
    if rank == 0 and result.finished:
        print(os.path.join(result.output_dir, "best"))
    return 0


def register(subparsers: "argparse._SubParsersAction") -> argparse.ArgumentParser:
    """Add the ``train`` subcommand; it dispatches to :func:`run` through ``args.func``."""
    parser = subparsers.add_parser("train", help="train a reward model on ranked generations",
                                   description=DESCRIPTION)
    add_arguments(parser, TrainConfig)
    parser.set_defaults(func=run)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m imagereward.train", description=DESCRIPTION)
    add_arguments(parser, TrainConfig)
    return run(parser.parse_args(argv))
