"""``imagereward refl`` and ``python -m imagereward.refl``: options from a file and flags.

Several GPUs: ``accelerate launch -m imagereward.refl ...`` or ``torchrun --nproc-per-node N
-m imagereward.refl ...``.
"""

from __future__ import annotations

import argparse
import logging
import os
from typing import List, Optional

from ..options import add_arguments, options_from_args
from .config import ReFLConfig

DESCRIPTION = (
    "Fine-tune a diffusers text-to-image pipeline with Reward Feedback Learning (ReFL): the reward "
    "of images decoded from one gradient-carrying denoising step, regularised by the pretraining "
    "(denoising) loss on your (image, caption) data. Run under `accelerate launch` or `torchrun` "
    "for several GPUs."
)


def config_from_args(args: argparse.Namespace) -> ReFLConfig:
    return options_from_args(args, ReFLConfig)


def run(args: argparse.Namespace) -> int:
    """Train with the parsed options. Invalid options end with exit status 2, a missing or
    malformed input file (prompts, pairs) with 3."""
    from ..cli.common import EXIT_INPUT, EXIT_USAGE, CliError
    from ..errors import InputError

    try:
        config = config_from_args(args)
    except (ValueError, OSError) as error:
        raise CliError(str(error), EXIT_USAGE) from error
    rank = int(os.environ.get("RANK", "0") or 0)
    logging.basicConfig(format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("imagereward.refl").setLevel(logging.INFO if rank == 0 else logging.WARNING)
    from .trainer import train_refl

    try:
        result = train_refl(config)
    except InputError as error:
        raise CliError(str(error), EXIT_INPUT) from error
    if rank == 0 and result.finished:
        print(result.output_dir)
    return 0


def register(subparsers: "argparse._SubParsersAction") -> argparse.ArgumentParser:
    parser = subparsers.add_parser("refl", help="fine-tune a diffusion model with the reward (ReFL)",
                                   description=DESCRIPTION)
    add_arguments(parser, ReFLConfig)
    parser.set_defaults(func=run)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    from ..cli import main as cli_main

    return cli_main(["refl", *(argv if argv is not None else __import__("sys").argv[1:])])
