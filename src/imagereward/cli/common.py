"""Shared pieces of the command line: exit codes, errors, model options and model loading.

Nothing here imports torch; models are loaded only when a command runs.
"""

from __future__ import annotations

import argparse
import os
from typing import Any, Dict, List, Optional

EXIT_OK = 0
EXIT_FAILURE = 1  # runtime failure: model or download error, unexpected exception
EXIT_USAGE = 2  # bad arguments (argparse's own code)
EXIT_INPUT = 3  # an input file or folder is missing, unreadable or malformed
EXIT_PARTIAL = 4  # a batch job finished but some pairs are recorded as errors
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT); finished work is kept

EXIT_CODES_HELP = """\
exit codes:
  0    success
  1    runtime failure (download, out of memory, unexpected error)
  2    usage error (bad or conflicting arguments, unknown model)
  3    an input is missing, unreadable or malformed (image, checkpoint, vocabulary,
       data file), or the device is not available (e.g. --device cuda without CUDA)
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


def exit_code_for(error: BaseException) -> int:
    """The documented exit code of an error that reached the command line."""
    from ..errors import (
        CheckpointError, DeviceError, InputError, TokenizerFileError, UnknownModelError,
    )

    if isinstance(error, CliError):
        return error.code
    if isinstance(error, UnknownModelError):
        return EXIT_USAGE
    if isinstance(error, (InputError, CheckpointError, TokenizerFileError, DeviceError, FileNotFoundError,
                          IsADirectoryError)):
        return EXIT_INPUT
    return EXIT_FAILURE


def is_documented(error: BaseException) -> bool:
    """Raised on purpose with a message for people (no exception type name needed)."""
    from ..errors import ImageRewardError

    return isinstance(error, (CliError, ImageRewardError))


def error_message(error: BaseException) -> str:
    """One line naming what is at fault (the file for file-system errors)."""
    if isinstance(error, OSError) and error.filename is not None and not isinstance(error, CliError):
        return f"{error.strerror or error}: {error.filename}"
    return str(error)


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
    """``--checkpoint``, ``--clip-checkpoint``, ``--vocab-file``, ``--device``, ``--dtype``,
    ``--batch-size``, ``--compile``, ``--download-root``, ``--offline``."""
    group = parser.add_argument_group("model")
    group.add_argument(
        "--checkpoint", metavar="[NAME=]PATH", action="append", default=[],
        help=checkpoint_help + "; NAME=PATH gives the local file of one model by name "
        "(e.g. CLIP=ViT-L-14.pt, BLIP=model_large.pth); repeat for several models",
    )
    group.add_argument(
        "--clip-checkpoint", metavar="PATH",
        help="for Aesthetic: a local OpenAI CLIP ViT-L-14.pt for its image encoder "
        "(default: the CLIP=PATH checkpoint when given, else the download)",
    )
    group.add_argument(
        "--vocab-file", metavar="PATH",
        help="BERT vocab.txt for ImageReward and BLIP (default: $IMAGEREWARD_BERT_VOCAB, else "
        "the vocabulary shipped with the package)",
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


def checkpoint_paths(
    values: List[str], default_model: str, models: List[str], parser: argparse.ArgumentParser
) -> Dict[str, str]:
    """``--checkpoint`` values as ``{model: path}``: ``NAME=PATH``, or a bare ``PATH`` for ``default_model``.

    Usage errors (a model given twice, a model not being run) exit through ``parser.error``.
    """
    from ..registry import find_entry

    paths: Dict[str, str] = {}
    for value in values:
        name, separator, path = value.partition("=")
        entry = find_entry(name.strip()) if separator else None
        model = entry.name if entry is not None else None
        if model is None:  # a bare path (which may itself contain "=")
            model, path = default_model, value
        if model in paths:
            parser.error(f"--checkpoint given twice for {model}")
        if model not in models:
            parser.error(f"--checkpoint is for {model}, which is not among the models run here "
                         f"({', '.join(models)})")
        paths[model] = path
    return paths


def model_label(name: str, checkpoint: Optional[str]) -> str:
    """How output names a model: its registered name, or the local file it was loaded from."""
    return name if checkpoint is None else f"{name} ({checkpoint})"


def apply_offline(args: argparse.Namespace) -> None:
    if getattr(args, "offline", False):
        os.environ["IMAGEREWARD_OFFLINE"] = "1"
        os.environ["HF_HUB_OFFLINE"] = "1"


def require_file(path: str, what: str) -> str:
    if not os.path.isfile(path):
        raise CliError(f"{what} not found: {path}", EXIT_INPUT)
    return path


def load_scorer(name: str, args: argparse.Namespace, checkpoints: Dict[str, str]) -> Any:
    """A ready scorer for model ``name``, from its local files in ``checkpoints`` or downloaded.

    Aesthetic's CLIP image tower comes from ``--clip-checkpoint``, else ``CLIP=PATH``.
    """
    import imagereward

    local = {"weights": checkpoints.get(name)}
    if name == "Aesthetic":
        local["clip"] = args.clip_checkpoint or checkpoints.get("CLIP")
    for what, path in (("checkpoint", local["weights"]), ("CLIP checkpoint", local.get("clip")),
                       ("vocabulary file", args.vocab_file)):
        if path is not None and not os.path.exists(path):
            raise CliError(f"{what} not found: {path}", EXIT_INPUT)
    common = dict(
        device=args.device,
        dtype=args.dtype,
        download_root=args.download_root,
        batch_size=args.batch_size,
        compile=args.compile,
        vocab_file=args.vocab_file,
    )
    given = {role: path for role, path in local.items() if path is not None}
    try:
        return imagereward.load(name, files=given, **common)
    except (imagereward.ImageRewardError, FileNotFoundError):
        raise  # documented errors: main() gives each its exit code
    except (OSError, RuntimeError, ValueError) as error:
        raise CliError(f"cannot load {name}: {error}") from error
