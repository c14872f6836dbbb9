"""``imagereward train`` and ``python -m imagereward.train``: options from a file and flags."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from typing import List, Optional

from .config import TrainConfig, load_config

DESCRIPTION = (
    "Train an ImageReward model on ranked generations (ImageReward's recipe by default). "
    "Run the same command under torchrun for data-parallel training."
)


def _help(text: str, default: object) -> str:
    """The option's help with its default said once: not when the text already explains it."""
    if "default" in text or default == "":
        return text
    return f"{text} (default: {default!r})"


def add_arguments(parser: argparse.ArgumentParser, config_class: type = TrainConfig) -> None:
    """``--config FILE`` and one flag per option of ``config_class``; given flags win over the file."""
    parser.add_argument("--config", metavar="FILE", help="options as JSON or TOML")
    parser.add_argument(
        "-v", "--verbose", action="store_true",
        help="show the full traceback on errors (not a training option)",
    )
    for option in dataclasses.fields(config_class):
        flag = "--" + option.name.replace("_", "-")
        default, help_text = option.default, option.metadata["help"]
        common = {"dest": option.name, "default": argparse.SUPPRESS, "help": _help(help_text, default)}
        if isinstance(default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **common)
        elif isinstance(default, tuple):
            parser.add_argument(flag, nargs=len(default), type=type(default[0]), metavar="X", **common)
        else:
            parser.add_argument(flag, type=type(default), choices=option.metadata["choices"], **common)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    names = [f.name for f in dataclasses.fields(TrainConfig)]
    overrides = {name: getattr(args, name) for name in names if hasattr(args, name)}
    return load_config(getattr(args, "config", None), overrides)


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
    add_arguments(parser)
    parser.set_defaults(func=run)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m imagereward.train", description=DESCRIPTION)
    add_arguments(parser)
    return run(parser.parse_args(argv))
