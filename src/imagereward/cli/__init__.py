"""The ``imagereward`` command line.

Subcommands live in separate modules listed in :data:`COMMANDS`. Only the
module of the command being run is imported (``imagereward --help`` imports
none of them, and no command module imports torch before it runs). A module
provides ``register(subparsers)``, which adds its parser(s) and sets the
default ``func(args) -> int | None``. A listed module that is not installed
(e.g. the training extension) is left out; one that exists but fails to import
is an error.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.machinery
import importlib.util
import logging
import os
import sys
import traceback
from typing import Any, List, Optional, Sequence, Tuple

from .common import (
    EXIT_CODES_HELP,
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    HelpFormatter,
    error_message,
    exit_code_for,
    is_documented,
)

# (command, module providing register(subparsers), one-line summary)
COMMANDS: Tuple[Tuple[str, str, str], ...] = (
    ("score", "imagereward.cli.score", "reward of each image for a prompt, or of a JSONL file of pairs"),
    ("rank", "imagereward.cli.score", "rank images for a prompt (1 = best)"),
    ("eval", "imagereward.cli.eval", "preference accuracy on test.json, as the paper's Table 3"),
    ("benchmark", "imagereward.cli.benchmark", "rank text-to-image models by mean reward (Table 1)"),
    ("train", "imagereward.train.cli", "train a reward model on ranked preference data"),
    ("refl", "imagereward.refl.cli", "fine-tune a diffusion model with the reward (ReFL)"),
    ("convert", "imagereward.cli.convert", "write a checkpoint as safetensors for instant loading"),
    ("models", "imagereward.cli.models", "list the registered scorers"),
    ("download", "imagereward.cli.download", "fetch models' files ahead of time, for offline use"),
    ("score-dataset", "imagereward.cli.score_dataset", "score a whole data set on Ray Data (local or a cluster), restartable"),
    ("serve", "imagereward.cli.serve", "reward server for RL trainers: one or several models (Ray Serve)"),
    ("calibrate", "imagereward.cli.calibrate", "calibrate a model for int8 scoring on the CPU (--int8)"),
    ("reward-stats", "imagereward.cli.reward_stats", "each model's score mean and std over your pairs, for z-scores"),
)

DESCRIPTION = """\
ImageReward: how much will people prefer this image for this prompt?

examples:
  imagereward score --prompt "a red bicycle" a.png b.png
  imagereward rank --prompt "a red bicycle" *.png --json
  imagereward score --input pairs.jsonl --output scores.jsonl --resume
  imagereward score-dataset images/prompts.jsonl --output scores/ --models ImageReward-v1.0,CLIP
  imagereward eval --download --models all --output-dir results/

Run 'imagereward COMMAND --help' for the options of a command."""


def _module_exists(dotted: str) -> bool:
    """Whether a module can be found, without executing it or its parent packages."""
    if dotted in sys.modules:
        return True
    parts = dotted.split(".")
    spec = importlib.util.find_spec(parts[0])
    for depth in range(1, len(parts)):
        if spec is None or spec.submodule_search_locations is None:
            return False
        name = ".".join(parts[: depth + 1])
        spec = importlib.machinery.PathFinder.find_spec(name, list(spec.submodule_search_locations))
    return spec is not None


def _selected(argv: Sequence[str]) -> Optional[str]:
    for token in argv:
        if not token.startswith("-"):
            return token
    return None


def build_parser(command: Optional[str] = None) -> argparse.ArgumentParser:
    """The parser; ``command``'s module is imported and registered, the rest are stubs."""
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="imagereward",
        description=DESCRIPTION,
        epilog=EXIT_CODES_HELP,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"imagereward {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for name, module, _ in COMMANDS:
        if name == command and _module_exists(module):
            importlib.import_module(module).register(subparsers)
    for name, module, summary in COMMANDS:
        if name not in subparsers.choices and _module_exists(module):
            subparsers.add_parser(name, help=summary, add_help=False)
    return parser


def _log_level(args: argparse.Namespace) -> int:
    """``--log-level``, else info with ``--verbose``, error with ``--quiet``, else warning."""
    name = getattr(args, "log_level", None)
    if name is None:
        name = "info" if getattr(args, "verbose", False) else "error" if getattr(args, "quiet", False) else "warning"
    return getattr(logging, name.upper())


class _StderrHandler(logging.StreamHandler):
    """Writes to ``sys.stderr`` as it is when a message is logged, not as it was when the
    handler was made (a program that runs ``main`` twice may have replaced it in between)."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def _configure_logging(level: int) -> None:
    """Our own messages on stderr; other libraries' loggers are left as they are."""
    logger = logging.getLogger("imagereward")
    if not logger.handlers:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("imagereward: %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(level)


def _fail(message: str, code: int) -> int:
    print(f"imagereward: error: {message}", file=sys.stderr)
    return code


def main(argv: Optional[List[str]] = None) -> int:
    """Run the command line; returns the exit code (see ``imagereward --help``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(_selected(argv))
    try:
        args = parser.parse_args(argv)
        func = getattr(args, "func", None)
        if func is None:
            parser.print_help(sys.stderr)
            return EXIT_USAGE
        verbose = bool(getattr(args, "verbose", False))
        _configure_logging(_log_level(args))
        from ..allocator import keep_freed_memory

        keep_freed_memory()  # the command's process is its own; set before anything is laid out
        if hasattr(args, "threads"):  # a command that scores in this process
            from ..cpu_share import use_allocated_threads

            use_allocated_threads(args.threads or None)  # training's 0 means the same as none
        if getattr(args, "quiet", False):
            args.no_progress = True
        try:
            return int(func(args) or 0)
        except KeyboardInterrupt:
            return _fail("interrupted", EXIT_INTERRUPTED)
        except BrokenPipeError:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return EXIT_FAILURE
        except Exception as error:  # one line, no traceback, unless --verbose
            if verbose:
                traceback.print_exc()
            code = exit_code_for(error)
            if code != EXIT_FAILURE or is_documented(error):  # the message names what is at fault
                return _fail(error_message(error), code)
            hint = "" if verbose else " (run with --verbose for details)"
            return _fail(f"{type(error).__name__}: {error}{hint}", code)
    except SystemExit as exit_:  # argparse: --help, --version, usage errors
        code = exit_.code
        return code if isinstance(code, int) else (0 if code is None else EXIT_USAGE)
