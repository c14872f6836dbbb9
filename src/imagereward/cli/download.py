"""``imagereward download``: fetch models' files ahead of time, for machines that go offline."""

from __future__ import annotations

import argparse
from .common import EXIT_CODES_HELP, HelpFormatter, add_download_options, apply_offline, model_list

DESCRIPTION = """\
Fetch every file the named models read into the cache (or --download-root), and print
where each one is. Run it where there is a network, before a cluster or a machine goes
offline; later commands (with --offline, or IMAGEREWARD_OFFLINE=1) find the files there.
Files already present are checked (sha256 where known) and not fetched again.

examples:
  imagereward download ImageReward-v1.0 CLIP Aesthetic
  imagereward download all --download-root /shared/weights"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "download", help="fetch models' files ahead of time", description=DESCRIPTION,
        epilog=EXIT_CODES_HELP, formatter_class=HelpFormatter,
    )
    parser.add_argument("models", nargs="+", metavar="MODEL", type=model_list,
                        help="registered model names (see 'imagereward models'), or 'all'")
    add_download_options(parser)
    parser.add_argument("-v", "--verbose", action="store_true", help="full traceback on errors")
    parser.set_defaults(func=run, parser=parser)


def run(args: argparse.Namespace) -> int:
    from ..factory import locate

    apply_offline(args)
    names = list(dict.fromkeys(name for names in args.models for name in names))
    for name in names:
        for role, path in locate(name, download_root=args.download_root).items():
            print(f"{name}\t{role}\t{path}")
    return 0
