"""Shared pieces of the command line: exit codes, errors, model options and model loading.

Nothing here imports torch; models are loaded only when a command runs.
"""

from __future__ import annotations

import argparse
import os
from typing import Any, List, Optional

EXIT_OK = 0
EXIT_FAILURE = 1  # runtime failure: model or download error, unexpected exception
EXIT_USAGE = 2  # bad arguments (argparse's own code)
EXIT_INPUT = 3  # an input file or folder is missing, unreadable or malformed
EXIT_PARTIAL = 4  # a batch job finished but some pairs are recorded as errors
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT); finished work is kept

EXIT_CODES_HELP = """\
exit codes:
  0    success
  1    runtime failure (model loading, download, unexpected error)
  2    usage error (bad or conflicting arguments)
  3    an input file or folder is missing, unreadable or malformed
  4    batch job done, but some pairs failed (see their "error" records)
  130  interrupted (Ctrl-C); results written so far are kept"""

IMAGEREWARD = "ImageReward-v1.0"


class CliError(Exception):
    """A failure to report as one line on stderr, with its exit code."""

    def __init__(self, message: str, code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.code = code


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the layout of descriptions and epilogs (examples, exit codes)."""


def model_name(value: str) -> str:
    """argparse type: a registered scorer name, case-insensitive (aliases allowed)."""
    from ..registry import available_models, find_entry

    entry = find_entry(value)
    if entry is None:
        raise argparse.ArgumentTypeError(
            f"unknown model {value!r}; choose from {', '.join(available_models())}"
        )
    return entry.name


def model_list(value: str) -> List[str]:
    """argparse type: comma-separated scorer names, or ``all`` for every registered one."""
    from ..registry import available_models

    if value.strip().lower() == "all":
        return available_models()
    names = [model_name(v) for v in split_list(value)]
    if not names:
        raise argparse.ArgumentTypeError("give at least one model")
    return list(dict.fromkeys(names))


def model_names_help() -> str:
    """The registered scorer names, for help texts."""
    from ..registry import available_models

    return ", ".join(available_models())


def split_list(value: str) -> List[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return number


def add_general_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("general")
    group.add_argument(
        "-v", "--verbose", action="store_true",
        help="log what is loaded and show the full traceback on errors",
    )
    group.add_argument(
        "--no-progress", action="store_true", help="do not draw progress bars on stderr"
    )


def add_model_options(parser: argparse.ArgumentParser, checkpoint_help: str) -> Any:
    """``--device``, ``--dtype``, ``--batch-size``, ``--compile``, ``--checkpoint``,
    ``--download-root``, ``--offline``."""
    group = parser.add_argument_group("model")
    group.add_argument(
        "--checkpoint", metavar="PATH", help=checkpoint_help,
    )
    group.add_argument(
        "--device", help="torch device, e.g. cpu, cuda, cuda:1 (default: cuda when available)"
    )
    group.add_argument(
        "--dtype", choices=("fp32", "bf16", "fp16"), default="fp32",
        help="precision of the image and text encoders; reward heads stay fp32 (default: %(default)s)",
    )
    group.add_argument(
        "--batch-size", type=positive_int, default=16, metavar="N",
        help="images per forward pass (default: %(default)s)",
    )
    group.add_argument(
        "--compile", action="store_true",
        help="torch.compile the encoders: a minute or more of compiling first, then faster "
        "on GPUs (worth it for long jobs; on CPUs the gain is a few percent)",
    )
    group.add_argument(
        "--download-root", metavar="DIR",
        help="keep downloaded weights in DIR under their original names "
        "(default: the Hugging Face cache / ~/.cache/imagereward)",
    )
    group.add_argument(
        "--offline", action="store_true",
        help="never use the network: only local files and caches (same as IMAGEREWARD_OFFLINE=1)",
    )
    return group


def apply_offline(args: argparse.Namespace) -> None:
    if getattr(args, "offline", False):
        os.environ["IMAGEREWARD_OFFLINE"] = "1"
        os.environ["HF_HUB_OFFLINE"] = "1"


def require_file(path: str, what: str) -> str:
    if not os.path.isfile(path):
        raise CliError(f"{what} not found: {path}", EXIT_INPUT)
    return path


def load_scorer(name: str, args: argparse.Namespace, checkpoint: Optional[str] = None, **files: Any) -> Any:
    """A ready scorer from the registry, with local weight files where given.

    ``checkpoint`` is the scorer's own weights file (or saved folder); ``files`` holds
    other local files by role (e.g. ``clip=PATH`` for Aesthetic's image tower).
    """
    import imagereward

    local = {"weights": checkpoint, **files}
    for path in local.values():
        if path is not None and not os.path.exists(path):
            raise CliError(f"checkpoint not found: {path}", EXIT_INPUT)
    common = dict(
        device=args.device,
        dtype=args.dtype,
        download_root=args.download_root,
        batch_size=args.batch_size,
        compile=args.compile,
    )
    given = {role: path for role, path in local.items() if path is not None}
    try:
        return imagereward.load(name, files=given, **common)
    except FileNotFoundError as error:
        raise CliError(f"{error.strerror or error}: {error.filename}", EXIT_INPUT) from error
    except (OSError, RuntimeError, ValueError) as error:
        raise CliError(f"cannot load {name}: {error}") from error
