"""Shared pieces of the command line: exit codes, errors, model options and model loading.

Nothing here imports torch; models are loaded only when a command runs.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Dict, List, Optional

from ..errors import ImageRewardError

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
LOG_LEVELS = ("debug", "info", "warning", "error")


class CliError(ImageRewardError):
    """A failure to report as one line on stderr, with its exit code."""

    def __init__(self, message: str, code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.code = code


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the layout of descriptions and epilogs (examples, exit codes)."""


def exit_code_for(error: BaseException) -> int:
    """The documented exit code of an error that reached the command line."""
    from ..errors import (
        CalibrationError, CheckpointError, DataError, DeviceError, InputError, JobFileError, OptionsError,
        StatsFileError, TokenizerFileError, UnknownModelError,
    )

    if isinstance(error, CliError):
        return error.code
    if isinstance(error, (UnknownModelError, OptionsError)):
        return EXIT_USAGE
    if isinstance(error, (InputError, CalibrationError, CheckpointError, TokenizerFileError, DeviceError, DataError,
                          JobFileError, StatsFileError, FileNotFoundError, IsADirectoryError)):
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


DEVICE_TYPES = ("cpu", "cuda", "mps", "xpu")


def device_name(value: str) -> str:
    """argparse type: a torch device this package scores on (``cpu``, ``cuda``, ``cuda:1``, ...)."""
    kind, _, index = value.strip().partition(":")
    if kind not in DEVICE_TYPES or (index and not index.isdigit()):
        raise argparse.ArgumentTypeError(
            f"unknown device {value!r}; use one of {', '.join(DEVICE_TYPES)}, optionally with :INDEX"
        )
    return value.strip()


def positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return number


def non_negative_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {value!r}") from None
    if not number >= 0:  # also NaN
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {value!r}")
    return number


def note(args: argparse.Namespace, message: str) -> None:
    """A line for people on stderr (what was written, where a job runs), unless ``--quiet``."""
    if not getattr(args, "quiet", False):
        print(message, file=sys.stderr, flush=True)


def add_general_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("general")
    group.add_argument(
        "-v", "--verbose", action="store_true",
        help="log what is loaded and show the full traceback on errors",
    )
    group.add_argument(
        "-q", "--quiet", action="store_true",
        help="print only results and errors: no progress, no notes (same as --log-level error --no-progress)",
    )
    group.add_argument(
        "--log-level", choices=LOG_LEVELS, type=str.lower,
        help="how much to log on stderr (default: warning; info with --verbose, error with --quiet)",
    )
    group.add_argument(
        "--no-progress", action="store_true", help="do not draw progress bars on stderr"
    )


def add_model_options(parser: argparse.ArgumentParser, checkpoint_help: str) -> Any:
    """``--checkpoint``, ``--clip-checkpoint``, ``--vocab-file``, ``--device``, ``--dtype``,
    ``--batch-size``, ``--threads``, ``--compile``, ``--download-root``, ``--offline``."""
    group = parser.add_argument_group("model")
    add_file_options(group, checkpoint_help)
    group.add_argument(
        "--vocab-file", metavar="PATH",
        help="BERT vocab.txt for ImageReward and BLIP (default: $IMAGEREWARD_BERT_VOCAB, else "
        "the vocabulary shipped with the package)",
    )
    group.add_argument(
        "--device", type=device_name,
        help="torch device, e.g. cpu, cuda, cuda:1 (default: cuda when available)",
    )
    add_dtype_option(group)
    group.add_argument(
        "--batch-size", type=positive_int, default=16, metavar="N",
        help="images per forward pass (default: %(default)s)",
    )
    add_threads_option(group)
    group.add_argument(
        "--compile", action="store_true",
        help="torch.compile the encoders: a minute or more of compiling first, then faster "
        "on GPUs (worth it for long jobs; on CPUs the gain is a few percent)",
    )
    add_int8_option(group)
    add_download_options(group)
    return group


def add_int8_option(group: Any) -> None:
    """``--int8 CALIBRATION`` (repeatable: one file per model, each names its model)."""
    group.add_argument(
        "--int8", metavar="CALIBRATION", action="append", default=[],
        help="run the model's linear layers in int8 on the CPU, with this calibration of its "
        "weights (written by imagereward calibrate): faster than fp32 on x86 CPUs, than bf16 on "
        "CPUs with AMX, and approximate (rewards move more than in bf16); repeat for several models",
    )


def int8_calibrations(args: argparse.Namespace, models: List[str],
                      parser: argparse.ArgumentParser) -> Dict[str, str]:
    """The ``--int8`` calibration file of each model that has one, by the model each file
    names. An unreadable file exits 3 naming it; one for a model not run, or two for
    one model, are usage errors."""
    from ..int8_calibration import Int8Calibration

    found: Dict[str, str] = {}
    for path in getattr(args, "int8", None) or []:
        model = Int8Calibration.load(path).model
        if model not in models:
            parser.error(f"--int8 {path} is a calibration of {model}, which is not among the models "
                         f"run here ({', '.join(models)})")
        if model in found:
            parser.error(f"--int8 given twice for {model}: {found[model]} and {path}")
        found[model] = path
    if found and getattr(args, "compile", False):
        parser.error("--int8 and --compile do not go together (int8 layers run eagerly)")
    if found and str(getattr(args, "device", None) or "cpu").split(":")[0] != "cpu":
        parser.error(f"--int8 runs on the CPU, not --device {args.device}")
    for option in ("gpus_per_actor", "gpus_per_replica"):
        if found and getattr(args, option, None):
            parser.error(f"--int8 runs on CPUs, not with --{option.replace('_', '-')} {getattr(args, option)}")
    if found and getattr(args, "dtype", None) == "fp16":
        parser.error("--int8 goes with --dtype bf16 (fastest) or fp32, not fp16")
    return found


def add_threads_option(group: Any) -> None:
    """``--threads``: torch threads of a command that scores in its own process (``main``
    applies it, or the default, before the command runs)."""
    group.add_argument(
        "--threads", type=positive_int, metavar="N",
        help="torch threads on the CPU (default: OMP_NUM_THREADS when set, else the CPUs this "
        "process may use: its affinity mask, capped by a cgroup CPU quota such as docker --cpus "
        "or a Kubernetes CPU limit)",
    )


def add_file_options(group: Any, checkpoint_help: str) -> None:
    """``--checkpoint [MODEL[:ROLE]=]PATH`` (repeatable) and its alias ``--clip-checkpoint``."""
    group.add_argument(
        "--checkpoint", metavar="[MODEL[:ROLE]=]PATH", action="append", default=[],
        help=checkpoint_help + "; MODEL=PATH gives one model's weights by name (e.g. "
        "CLIP=ViT-L-14.pt), MODEL:ROLE=PATH another file it reads (Aesthetic:clip=ViT-L-14.pt); "
        "a file two models share (CLIP's weights, Aesthetic's clip) is given once; repeat for several",
    )
    group.add_argument(
        "--clip-checkpoint", metavar="PATH",
        help="the CLIP file of the models that read one (Aesthetic's image encoder): "
        "same as --checkpoint MODEL:clip=PATH",
    )


def add_dtype_option(group: Any, default: Optional[str] = "fp32") -> None:
    group.add_argument(
        "--dtype", choices=("fp32", "bf16", "fp16"), default=default,
        help="precision of the image and text encoders; reward heads stay fp32 (default: fp32)",
    )


def add_download_options(group: Any) -> None:
    group.add_argument(
        "--download-root", metavar="DIR",
        help="keep downloaded weights in DIR under their original names "
        "(default: the Hugging Face cache / ~/.cache/imagereward)",
    )
    group.add_argument(
        "--offline", action="store_true",
        help="never use the network: only local files and caches (same as IMAGEREWARD_OFFLINE=1)",
    )


def model_files(args: argparse.Namespace, models: List[str], parser: argparse.ArgumentParser,
                default_model: Optional[str] = None) -> Dict[str, Dict[str, str]]:
    """Local files by model and role from ``--checkpoint`` and ``--clip-checkpoint``.

    A bare PATH is ``default_model``'s weights (or the only model's). Usage errors (a
    file given twice, for a model not run, or a role it does not read) exit through
    ``parser.error``. The ``--int8`` calibrations are checked here too
    (:func:`int8_calibrations`) and kept as ``args.int8_files`` for :func:`model_spec`.
    """
    from ..spec import parse_file_option, resolve_files, roles_of

    default = default_model or (models[0] if len(models) == 1 else None)
    given: Dict[str, Dict[str, str]] = {}
    for value in getattr(args, "checkpoint", []) or []:
        try:
            model, role, path = parse_file_option(value, default)
        except ValueError as error:
            parser.error(f"--checkpoint {error}")
        if role in given.get(model, {}):
            parser.error(f"--checkpoint given twice for {model}" + ("" if role == "weights" else f":{role}"))
        given.setdefault(model, {})[role] = path
    clip = getattr(args, "clip_checkpoint", None)
    if clip is not None:
        readers = roles_of(models, "clip")
        if not readers:
            parser.error(f"--clip-checkpoint is for models that read a CLIP file, and none of "
                         f"{', '.join(models)} does")
        for model in readers:
            given.setdefault(model, {})["clip"] = clip
    from ..registry import get_entry, sharing_roles

    lenders = {other for m in models for role in get_entry(m).files
               for other, _ in sharing_roles(get_entry(m), role)}
    for model in given:
        if model not in models and model not in lenders:
            parser.error(f"--checkpoint is for {model}, which is not among the models run here "
                         f"({', '.join(models)})")
    args.int8_files = int8_calibrations(args, models, parser)
    return resolve_files(models, given)


def model_spec(args: argparse.Namespace, name: str, files: Dict[str, str]) -> Any:
    """The :class:`~imagereward.spec.ModelSpec` of model ``name`` from the model options."""
    from ..spec import ModelSpec

    options: Dict[str, Any] = {}
    for option in ("download_root", "vocab_file", "batch_size", "compile"):
        value = getattr(args, option, None)
        if value:
            options[option] = value
    calibration = getattr(args, "int8_files", {}).get(name)
    if calibration is not None:
        options["int8"] = calibration  # load() then defaults to the CPU
    dtype = getattr(args, "dtype", "fp32")
    return ModelSpec(name, files, device=getattr(args, "device", None),
                     dtype=None if dtype == "fp32" else dtype, options=options)


def apply_offline(args: argparse.Namespace) -> None:
    if getattr(args, "offline", False):
        os.environ["IMAGEREWARD_OFFLINE"] = "1"
        os.environ["HF_HUB_OFFLINE"] = "1"


def missing_images(paths: List[str]) -> Optional[CliError]:
    """The error (exit 3) naming the first of ``paths`` that is not an image file, and
    how many more are not; ``None`` when all are files."""
    missing = [path for path in paths if not os.path.isfile(path)]
    if not missing:
        return None
    more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
    what = "image path is a folder, not a file" if os.path.isdir(missing[0]) else "image not found"
    return CliError(f"{what}: {missing[0]}{more}", EXIT_INPUT)


def require_file(path: str, what: str) -> str:
    if not os.path.isfile(path):
        raise CliError(f"{what} not found: {path}", EXIT_INPUT)
    return path


def check_spec_files(spec: Any) -> None:
    """Every local file of ``spec`` exists (exit 3 naming it), before anything loads."""
    vocab = spec.options.get("vocab_file")
    for role, path in [*spec.files.items(), ("vocabulary", vocab)]:
        if path is not None and not os.path.exists(path):
            what = {"weights": "checkpoint", "vocabulary": "vocabulary file"}.get(role, f"{role} file")
            raise CliError(f"{spec.name} {what} not found: {path}", EXIT_INPUT)


def locate_files(specs: List[Any]) -> None:
    """Find (or download) every model's files before the first one is loaded and scored,
    so that a missing file is reported at once, not after minutes of work."""
    from ..factory import locate

    for spec in specs:
        check_spec_files(spec)
        locate(spec.name, spec.files, spec.options.get("download_root"))


def load_scorer(spec: Any) -> Any:
    """The ready scorer of ``spec`` (``main`` has set the allocator for the command's process)."""
    return _loading(spec, spec.load)


def check_scorer(spec: Any) -> None:
    """Build ``spec``'s network from its files strictly, as :func:`load_scorer` would, and drop
    it: a missing, junk or mis-shaped file fails here with the same message and exit code.
    The weights are neither cast nor placed (:meth:`ModelSpec.preprocessing`)."""
    _loading(spec, spec.preprocessing)


def _loading(spec: Any, load: Any) -> Any:
    import imagereward

    check_spec_files(spec)
    try:
        return load()
    except (imagereward.ImageRewardError, FileNotFoundError):
        raise  # documented errors: main() gives each its exit code
    except (OSError, RuntimeError, ValueError) as error:
        raise CliError(f"cannot load {spec.name}: {error}") from error
