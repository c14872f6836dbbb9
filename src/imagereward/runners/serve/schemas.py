"""Request and response bodies of the reward server (they make its OpenAPI schema)."""

from __future__ import annotations

from typing import Annotated, Any, Dict, List, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

from ...wire import MSGPACK_TYPES

# Image bytes: base64 text in a JSON body, binary (msgpack's bin) in a msgpack body.
ImageData = Annotated[
    Union[str, bytes],
    WithJsonSchema({"type": "string", "description": "JSON: base64 of the bytes; msgpack: the bytes (bin)"}),
]


class ImageObject(BaseModel):
    """PNG, JPEG or WebP file bytes, or raw ``uint8`` pixels when ``shape`` is given."""

    model_config = ConfigDict(extra="forbid")

    data: ImageData = Field(description="the file's bytes, or raw row-major uint8 pixels")
    shape: Optional[List[int]] = Field(
        default=None,
        description="[H, W] or [H, W, C] with C in 1, 3, 4: the data are raw pixels of this shape",
    )


# Bare data is shorthand for ``{"data": data}`` (file bytes).
ImagePayload = Union[ImageData, ImageObject]


class ScoreRequest(BaseModel):
    """N independent (prompt, image) pairs: ``prompts[i]`` goes with ``images[i]``."""

    model_config = ConfigDict(extra="forbid")

    prompts: List[str]
    images: List[ImagePayload]
    model: Optional[str] = Field(default=None, description="a served model (default: the server's first)")


class ScoreResponse(BaseModel):
    scores: List[float] = Field(description="one reward per pair, in request order")
    model: str


class RankRequest(BaseModel):
    """One prompt and the images to rank for it."""

    model_config = ConfigDict(extra="forbid")

    prompt: str
    images: List[ImagePayload]
    model: Optional[str] = Field(default=None, description="a served model (default: the server's first)")


class RankResponse(BaseModel):
    ranking: List[int] = Field(description="1-based rank of each image (1 = best), in request order")
    rewards: List[float] = Field(description="reward of each image, in request order")
    model: str


class MatrixRequest(BaseModel):
    """Every prompt against every image."""

    model_config = ConfigDict(extra="forbid")

    prompts: List[str]
    images: List[ImagePayload]
    model: Optional[str] = Field(default=None, description="a served model (default: the server's first)")


class MatrixResponse(BaseModel):
    scores: List[List[float]] = Field(description="scores[p][i]: prompt p with image i")
    model: str


class RewardsRequest(BaseModel):
    """N (prompt, image) pairs scored by several served models, each image decoded once."""

    model_config = ConfigDict(extra="forbid")

    prompts: List[str]
    images: List[ImagePayload]
    models: Optional[List[str]] = Field(
        default=None, description="served models to score with (default: those weighted, else all)"
    )
    weights: Optional[Dict[str, float]] = Field(
        default=None, description="reward = sum of weight x score over these models"
    )
    normalize: Optional[Literal["none", "zscore"]] = Field(
        default=None, description="scale of each model's scores (default: the server's setting)"
    )


class RewardsResponse(BaseModel):
    scores: Dict[str, List[float]] = Field(description="each model's scores, in request order")
    reward: Optional[List[float]] = Field(default=None, description="the weighted sum, when weights are given")
    normalize: str
    models: Dict[str, str] = Field(description="each model's label (its checkpoint file, when local)")


class ErrorResponse(BaseModel):
    error: str = Field(description="kind of error, e.g. invalid_input, too_large, queue_full")
    detail: str
    index: Optional[int] = Field(default=None, description="the offending item, when one is to blame")
    model: Optional[str] = Field(default=None, description="the model to blame, when one is")


class ModelStatus(BaseModel):
    ready: bool
    label: Optional[str] = None
    device: Optional[str] = None
    dtype: Optional[str] = None
    int8: bool = Field(default=False, description="its linear layers run in int8 (approximate)")
    detail: Optional[str] = Field(default=None, description="why the model is not ready")


class ReadyResponse(BaseModel):
    ready: bool = Field(description="every served model is ready")
    models: Dict[str, ModelStatus]


def inline_schema(model: type) -> Dict[str, Any]:
    """A model's JSON schema with its ``$defs`` inlined, to embed in an OpenAPI operation."""
    schema = model.model_json_schema()
    definitions = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return resolve(definitions[ref[len("#/$defs/"):]])
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(item) for item in node]
        return node

    return resolve(schema)


def request_body(model: type) -> Dict[str, Any]:
    """``openapi_extra`` for an operation that reads and checks its own body, JSON or msgpack."""
    schema = inline_schema(model)
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": schema}, MSGPACK_TYPES[0]: {"schema": schema}},
        }
    }
