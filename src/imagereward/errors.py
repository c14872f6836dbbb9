"""Every error the package raises on purpose, in one hierarchy.

Callers that score many items (batch jobs, the data-set runner, the reward
server) catch :class:`InputError` to record or report one bad item and go on;
:class:`ModelError` and its subclasses mean the model itself cannot be had.
Each class also derives from the built-in exception that code written for the
original package may already catch (``FileNotFoundError``, ``TypeError``,
``ValueError``, ``RuntimeError``).
"""

from __future__ import annotations


class ImageRewardError(Exception):
    """Base of every error raised on purpose by ``imagereward``."""


# -- one bad input item: record it, report it, go on ----------------------------------
class InputError(ImageRewardError, ValueError):
    """An input item (image or prompt) cannot be scored; the message names it."""


class ImageNotFoundError(InputError, FileNotFoundError):
    """An image path does not name a file (missing, or a folder)."""

    def __init__(self, path: str, reason: str = "Image file not found") -> None:
        FileNotFoundError.__init__(self, 2, reason, path)

    def __str__(self) -> str:
        return f"{self.strerror}: {self.filename}"


class ImageLoadError(InputError):
    """An image exists but cannot be decoded (corrupt, unknown format, too large)."""


class ImageTypeError(InputError, TypeError):
    """An image input of a type that cannot be scored."""


class PromptError(InputError, TypeError):
    """A prompt is not a string, or prompts and images do not pair up."""


class JobFileError(ImageRewardError, ValueError):
    """A batch job's input or output file is missing or malformed (the job stops before any work)."""


class StatsFileError(ImageRewardError, ValueError):
    """A reward statistics file (``imagereward reward-stats``) that is missing or malformed."""


class CalibrationError(ImageRewardError, ValueError):
    """An int8 calibration file that is missing, malformed, or made for other weights."""


class OptionsError(ImageRewardError, ValueError):
    """Options that do not fit together, or not with the run already in the output folder."""


class DataError(ImageRewardError, ValueError):
    """An evaluation input (test set, prompts, predictions) exists but is not in the expected format."""


class UnsafeArchiveError(DataError):
    """A zip member would land outside the target folder, or is a link."""


class ReportError(ImageRewardError, RuntimeError):
    """A report cannot be made (for example, matplotlib is not installed)."""


class ExtraMissingError(ImageRewardError, ImportError):
    """An optional extra (``imagereward[ray]``, ``[serve]``, ...) is needed and not installed;
    the message gives the install command."""


# -- the requested device cannot be used -------------------------------------------------
class DeviceError(ImageRewardError, RuntimeError):
    """A device that this torch build or this machine cannot provide (e.g. CUDA on a CPU-only torch)."""


# -- the model cannot be had: the job stops ------------------------------------------
class ModelError(ImageRewardError, RuntimeError):
    """A model cannot be loaded."""


class UnknownModelError(ModelError):
    """A model name that is not registered and not a path to a file or folder."""


class CheckpointError(ModelError, ValueError):
    """A checkpoint file is unreadable or does not fit the model it is loaded into."""


class TokenizerFileError(ModelError, ValueError):
    """A tokenizer vocabulary file is unreadable or not in the expected format."""


class DownloadError(ModelError):
    """A file needed for a model could not be obtained."""


__all__ = [
    "CheckpointError",
    "DataError",
    "ExtraMissingError",
    "ReportError",
    "UnsafeArchiveError",
    "DeviceError",
    "DownloadError",
    "ImageLoadError",
    "ImageNotFoundError",
    "ImageRewardError",
    "ImageTypeError",
    "InputError",
    "JobFileError",
    "ModelError",
    "OptionsError",
    "PromptError",
    "TokenizerFileError",
    "UnknownModelError",
]
