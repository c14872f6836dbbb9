"""One model spec for every runner: what to load, from which files, where, in which precision.

A :class:`ModelSpec` is plain data (JSON-able with :meth:`ModelSpec.to_dict`), so the
command line, Ray Data actors, Serve replicas and ReFL's reward all describe and load
a model the same way, through :meth:`ModelSpec.load`. Files are given by role
(``"weights"`` is the scorer's own checkpoint; Aesthetic also reads ``"clip"``); a role
whose file is another scorer's (Aesthetic's ``"clip"`` is CLIP's ``"weights"``) takes
that scorer's local file when one is given (:func:`resolve_files`).

This module imports neither torch nor any model code.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from .config import config_from_dict, config_to_dict
from .registry import find_entry, get_entry, sharing_roles

# load() keywords a spec may carry in ``options`` (``config`` is a config dataclass): those
# that decide what is built from the files, and those of the engine around it.
BUILD_OPTIONS = ("download_root", "vocab_file", "bpe_file", "config", "med_config")
ENGINE_OPTIONS = ("batch_size", "num_workers", "compile", "int8")
LOAD_OPTIONS = BUILD_OPTIONS + ENGINE_OPTIONS


@dataclass(frozen=True)
class ModelSpec:
    """A scorer to load: ``name`` (a registered name, a checkpoint file or a saved folder),
    local ``files`` by role, ``device`` (``None``: CUDA when available), ``dtype``
    (``"fp32"``, ``"bf16"``, ``"fp16"``) and further :func:`imagereward.load` ``options``.
    Paths must be readable where the spec is loaded (every node of a cluster).
    """

    name: str
    files: Mapping[str, str] = field(default_factory=dict)
    device: Optional[str] = None
    dtype: Optional[str] = None
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.options) - set(LOAD_OPTIONS))
        if unknown:
            raise ValueError(f"ModelSpec options {unknown} are not load() options {list(LOAD_OPTIONS)}")
        entry = find_entry(self.name)
        if entry is not None:
            object.__setattr__(self, "name", entry.name)  # canonical spelling
            bad = sorted(set(self.files) - set(entry.files))
            if bad:
                raise ValueError(f"{entry.name} reads no files of roles {bad}; its roles: {list(entry.files)}")
        object.__setattr__(self, "files", dict(self.files))
        object.__setattr__(self, "options", dict(self.options))

    @property
    def registered(self) -> bool:
        return find_entry(self.name) is not None

    @property
    def label(self) -> str:
        """How outputs name the model: its registered name, or with the local file it came
        from; ``[int8]`` when it runs int8 layers (approximate numbers)."""
        weights = self.files.get("weights")
        label = self.name if weights is None else f"{self.name} ({weights})"
        return f"{label} [int8]" if self.options.get("int8") else label

    def replace(self, **changes: Any) -> "ModelSpec":
        return dataclasses.replace(self, **changes)

    def load(self) -> Any:
        """The ready :class:`~imagereward.scoring.scorer.RewardScorer` (through :func:`imagereward.load`)."""
        import imagereward

        return imagereward.load(self.name, device=self.device, dtype=self.dtype, files=self.files, **self.options)

    def preprocessing(self) -> Any:
        """The scorer's :class:`~imagereward.config.PreprocessConfig`, without placing it
        (through :func:`imagereward.factory.preprocessing`)."""
        from .factory import preprocessing

        built = {key: value for key, value in self.options.items() if key in BUILD_OPTIONS}
        return preprocessing(self.name, files=self.files, **built)

    def to_dict(self) -> Dict[str, Any]:
        """Plain data (configs as ``{"type", "fields"}``), for Ray, job records and files."""
        options = dict(self.options)
        config = options.pop("config", None)
        if config is not None:
            options["config"] = {"type": type(config).__name__, "fields": config_to_dict(config)}
        return {"name": self.name, "files": dict(self.files), "device": self.device,
                "dtype": self.dtype, "options": options}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ModelSpec":
        options = dict(data.get("options") or {})
        config = options.pop("config", None)
        if config is not None:
            from . import config as configs

            options["config"] = config_from_dict(getattr(configs, config["type"]), config["fields"])
        return cls(data["name"], dict(data.get("files") or {}), data.get("device"), data.get("dtype"), options)


def resolve_files(models: Sequence[str], given: Mapping[str, Mapping[str, str]]) -> Dict[str, Dict[str, str]]:
    """Local files by role for each of ``models``: those ``given`` for it, and for each other
    role the local file given for a scorer that reads the very same file."""
    result: Dict[str, Dict[str, str]] = {}
    for model in models:
        files = dict(given.get(model, {}))
        entry = find_entry(model)
        if entry is not None:
            for role in entry.files:
                if role in files:
                    continue
                for other, other_role in sharing_roles(entry, role):
                    path = given.get(other, {}).get(other_role)
                    if path is not None:
                        files[role] = path
                        break
        result[model] = files
    return result


def parse_file_option(value: str, default_model: Optional[str]) -> Tuple[str, str, str]:
    """``[MODEL[:ROLE]=]PATH`` as ``(model, role, path)``; a bare PATH is ``default_model``'s
    weights. Raises ``ValueError`` with a message in flag terms."""
    head, separator, path = value.partition("=")
    name, _, role = head.partition(":")
    entry = find_entry(name.strip()) if separator else None
    if entry is None:  # a bare path (which may itself contain "=" or ":")
        if default_model is None:
            raise ValueError(f"{value!r}: say which model the file is for (MODEL=PATH)")
        return default_model, "weights", value
    role = role.strip() or "weights"
    if role not in entry.files:
        raise ValueError(f"{value!r}: {entry.name} has no file role {role!r} (roles: {', '.join(entry.files)})")
    return entry.name, role, path


def roles_of(models: Sequence[str], role: str) -> List[str]:
    """Which of ``models`` read a file of ``role`` (e.g. ``"clip"``)."""
    return [m for m in models if find_entry(m) is not None and role in get_entry(m).files]


__all__ = ["LOAD_OPTIONS", "ModelSpec", "parse_file_option", "resolve_files", "roles_of"]
