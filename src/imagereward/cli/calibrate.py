"""``imagereward calibrate``: the int8 calibration of a model's weights, for ``--int8``."""

from __future__ import annotations

import argparse
import os
from typing import Any, List, Tuple

from .common import (
    EXIT_CODES_HELP,
    EXIT_INPUT,
    IMAGEREWARD,
    CliError,
    HelpFormatter,
    add_download_options,
    add_file_options,
    add_general_options,
    add_threads_option,
    apply_offline,
    load_scorer,
    missing_images,
    model_files,
    model_name,
    model_names_help,
    model_spec,
    note,
    positive_int,
)

EPILOG = f"""\
examples:
  imagereward calibrate --input pairs.jsonl --output imagereward-int8.json --dtype bf16
  imagereward calibrate --prompt "a red bicycle" images/*.png --output imagereward-int8.json
  imagereward score --dtype bf16 --int8 imagereward-int8.json --input pairs.jsonl --output scores.jsonl

Scores the pairs in float and records the range of every linear layer's input. Give
pairs like those you will score: a few hundred from the same data set is plenty
(--pairs takes that many, evenly spread over --input); a value scored later outside
a recorded range is clipped to it. The file is tied to these weights: loading it with
others is refused. int8 is approximate (rewards move more than in bf16) and runs on
the CPU; it is faster than bf16 on CPUs with AMX.

{EXIT_CODES_HELP}"""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "calibrate",
        help="calibrate a model for int8 scoring on the CPU (--int8)",
        description="Calibrate a model's weights for int8 scoring on the CPU: the file --int8 reads.",
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("images", nargs="*", metavar="IMAGE", help="image files, scored for each --prompt")
    parser.add_argument("--prompt", "-p", action="append", help="a prompt the images go with (repeatable)")
    parser.add_argument("--input", metavar="FILE", help="JSONL file of {\"prompt\", \"image\"} records")
    parser.add_argument("--image-root", metavar="DIR", default="",
                        help="folder that relative image paths in --input are taken from (default: current folder)")
    parser.add_argument("--pairs", type=positive_int, default=256, metavar="N",
                        help="at most this many pairs, evenly spread over the input (default: %(default)s)")
    parser.add_argument("--output", "-o", required=True, metavar="FILE", help="the calibration file to write")
    parser.add_argument("--model", "-m", type=model_name, default=IMAGEREWARD,
                        help=f"the scorer: {model_names_help()} (default: %(default)s)")
    model = parser.add_argument_group("model")
    add_file_options(model, "local weights instead of downloading (as for imagereward score)")
    model.add_argument("--vocab-file", metavar="PATH", help="BERT vocab.txt for ImageReward and BLIP")
    model.add_argument("--dtype", choices=("fp32", "bf16"), default="bf16",
                       help="precision of the encoders while calibrating: the one you will score in "
                       "(default: %(default)s)")
    model.add_argument("--batch-size", type=positive_int, default=16, metavar="N",
                       help="images per forward pass (default: %(default)s)")
    add_threads_option(model)
    add_download_options(model)
    add_general_options(parser)
    parser.set_defaults(func=run, parser=parser)


def _pairs(args: argparse.Namespace) -> Tuple[List[str], List[str]]:
    if (args.input is None) == (args.prompt is None):
        args.parser.error("give --input FILE, or --prompt with IMAGE files")
    if args.input is not None:
        if args.images:
            args.parser.error("IMAGE arguments go with --prompt, not --input")
        from ..runners.batch import read_records

        records = read_records(args.input)
        pairs = [(r["prompt"], os.path.join(args.image_root, r["image"])) for r in records]
    else:
        if not args.images:
            args.parser.error("give at least one IMAGE")
        pairs = [(prompt, image) for prompt in args.prompt for image in args.images]
    if not pairs:
        raise CliError(f"{args.input} holds no pairs", EXIT_INPUT)
    if len(pairs) > args.pairs:  # evenly spread, the same every run
        pairs = [pairs[i * len(pairs) // args.pairs] for i in range(args.pairs)]
    error = missing_images([image for _, image in pairs])
    if error is not None:
        raise error
    return [p for p, _ in pairs], [i for _, i in pairs]


def run(args: argparse.Namespace) -> int:
    apply_offline(args)
    prompts, images = _pairs(args)
    files = model_files(args, [args.model], args.parser)
    spec = model_spec(args, args.model, files[args.model]).replace(device="cpu")
    scorer = load_scorer(spec)
    from ..int8 import calibrate
    from ..progress import progress

    note(args, f"calibrating {spec.label} ({args.dtype}) on {len(images)} pairs")
    with progress(len(images), "pair", "calibrating", len(images) > args.batch_size and not args.no_progress) as bar:
        calibration = calibrate(scorer, prompts, images, on_batch=bar.update)
    calibration.save(args.output)
    note(args, f"wrote {args.output}: {len(calibration.ranges)} linear layers, "
               f"{len(calibration.fused)} GELU outputs handed on as uint8")
    return 0
