"""``imagereward convert``: any scorer's checkpoint to a safetensors folder for instant loading."""

from __future__ import annotations

import argparse
import os

from .common import (
    EXIT_CODES_HELP,
    HelpFormatter,
    add_download_options,
    apply_offline,
    model_files,
    model_name,
    model_names_help,
)

DESCRIPTION = """\
Rewrite any scorer's weights (by default ImageReward's: the original ImageReward.pt, a
.safetensors file or a saved folder; with --model another scorer's own files; or a
registered name alone to use the downloaded weights) as a folder with
model.safetensors and config.json, which records the scorer, its configuration and its
image chain. load() memory-maps that folder, so loading is near-instant; --dtype
fp16/bf16 halves its size. The weights are checked strictly on the way.

An output folder that already holds a converted model is not replaced without --overwrite.

example:
  imagereward convert ~/.cache/ImageReward/ImageReward.pt imagereward-v1.0-fp16 --dtype fp16
  imagereward score --checkpoint imagereward-v1.0-fp16 --prompt "a cat" cat.png
  imagereward convert finetuned/HPS_v2.1.pt hps-finetuned --model HPSv2.1
  imagereward convert sac.pth aesthetic --model Aesthetic --clip-checkpoint ViT-L-14.pt"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "convert",
        help="write a checkpoint as safetensors for instant loading",
        description=DESCRIPTION,
        epilog=EXIT_CODES_HELP,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("source", help="a checkpoint file or folder, or a registered model name")
    parser.add_argument("output", help="folder to write (created if missing)")
    parser.add_argument("--model", "-m", type=model_name,
                        help=f"the scorer SOURCE belongs to: {model_names_help()} (default: ImageReward's, "
                        "as a bare checkpoint is read)")
    parser.add_argument("--checkpoint", action="append", default=[], metavar="MODEL:ROLE=PATH",
                        help="another local file the scorer reads (Aesthetic:clip=ViT-L-14.pt)")
    parser.add_argument("--clip-checkpoint", metavar="PATH",
                        help="the CLIP file of a scorer that reads one: same as --checkpoint MODEL:clip=PATH")
    parser.add_argument("--dtype", default="fp32", choices=("fp32", "fp16", "bf16"),
                        help="precision of the written weights (default: fp32, exact)")
    parser.add_argument("--med-config", help="original med_config.json, if the text encoder differs")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the weights and config already in the output folder")
    add_download_options(parser)
    parser.add_argument("-v", "--verbose", action="store_true", help="full traceback on errors")
    parser.set_defaults(func=run, parser=parser)


def run(args: argparse.Namespace) -> int:
    from ..factory import convert_checkpoint
    from ..saving import CONFIG_FILE, WEIGHTS_FILE

    if os.path.exists(args.output) and not os.path.isdir(args.output):
        args.parser.error(f"{args.output} exists and is not a folder")
    existing = [os.path.join(args.output, name) for name in (WEIGHTS_FILE, CONFIG_FILE)
                if os.path.exists(os.path.join(args.output, name))]
    if existing and not args.overwrite:
        args.parser.error(f"{' and '.join(existing)} exist(s): pass --overwrite to replace")

    apply_offline(args)
    files = model_files(args, [args.model], args.parser)[args.model] if args.model else {}
    files.pop("weights", None)  # SOURCE is the weights
    folder = convert_checkpoint(args.source, args.output, name=args.model, dtype=args.dtype,
                                med_config=args.med_config, files=files, download_root=args.download_root)
    print(f"wrote {folder}")
    return 0
