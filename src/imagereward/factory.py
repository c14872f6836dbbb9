"""``load``: one factory for every scorer, from a registered name, a checkpoint or a saved folder.

The registry (:mod:`imagereward.registry`) says what a name needs; this module
finds or downloads the files, hands them to the entry's builder with the
configuration, preprocessing and tokenizer files, then places the scorer on its
device and precision. ``load_score`` is the original package's name for the same.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import os
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Type, Union

import torch
from torch import nn

from .checkpoints import StateDict, load_state_dict_strict, read_state_dict, strip_prefix
from .config import ImageRewardConfig, PreprocessConfig, TextConfig
from .dtypes import DtypeLike, cpu_has_fast, resolve_device, resolve_dtype
from .errors import CheckpointError, DownloadError, UnknownModelError
from .hub import fetch_weights, offline_mode
from .items import DEFAULT_LIMITS, ImageLimits
from .registry import ScorerEntry, available_models, available_scores, find_entry, get_entry
from .saving import WEIGHTS_FILE, SavedModel, read_saved_folder, save_pretrained

if TYPE_CHECKING:  # pragma: no cover
    from .scoring.network import RewardNetwork, ScorerParts
    from .scoring.scorer import RewardScorer

logger = logging.getLogger(__name__)

# Registry names of the CLIP BPE tokenizer: the text front end each stands for, and
# whether rows are padded with the end-of-text id (else with 0).
CLIP_TEXT_STYLES = {
    "clip_bpe": ("openai", False), "clip_bpe_openclip": ("open_clip", False),
    "clip_bpe_hf": ("hf", False), "clip_bpe_hf_eot_pad": ("hf", True),
}

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors")


@dataclass(frozen=True)
class BuildRequest:
    """What a builder gets: the entry, local files by role, the configuration and front-end files.

    ``saved`` says the weights are a folder written by :func:`save_pretrained` (the
    network's own names), not the scorer's original file layout.
    """

    entry: ScorerEntry
    files: Mapping[str, str]
    config: Any
    preprocess: PreprocessConfig
    saved: bool = False
    vocab_file: Optional[str] = None
    bpe_file: Optional[str] = None

    def read_weights(self, role: str = "weights", key: Optional[str] = None) -> StateDict:
        """The state dict of the file for ``role``, ``module.`` prefixes stripped."""
        return strip_prefix(read_state_dict(self.files[role], key=None if self.saved else key))

    def load_into(self, module: nn.Module, state: StateDict, role: str = "weights") -> None:
        """Strict loading of ``state`` into ``module`` (built on ``meta``), the entry's unused keys allowed."""
        load_state_dict_strict(module, state, source=self.files[role], ignore=self.entry.ignore_keys)

    def build_saved(self, network_class: Type["RewardNetwork"]) -> "ScorerParts":
        """Parts of a saved folder: ``network_class(config)`` with the saved tensors, strictly."""
        config = self.config_of(self.entry.config_type)
        with torch.device("meta"):
            network = network_class(config)  # type: ignore[call-arg]
        self.load_into(network, self.read_weights())
        text_length = None if self.entry.tokenizer is None else config.context_length
        return self.parts(network, text_length, config.image_size)

    def parts(
        self, network: "RewardNetwork", text_length: Optional[int], image_size: int
    ) -> "ScorerParts":
        """The network with its tokenizer (``text_length`` tokens; ``None`` for image-only
        scorers) and the registered (or saved) image chain at the network's input size."""
        from .preprocess import ImagePreprocessor
        from .scoring.network import ScorerParts

        tokenizer = None if text_length is None else self.tokenizer(text_length)
        preprocess = ImagePreprocessor(dataclasses.replace(self.preprocess, image_size=image_size))
        return ScorerParts(network, tokenizer, preprocess)

    def tokenizer(self, max_length: int) -> Any:
        """The entry's tokenizer at ``max_length`` tokens, from the given or bundled files."""
        if self.entry.tokenizer == "bert":
            from .tokenizers.bert import BertTokenizer

            return BertTokenizer(self.vocab_file, max_length=max_length)
        if self.entry.tokenizer in CLIP_TEXT_STYLES:
            from .tokenizers.clip_bpe import CLIPTokenizer, resolve_clip_bpe

            style, pad_with_eot = CLIP_TEXT_STYLES[self.entry.tokenizer]
            return CLIPTokenizer(
                resolve_clip_bpe(self.bpe_file), max_length, text_style=style, pad_with_eot=pad_with_eot
            )
        raise ValueError(f"{self.entry.name} has no text tokenizer")

    def config_of(self, expected: type) -> Any:
        """The configuration, checked to be an ``expected`` (``None`` stays ``None``)."""
        if self.config is not None and not isinstance(self.config, expected):
            raise TypeError(
                f"config for {self.entry.name} must be a {expected.__name__}, "
                f"got {type(self.config).__name__}"
            )
        return self.config


def _looks_like_path(name: str) -> bool:
    return os.sep in name or "/" in name or name.lower().endswith(CHECKPOINT_SUFFIXES)


@dataclass(frozen=True)
class _Resolved:
    entry: ScorerEntry
    files: Dict[str, str]
    config: Any
    preprocess: PreprocessConfig
    saved: bool = False


def _fetch_all(
    entry: ScorerEntry, given: Mapping[str, Optional[str]], download_root: Optional[str]
) -> Dict[str, str]:
    """Local paths for every file of ``entry``: given ones as they are, the rest fetched.

    Every missing file is reported at once in one :class:`DownloadError`; once one
    download has failed, the other files are only looked for locally (no second round
    of network retries).
    """
    paths: Dict[str, str] = {}
    failures: List[DownloadError] = []
    for role, spec in entry.files.items():
        local = given.get(role)
        if local is not None:
            if not os.path.isfile(local):
                raise FileNotFoundError(2, f"{entry.name} {role} file not found", local)
            paths[role] = local
            continue
        hint = _local_file_hint(entry, role)
        try:
            if failures:  # one download failed already: only look for local copies of the rest
                with offline_mode():
                    paths[role] = fetch_weights(spec, download_root, hint)
            else:
                paths[role] = fetch_weights(spec, download_root, hint)
        except DownloadError as error:
            failures.append(error)
    if len(failures) == 1:
        raise failures[0]
    if failures:
        raise DownloadError(
            f"{entry.name} needs {len(failures)} files that are not here:\n"
            + "\n".join(f"  - {error}" for error in failures)
        )
    return paths


def _local_file_hint(entry: ScorerEntry, role: str) -> str:
    """How to give this file locally, in the API's and the command line's words."""
    filename = entry.files[role].filename
    if role == "weights":
        return (f"pass the path of a local {filename} (load({entry.name!r}, checkpoint=PATH), "
                f"or --checkpoint {entry.name}=PATH)")
    return (f"pass the path of a local {filename} (load({entry.name!r}, files={{{role!r}: PATH}}), "
            f"or --checkpoint {entry.name}:{role}=PATH)")


def _from_saved(weights: str, saved: SavedModel) -> _Resolved:
    """Weights written by :func:`save_pretrained`: the whole network in one file, with
    its scorer, config and preprocessing (no other role's file is needed)."""
    return _Resolved(get_entry(saved.scorer), {"weights": weights}, saved.config, saved.preprocess, True)


def _from_folder(folder: str, saved: SavedModel) -> _Resolved:
    return _from_saved(os.path.join(folder, WEIGHTS_FILE), saved)


def _saved_beside(weights: str) -> Optional[SavedModel]:
    """The saved config of a ``.safetensors`` file written by :func:`save_pretrained`."""
    if not weights.endswith(".safetensors"):
        return None
    return read_saved_folder(os.path.dirname(os.path.abspath(weights)), required=False)


def _files_in_folder(
    entry: ScorerEntry, folder: str, files: Mapping[str, Optional[str]]
) -> Dict[str, Optional[str]]:
    """A folder that is not a saved one (a hub snapshot, a download folder) as the
    checkpoint of a registered scorer: its files by their registered names."""
    found: Dict[str, Optional[str]] = {**files, "weights": None}
    for role, spec in entry.files.items():
        for filename in (spec.filename, *spec.aliases):
            path = os.path.join(folder, filename)
            if files.get(role) in (None, folder) and os.path.isfile(path):
                found[role] = path
                break
    if found["weights"] is None:
        expected = entry.files["weights"].filename
        raise FileNotFoundError(
            2, f"{entry.name}: folder is neither a saved model (config.json and "
            f"{WEIGHTS_FILE}) nor holds {expected}", folder,
        )
    return found


def _resolve(
    name: str,
    download_root: Optional[str],
    files: Mapping[str, Optional[str]],
) -> _Resolved:
    entry = find_entry(name)
    weights = files.get("weights")
    if entry is not None and weights is not None and os.path.isdir(weights):
        saved = read_saved_folder(weights, required=False)
        if saved is not None:
            return _checked_saved(entry, _from_folder(weights, saved))
        files = _files_in_folder(entry, weights, files)
    if entry is not None:
        weights = files.get("weights")
        saved = _saved_beside(weights) if weights is not None and os.path.isfile(weights) else None
        if saved is not None:
            return _checked_saved(entry, _from_saved(weights, saved))  # type: ignore[arg-type]
        paths = _fetch_all(entry, files, download_root)
        return _Resolved(entry, paths, entry.config, entry.preprocess)
    path = os.path.expanduser(os.fspath(name))
    if os.path.isdir(path):
        return _from_folder(path, read_saved_folder(path))  # type: ignore[arg-type]
    if os.path.isfile(path):
        # A bare checkpoint file is an ImageReward checkpoint, as in the original package;
        # a .safetensors file written by save_pretrained brings its config along.
        saved = _saved_beside(path)
        if saved is not None:
            return _from_saved(path, saved)
        entry = get_entry("ImageReward-v1.0")
        paths = _fetch_all(entry, {**files, "weights": path}, download_root)
        return _Resolved(entry, paths, entry.config, entry.preprocess)
    if _looks_like_path(name):
        raise FileNotFoundError(2, "Checkpoint file or folder not found", path)
    raise UnknownModelError(f"Model {name} not found; available models = {available_models()}")


def _checked_saved(entry: ScorerEntry, resolved: _Resolved) -> _Resolved:
    if resolved.entry is not entry:
        raise CheckpointError(
            f"{resolved.files['weights']} was saved from {resolved.entry.name}, not {entry.name}"
        )
    return resolved


def _build(resolved: _Resolved, vocab_file: Optional[str], bpe_file: Optional[str]) -> "ScorerParts":
    module, _, function = resolved.entry.builder.partition(":")
    builder = getattr(importlib.import_module(module), function)
    request = BuildRequest(
        entry=resolved.entry,
        files=resolved.files,
        config=resolved.config,
        preprocess=resolved.preprocess,
        saved=resolved.saved,
        vocab_file=vocab_file,
        bpe_file=bpe_file,
    )
    return builder(request)


def load(
    name: str = "ImageReward-v1.0",
    device: Union[str, torch.device, None] = None,
    download_root: Optional[str] = None,
    med_config: Optional[str] = None,
    *,
    dtype: DtypeLike = None,
    config: Any = None,
    checkpoint: Optional[str] = None,
    files: Optional[Mapping[str, str]] = None,
    preprocess: Optional[PreprocessConfig] = None,
    vocab_file: Optional[str] = None,
    bpe_file: Optional[str] = None,
    batch_size: int = 16,
    num_workers: Optional[int] = None,
    limits: ImageLimits = DEFAULT_LIMITS,
    compile: bool = False,
    int8: Optional[str] = None,
) -> "RewardScorer":
    """Load any scorer in eval mode on ``device``.

    ``name`` is a registered scorer (:func:`available_models`; case-insensitive), a
    checkpoint file (read as ImageReward, like the original package), or a folder
    written by :func:`save_pretrained`. ``checkpoint`` (or ``files``, by role, e.g.
    ``{"clip": path}`` for Aesthetic's CLIP tower) gives local weight files used as
    they are, without network or checksums; ``checkpoint`` may also be a saved folder,
    or a folder (such as a hub snapshot) holding the scorer's files under their
    registered names. Other files are fetched into ``download_root`` (default: the
    Hugging Face cache for hub files, the original package's ``~/.cache/ImageReward``
    when it holds a file, else ``~/.cache/imagereward``). ``config`` overrides the
    registered architecture; ``med_config`` is an original BERT config JSON (ImageReward
    only). ``dtype`` (``"fp32"``, ``"bf16"``, ``"fp16"`` or a ``torch.dtype``) sets the
    precision of the encoders; reward heads stay float32. Unset, it is float32, except
    on a GPU for scorers registered with a GPU precision (HPSv3: bfloat16). ``vocab_file`` / ``bpe_file``
    replace the bundled tokenizer files. ``batch_size``, ``num_workers`` (decoding
    threads) and ``limits`` (accepted images) set the engine. ``compile=True`` runs the
    encoders through ``torch.compile``. ``int8`` (a calibration file written by
    ``imagereward calibrate``; the device then defaults to the CPU) runs the linear layers on int8 matrix units: faster
    on CPUs with AMX, and approximate (see :mod:`imagereward.int8`).
    """
    from .scoring.scorer import RewardScorer

    target_device = resolve_device("cpu" if device is None and int8 is not None else device)
    target_dtype = resolve_dtype(dtype)
    if int8 is not None and (compile or target_device.type != "cpu"):
        raise ValueError("int8 scoring runs eagerly on the CPU: it goes with neither compile=True "
                         f"nor device {str(target_device)!r}")
    resolved = _resolve_with(name, download_root, med_config, config, checkpoint, files, preprocess)
    if dtype is None and target_device.type == "cuda" and resolved.entry.gpu_dtype is not None:
        target_dtype = resolve_dtype(resolved.entry.gpu_dtype)
    logger.info("load checkpoint from %s", resolved.files["weights"])
    parts = _build(resolved, vocab_file, bpe_file)
    scorer = RewardScorer(
        resolved.entry.name, parts, batch_size=batch_size, num_workers=num_workers, limits=limits
    )
    if target_dtype != torch.float32 and target_device.type == "cpu" and not cpu_has_fast(target_dtype):
        warnings.warn(
            f"{target_dtype} on this CPU has no native support (AVX512-BF16/FP16 or AMX): "
            "scoring will be much slower than in float32",
            stacklevel=2,
        )
    scorer.place(target_device, target_dtype)
    if compile:
        scorer.compile_encoders()
    if int8 is not None:
        from .int8 import quantize_int8

        quantize_int8(scorer, int8)
    logger.info("checkpoint loaded")
    return scorer


def preprocessing(
    name: str = "ImageReward-v1.0",
    download_root: Optional[str] = None,
    med_config: Optional[str] = None,
    *,
    config: Any = None,
    checkpoint: Optional[str] = None,
    files: Optional[Mapping[str, str]] = None,
    preprocess: Optional[PreprocessConfig] = None,
    vocab_file: Optional[str] = None,
    bpe_file: Optional[str] = None,
) -> PreprocessConfig:
    """The image preprocessing of the scorer that :func:`load` with these arguments gives.

    The network is built from its checkpoint as the file holds it (a bfloat16 file stays
    mapped) and dropped: it is never cast to float32 nor placed on a device, so asking
    costs the file's size in memory at most, not a float32 copy of the model (HPSv3's
    7B weights would be 30 GB). Runners ask where the weights are, to decode images
    before any scorer loads.
    """
    resolved = _resolve_with(name, download_root, med_config, config, checkpoint, files, preprocess)
    return _build(resolved, vocab_file, bpe_file).preprocess.config


def _resolve_with(
    name: str, download_root: Optional[str], med_config: Optional[str], config: Any,
    checkpoint: Optional[str], files: Optional[Mapping[str, str]], preprocess: Optional[PreprocessConfig],
) -> _Resolved:
    """What :func:`load` builds: the scorer's files, config and preprocessing, with the overrides."""
    given = dict(files or {})
    if checkpoint is not None:
        given["weights"] = checkpoint
    resolved = _resolve(name, download_root, given)
    if config is not None:
        resolved = dataclasses.replace(resolved, config=config)
    if preprocess is not None:
        resolved = dataclasses.replace(resolved, preprocess=preprocess)
    if med_config is not None:
        resolved = dataclasses.replace(resolved, config=_with_med_config(resolved, med_config))
    return resolved


def locate(
    name: str, files: Optional[Mapping[str, str]] = None, download_root: Optional[str] = None
) -> Dict[str, str]:
    """The local files ``load(name, files=files)`` would read, by role, found or downloaded,
    without building anything: a job that runs several models checks them all first."""
    return dict(_resolve(name, download_root, dict(files or {})).files)


def _with_med_config(resolved: _Resolved, med_config: str) -> ImageRewardConfig:
    config = resolved.config
    if not isinstance(config, ImageRewardConfig):
        raise TypeError(f"med_config applies to ImageReward models, not {resolved.entry.name}")
    text = TextConfig.from_med_config(med_config, encoder_width=config.vision.width)
    return dataclasses.replace(config, text=text)


def load_score(
    name: str = "CLIP",
    device: Union[str, torch.device, None] = None,
    download_root: Optional[str] = None,
    *,
    checkpoint: Optional[str] = None,
    clip_checkpoint: Optional[str] = None,
    **options: Any,
) -> Any:
    """The original package's loader of the baselines: :func:`load` for a name of
    :func:`available_scores` (``"CLIP"``, ``"BLIP"``, ``"Aesthetic"``, ...).

    ``checkpoint`` (and, for Aesthetic, ``clip_checkpoint``) are local weight files.
    Other keyword arguments are those of :func:`load`.
    """
    entry = find_entry(name)
    if entry is None or entry.name not in available_scores():
        raise UnknownModelError(f"Score {name} not found; available scores = {available_scores()}")
    files = {"weights": checkpoint, "clip": clip_checkpoint}
    given = {role: path for role, path in files.items() if path is not None and role in entry.files}
    return load(entry.name, device, download_root, files=given, **options)


def convert_checkpoint(
    source: str,
    directory: str,
    *,
    name: Optional[str] = None,
    dtype: DtypeLike = None,
    config: Any = None,
    med_config: Optional[str] = None,
    files: Optional[Mapping[str, str]] = None,
    download_root: Optional[str] = None,
) -> str:
    """Rewrite any scorer's weights as a folder that :func:`load` maps instantly.

    ``source`` is a checkpoint file or folder of scorer ``name`` (default: ImageReward,
    as a bare checkpoint is read), or a registered name to convert its downloaded
    files; ``files`` gives the scorer's other local files by role. The weights are
    checked strictly on the way; ``dtype="fp16"``/``"bf16"`` halves the file.
    Returns ``directory``.
    """
    if name is None:
        scorer = load(source, "cpu", download_root, med_config, config=config, files=files, num_workers=0)
    else:
        scorer = load(name, "cpu", download_root, med_config, config=config, checkpoint=source,
                      files=files, num_workers=0)
    return save_pretrained(scorer, directory, dtype=dtype)
