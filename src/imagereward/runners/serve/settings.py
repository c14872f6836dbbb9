"""Settings of a reward server: the models, their batching and placement, the server's limits.

One pydantic model serves as the arguments of the Serve application builder
(``serve run imagereward.runners.serve:build_app models=PickScore,HPSv2.1 ...`` or a
config file's ``args:``), of :func:`~imagereward.runners.serve.app.build_app`, and of
``imagereward serve``.

A server holds one or several models (:class:`ModelSettings`), each its own Serve
deployment with its own replicas, GPU share, batch size and queue. The model fields
given at the top level (``model``, ``files``, ``dtype``, ``max_batch_size``, ...) are
the defaults of every entry of ``models``, so a one-model server is written as
before::

    {"model": "CLIP", "max_batch_size": 64}
    {"models": "ImageReward-v1.0,PickScore", "dtype": "bf16"}
    {"models": [{"model": "PickScore", "max_batch_size": 64}, "HPSv2.1"], "gpus_per_replica": 0.5}
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ...items import DEFAULT_MAX_PIXELS, ImageLimits
from ...cpu_share import threads_for

# Fields of one model's deployment; at the top level of ServeSettings they are defaults.
MODEL_FIELDS = (
    "model", "files", "download_root", "dtype", "int8", "replicas", "gpus_per_replica", "cpus_per_replica",
    "max_batch_size", "batch_wait_ms", "max_queue_pairs",
)
FILE_ALIASES = (("checkpoint", "weights"), ("clip_checkpoint", "clip"))


def _file_aliases(data: Dict[str, Any]) -> Dict[str, Any]:
    """``checkpoint`` is ``files["weights"]``, ``clip_checkpoint`` ``files["clip"]`` (older names)."""
    data = dict(data)
    files = dict(data.get("files") or {})
    for alias, role in FILE_ALIASES:
        value = data.pop(alias, None)
        if value is not None:
            files[role] = value
    if files:
        data["files"] = files
    return data


class ModelSettings(BaseModel):
    """One served model: what to load, and its deployment's replicas, batching and queue."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str = Field("ImageReward-v1.0", description="a registered scorer (imagereward models)")
    name: Optional[str] = Field(
        None, description="how requests and responses name it (default: the registered name)"
    )
    files: Dict[str, str] = Field(
        default_factory=dict, description="local files by role ('weights', 'clip', ...) instead of downloading"
    )
    download_root: Optional[str] = None
    dtype: Literal["fp32", "bf16", "fp16"] = "fp32"
    int8: Optional[str] = Field(
        None, description="int8 calibration file (imagereward calibrate): the replicas run the linear "
        "layers in int8 on CPUs (approximate)"
    )

    replicas: int = Field(1, ge=1)
    gpus_per_replica: Optional[float] = Field(
        None, ge=0, description="default: 1 when the Ray cluster has GPUs, else 0"
    )
    cpus_per_replica: float = Field(1.0, ge=0, description="Ray CPUs per replica; also its torch threads")
    max_batch_size: int = Field(32, ge=1, description="pairs per forward pass")
    batch_wait_ms: float = Field(10.0, ge=0, description="how long a batch waits to fill up")
    max_queue_pairs: int = Field(
        1024, ge=1, description="pairs admitted and not yet scored per replica; more get 429"
    )

    @model_validator(mode="before")
    @classmethod
    def _aliases(cls, data: Any) -> Any:
        if isinstance(data, str):
            return {"model": data}
        return _file_aliases(data) if isinstance(data, dict) else data

    @field_validator("model")
    @classmethod
    def _known_model(cls, value: str) -> str:
        from ...registry import available_models, find_entry

        entry = find_entry(value)
        if entry is None:
            raise ValueError(f"unknown model {value!r}; choose from {', '.join(available_models())}")
        return entry.name

    @model_validator(mode="after")
    def _int8_on_cpus(self) -> "ModelSettings":
        if self.int8 is not None:
            if self.gpus_per_replica:
                raise ValueError(f"{self.model} runs in int8 on CPUs: gpus_per_replica must be 0")
            if self.dtype == "fp16":
                raise ValueError(f"{self.model}: int8 goes with dtype bf16 or fp32, not fp16")
        return self

    @property
    def key(self) -> str:
        """The model's name in requests and responses."""
        return self.name or self.model

    @property
    def checkpoint(self) -> Optional[str]:
        return self.files.get("weights")

    @property
    def label(self) -> str:
        """The model as responses report it (a checkpoint by its file name, not its path;
        ``[int8]`` when it runs int8 layers)."""
        label = self.key
        if self.checkpoint is not None:
            label = f"{self.key} ({os.path.basename(os.path.normpath(self.checkpoint))})"
        return f"{label} [int8]" if self.int8 is not None else label

    @property
    def threads(self) -> int:
        """torch threads of a replica: its CPU share, at least one."""
        return threads_for(self.cpus_per_replica)

    def spec(self, device: Optional[str] = None) -> Any:
        """The :class:`~imagereward.spec.ModelSpec` a replica loads."""
        from ...spec import ModelSpec

        options = {"batch_size": self.max_batch_size, "num_workers": 0}
        if self.download_root:
            options["download_root"] = self.download_root
        if self.int8 is not None:
            options["int8"] = self.int8
        dtype = None if self.dtype == "fp32" else self.dtype
        return ModelSpec(self.model, self.files, device=device, dtype=dtype, options=options)


class ServeSettings(BaseModel):
    """The whole server: its models, and the limits its ingress applies to every request."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    models: List[ModelSettings] = Field(description="the served models; the first is the default of /score")

    ingress_replicas: int = Field(1, ge=1, description="replicas of the HTTP ingress that decodes images")
    ingress_cpus: float = Field(0.5, ge=0, description="Ray CPUs per ingress replica")

    max_body_bytes: int = Field(128 * 2**20, ge=1024, description="larger requests get 413")
    max_pairs: int = Field(256, ge=1, description="pairs (or images) per request; more get 413")
    request_timeout_s: float = Field(60.0, gt=0, description="slower requests get 504")
    max_image_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1, description="larger images get 400")
    image_formats: Optional[List[str]] = Field(
        None, description="Pillow format names accepted (default: every format Pillow reads)"
    )
    api_key_env: Optional[str] = Field(
        None, description="name of the environment variable holding the API key (never the key)"
    )
    stats: Optional[str] = Field(
        None, description="reward statistics file (imagereward reward-stats) for normalize='zscore'"
    )
    normalize: Literal["none", "zscore"] = Field(
        "none", description="how /rewards scales each model's scores unless the request says"
    )
    drain_coordinator: Optional[str] = Field(
        None, description="set by imagereward serve: the actor through which a stop drains the replicas"
    )

    @model_validator(mode="before")
    @classmethod
    def _model_defaults(cls, data: Any) -> Any:
        """Top-level model fields are the defaults of every entry of ``models``."""
        if not isinstance(data, dict):
            return data
        data = _file_aliases(data)
        defaults = {key: data.pop(key) for key in MODEL_FIELDS if key in data}
        models = data.pop("models", None)
        if models is None:
            models = [defaults.get("model", "ImageReward-v1.0")]
        elif isinstance(models, str):
            models = [name.strip() for name in models.split(",") if name.strip()]
        if not isinstance(models, list):
            raise ValueError("models must be a list or a comma-separated string of model names")
        for per_model in ("files", "int8"):
            if per_model in defaults and len(models) > 1:
                raise ValueError(f"with several models, give each model's {per_model} in its own entry of models")
        entries = []
        for entry in models:
            if isinstance(entry, ModelSettings):
                entry = entry.model_dump(exclude_unset=True)
            fields = {"model": entry} if isinstance(entry, str) else _file_aliases(entry)
            if not isinstance(fields, dict):
                raise ValueError(f"a model entry must be a name or an object, got {entry!r}")
            entries.append({**{k: v for k, v in defaults.items() if k != "model"}, **fields})
        data["models"] = entries
        return data

    def model_post_init(self, _context: object) -> None:
        if not self.models:
            raise ValueError("models is empty: serve at least one model")
        keys = [entry.key for entry in self.models]
        repeated = sorted({key for key in keys if keys.count(key) > 1})
        if repeated:
            raise ValueError(f"models served twice under the same name: {repeated}; give each a distinct name")
        for entry in self.models:
            if self.max_pairs > entry.max_queue_pairs:
                raise ValueError(
                    f"max_pairs ({self.max_pairs}) must not exceed {entry.key}'s max_queue_pairs "
                    f"({entry.max_queue_pairs})"
                )
        if self.normalize == "zscore" and self.stats is None:
            raise ValueError("normalize 'zscore' needs stats: a file from imagereward reward-stats")

    # -- views -----------------------------------------------------------------------------
    @property
    def keys(self) -> List[str]:
        return [entry.key for entry in self.models]

    def entry(self, key: str) -> ModelSettings:
        for entry in self.models:
            if entry.key == key:
                return entry
        raise KeyError(key)

    @property
    def label(self) -> str:
        return ", ".join(entry.label for entry in self.models)

    @property
    def limits(self) -> ImageLimits:
        formats = tuple(self.image_formats) if self.image_formats else None
        return ImageLimits(self.max_image_pixels, formats)
