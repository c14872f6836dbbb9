"""Settings of a reward server: the model, the batching, the limits, the placement.

One pydantic model serves as the arguments of the Serve application builder
(``serve run imagereward.runners.serve:build_app model=CLIP ...`` or a config file's
``args:``), of :func:`~imagereward.runners.serve.app.build_app`, and of ``imagereward serve``.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ...items import DEFAULT_MAX_PIXELS, ImageLimits

class ServeSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str = Field("ImageReward-v1.0", description="a registered scorer (imagereward models)")
    files: Dict[str, str] = Field(
        default_factory=dict, description="local files by role ('weights', 'clip', ...) instead of downloading"
    )
    download_root: Optional[str] = None
    dtype: Literal["fp32", "bf16", "fp16"] = "fp32"

    replicas: int = Field(1, ge=1)
    gpus_per_replica: Optional[float] = Field(
        None, ge=0, description="default: 1 when the Ray cluster has GPUs, else 0"
    )
    cpus_per_replica: float = Field(1.0, ge=0)

    max_batch_size: int = Field(32, ge=1, description="pairs per forward pass")
    batch_wait_ms: float = Field(10.0, ge=0, description="how long a batch waits to fill up")

    max_body_bytes: int = Field(128 * 2**20, ge=1024, description="larger requests get 413")
    max_pairs: int = Field(256, ge=1, description="pairs (or images) per request; more get 413")
    max_queue_pairs: int = Field(
        1024, ge=1, description="pairs admitted and not yet scored per replica; more get 429"
    )
    request_timeout_s: float = Field(60.0, gt=0, description="slower requests get 504")
    max_image_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1, description="larger images get 400")
    image_formats: Optional[List[str]] = Field(
        None, description="Pillow format names accepted (default: every format Pillow reads)"
    )
    api_key_env: Optional[str] = Field(
        None, description="name of the environment variable holding the API key (never the key)"
    )
    drain_coordinator: Optional[str] = Field(
        None, description="set by imagereward serve: the actor through which a stop drains the replicas"
    )

    @model_validator(mode="before")
    @classmethod
    def _file_aliases(cls, data: Any) -> Any:
        """``checkpoint`` is ``files["weights"]``, ``clip_checkpoint`` ``files["clip"]`` (older names)."""
        if isinstance(data, dict):
            data = dict(data)
            files = dict(data.get("files") or {})
            for alias, role in (("checkpoint", "weights"), ("clip_checkpoint", "clip")):
                value = data.pop(alias, None)
                if value is not None:
                    files[role] = value
            data["files"] = files
        return data

    @field_validator("model")
    @classmethod
    def _known_model(cls, value: str) -> str:
        from ...registry import available_models, find_entry

        entry = find_entry(value)
        if entry is None:
            raise ValueError(f"unknown model {value!r}; choose from {', '.join(available_models())}")
        return entry.name

    def model_post_init(self, _context: object) -> None:
        if self.max_pairs > self.max_queue_pairs:
            raise ValueError(
                f"max_pairs ({self.max_pairs}) must not exceed max_queue_pairs ({self.max_queue_pairs})"
            )

    @property
    def checkpoint(self) -> Optional[str]:
        return self.files.get("weights")

    @property
    def label(self) -> str:
        """The model's name as responses report it (a checkpoint by its file name, not its path)."""
        if self.checkpoint is None:
            return self.model
        return f"{self.model} ({os.path.basename(os.path.normpath(self.checkpoint))})"

    @property
    def limits(self) -> ImageLimits:
        formats = tuple(self.image_formats) if self.image_formats else None
        return ImageLimits(self.max_image_pixels, formats)

    def spec(self, device: Optional[str] = None) -> Any:
        """The :class:`~imagereward.spec.ModelSpec` a replica loads."""
        from ...spec import ModelSpec

        options = {"batch_size": self.max_batch_size, "num_workers": 0}
        if self.download_root:
            options["download_root"] = self.download_root
        dtype = None if self.dtype == "fp32" else self.dtype
        return ModelSpec(self.model, self.files, device=device, dtype=dtype, options=options)
