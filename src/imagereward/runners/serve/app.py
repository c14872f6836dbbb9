"""The reward server as a Ray Serve application: one ingress, one deployment per model.

The ingress (:class:`RewardServer`, FastAPI) authenticates, size-checks and parses each
request, and checks and decodes each image *once*, in worker threads, through the
item pipeline (the same decoding, limits and preprocessing as in-process scoring): an
image is opened once and run through each distinct preprocessing chain of the models
the request names, and each model's deployment (:class:`~.model.ModelReplica`) gets
its own pixels. A bad image is refused with 400 naming its index before any model
sees it. Each model batches the pairs of all concurrent requests into shared forward
passes, with its own replicas, GPU share, batch size and queue; one model's failure
(its replicas dead, its queue full) is a 503 or 429 naming it, and requests for the
other models keep being answered.

    serve run imagereward.runners.serve:build_app model=CLIP max_batch_size=64
    serve run imagereward.runners.serve:build_app models=ImageReward-v1.0,PickScore,HPSv2.1
"""

import asyncio
import logging
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Dict, Hashable, List, Mapping, Optional, Sequence, Tuple, Type, Union

import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError
from ray import serve
from ray.serve import Application

from ... import __version__
from ...errors import InputError
from ...items import collate_pixels, decode_for
from ...preprocess import ImagePreprocessor
from ...reward_stats import RewardStats, check_scaling, check_weights, normalized, weighted_reward
from ...scoring.base import ranks_from_rewards
from ...scoring.scorer import default_decode_workers
from ...wire import MSGPACK_TYPES, decode_msgpack, read_payload
from ..placement import default_gpus
from .drain import DrainWatch
from .fanout import ModelRoute, ModelRoutes
from .limits import Refusal, api_key_from_env, check_api_key, check_content_length, check_pair_count
from .metrics import ServerMetrics
from .model import ModelReplica
from .schemas import (
    ErrorResponse,
    ImageObject,
    ImagePayload,
    MatrixRequest,
    MatrixResponse,
    ModelStatus,
    RankRequest,
    RankResponse,
    ReadyResponse,
    RewardsRequest,
    RewardsResponse,
    ScoreRequest,
    ScoreResponse,
    request_body,
)
from .settings import ServeSettings

logger = logging.getLogger("ray.serve")

ERRORS = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in (
        (400, "invalid JSON or msgpack, or an item that cannot be scored (its index is given)"),
        (401, "API key missing or wrong"),
        (413, "request body or number of pairs over the limit"),
        (429, "a model's queue is full (named in 'model'): retry after Retry-After seconds"),
        (503, "the server is stopping, or a model is not available (named in 'model'): "
              "retry after Retry-After seconds"),
        (504, "not finished within the request timeout"),
    )
}

api = FastAPI(
    title="imagereward reward server",
    version=__version__,
    description="Rewards of (prompt, image) pairs from ImageReward, the baselines and newer "
    "preference models; several models per request on /rewards.",
)


def validation_refusal(error: ValidationError) -> Refusal:
    """400 for a body that does not fit its schema, naming the first offending item."""
    first = error.errors()[0]
    location = [str(part) for part in first["loc"]]
    index = next((part for part in first["loc"] if isinstance(part, int)), None)
    kind = "invalid_json" if first["type"] == "json_invalid" else "invalid_input"
    where = ".".join(location) or "body"
    return Refusal(400, kind, f"{where}: {first['msg']}", index=index)



@dataclass(frozen=True)
class Body:
    """A request's bytes, and whether they are msgpack (by its Content-Type) or JSON."""

    data: bytes
    msgpack: bool


def is_msgpack(content_type: Optional[str]) -> bool:
    """msgpack by the Content-Type; anything else is read as JSON, as a body without one is."""
    return (content_type or "").split(";", 1)[0].strip().lower() in MSGPACK_TYPES


def parse_body(body: Body, schema: Type[BaseModel]) -> Any:
    """``body`` checked against ``schema``; ``Refusal`` 400 naming what is wrong."""
    try:
        if not body.msgpack:
            return schema.model_validate_json(body.data)
        try:
            content = decode_msgpack(body.data)
        except ValueError as error:
            raise Refusal(400, "invalid_msgpack", str(error)) from None
        return schema.model_validate(content)
    except ValidationError as error:
        raise validation_refusal(error) from None


def _check_pairs(prompts: Sequence[str], images: Sequence[Any]) -> None:
    if len(prompts) != len(images):
        raise Refusal(400, "invalid_input", f"got {len(prompts)} prompts for {len(images)} images")


def _status(route: ModelRoute) -> ModelStatus:
    info = route.info or {}
    return ModelStatus(ready=bool(route.ready), label=info.get("label"), device=info.get("device"),
                       dtype=info.get("dtype"), int8=bool(info.get("int8")),
                       detail=None if route.ready else route.detail)


# The ingress's methods may use only what is defined above this line: Serve serialises the
# FastAPI application when the class is decorated.
@serve.deployment(name="RewardServer")
@serve.ingress(api)
class RewardServer:
    """An ingress replica: limits, decoding once per image, fan-out to the models, metrics."""

    def __init__(self, settings: Mapping[str, Any], models: Mapping[str, Any]) -> None:
        self.settings = ServeSettings.model_validate(settings)
        torch.set_num_threads(1)  # the ingress decodes in threads; it runs no model
        self.api_key = api_key_from_env(self.settings.api_key_env)
        self.stats = RewardStats.load(self.settings.stats) if self.settings.stats else None
        self.models = ModelRoutes(models)
        self.limits = self.settings.limits
        self.decode_pool = ThreadPoolExecutor(
            max_workers=default_decode_workers(), thread_name_prefix="imagereward-decode"
        )
        self._chains: Dict[Hashable, ImagePreprocessor] = {}
        replica = str(serve.get_replica_context().replica_id.unique_id)
        self.metrics = ServerMetrics(replica, ",".join(self.settings.keys))
        self.drain = DrainWatch(self.settings.drain_coordinator, replica)

    # -- endpoints ----------------------------------------------------------------------
    @api.post(
        "/score", response_model=ScoreResponse, responses=ERRORS, openapi_extra=request_body(ScoreRequest)
    )
    async def score(self, request: Request) -> Response:
        """Rewards of N (prompt, image) pairs from one model, in request order."""
        return await self._answer("score", request, self._score)

    @api.post(
        "/rank", response_model=RankResponse, responses=ERRORS, openapi_extra=request_body(RankRequest)
    )
    async def rank(self, request: Request) -> Response:
        """Ranks (1 = best) and rewards of N images for one prompt, as ``inference_rank``."""
        return await self._answer("rank", request, self._rank)

    @api.post(
        "/score_matrix",
        response_model=MatrixResponse,
        responses=ERRORS,
        openapi_extra=request_body(MatrixRequest),
    )
    async def score_matrix(self, request: Request) -> Response:
        """Every prompt against every image: each image is encoded once."""
        return await self._answer("score_matrix", request, self._score_matrix)

    @api.post(
        "/rewards", response_model=RewardsResponse, responses=ERRORS, openapi_extra=request_body(RewardsRequest)
    )
    async def rewards(self, request: Request) -> Response:
        """Scores of N pairs from several models (each image decoded once), and their weighted sum."""
        return await self._answer("rewards", request, self._rewards)

    @api.get("/healthz")
    async def healthz(self) -> Dict[str, str]:
        """The ingress is alive."""
        return {"status": "ok"}

    @api.get("/readyz", response_model=ReadyResponse, responses={503: ERRORS[503]})
    async def readyz(self) -> Any:
        """Which models are ready; 200 when all are, else 503 (also while the server stops)."""
        if self.drain.draining:
            return self._refuse("readyz", Refusal(503, "stopping", "the server is stopping",
                                                  headers={"Retry-After": "1"}))
        self.models.watch()
        routes = list(self.models.routes.values())
        await asyncio.gather(*(self.models.probe(route) for route in routes if route.ready is None))
        statuses = {route.key: _status(route) for route in routes}
        ready = all(status.ready for status in statuses.values())
        body = ReadyResponse(ready=ready, models=statuses).model_dump()
        return JSONResponse(body, status_code=200 if ready else 503, headers={} if ready else {"Retry-After": "2"})

    @api.get("/metrics", responses={401: ERRORS[401]})
    async def metrics(self, request: Request) -> Response:
        """Prometheus text format: the ingress's counters and one replica's of each model."""
        try:
            self._authorize(request)
        except Refusal as refusal:
            return self._refuse("metrics", refusal)
        routes = [route for route in self.models.routes.values() if route.ready is not False]
        families = await asyncio.gather(
            *(asyncio.wait_for(route.handle.metric_families.remote(), 5) for route in routes),
            return_exceptions=True,
        )
        text = self.metrics.render(f for f in families if not isinstance(f, BaseException))
        return Response(text, media_type=self.metrics.content_type)

    # -- request handling ---------------------------------------------------------------
    async def _answer(
        self, endpoint: str, request: Request, run: Callable[[Body], Awaitable[BaseModel]]
    ) -> Response:
        """Authorise, read the body within limits, run within the timeout, count it all."""
        start = time.perf_counter()
        self.drain.enter()
        try:
            if self.drain.draining:
                raise Refusal(503, "stopping", "the server is stopping; retry on another replica or later",
                              headers={"Retry-After": "1"})
            self._authorize(request)
            check_content_length(request.headers.get("content-length"), self.settings.max_body_bytes)
            body = Body(await self._read_body(request), is_msgpack(request.headers.get("content-type")))
            try:
                result = await asyncio.wait_for(run(body), self.settings.request_timeout_s)
            except asyncio.TimeoutError:
                raise Refusal(
                    504, "timeout", f"not finished within {self.settings.request_timeout_s:g} s"
                ) from None
        except Refusal as refusal:
            return self._refuse(endpoint, refusal, start)
        except asyncio.CancelledError:  # the client went away
            self.metrics.errors.labels(kind="cancelled").inc()
            raise
        except Exception:
            logger.exception("imagereward: %s failed", endpoint)
            return self._refuse(endpoint, Refusal(500, "internal", "internal server error"), start)
        finally:
            self.drain.leave()
        self.metrics.requests.labels(endpoint=endpoint, status="200").inc()
        self.metrics.latency.labels(endpoint=endpoint).observe(time.perf_counter() - start)
        return JSONResponse(result.model_dump())

    def _refuse(self, endpoint: str, refusal: Refusal, start: Optional[float] = None) -> Response:
        self.metrics.requests.labels(endpoint=endpoint, status=str(refusal.status)).inc()
        self.metrics.errors.labels(kind=refusal.kind).inc()
        if start is not None:
            self.metrics.latency.labels(endpoint=endpoint).observe(time.perf_counter() - start)
        return JSONResponse(refusal.body(), status_code=refusal.status, headers=refusal.headers)

    def _authorize(self, request: Request) -> None:
        check_api_key(self.api_key, request.headers.get("authorization"), request.headers.get("x-api-key"))

    async def _read_body(self, request: Request) -> bytes:
        limit, size, chunks = self.settings.max_body_bytes, 0, []
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise Refusal(413, "too_large", f"request body is over the limit of {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    # -- the endpoints' work --------------------------------------------------------------
    async def _score(self, body: Body) -> ScoreResponse:
        parsed = await self._parse(body, ScoreRequest)
        _check_pairs(parsed.prompts, parsed.images)
        scores, label = await self._one_model(parsed, "score", parsed.prompts)
        return ScoreResponse(scores=scores, model=label)

    async def _rank(self, body: Body) -> RankResponse:
        parsed = await self._parse(body, RankRequest)
        rewards, label = await self._one_model(parsed, "score", [parsed.prompt] * len(parsed.images))
        return RankResponse(ranking=ranks_from_rewards(rewards), rewards=rewards, model=label)

    async def _score_matrix(self, body: Body) -> MatrixResponse:
        parsed = await self._parse(body, MatrixRequest)
        if not parsed.prompts:
            raise Refusal(400, "invalid_input", "prompts is empty: give at least one prompt")
        check_pair_count(len(parsed.prompts), self.settings.max_pairs, "prompts")
        matrix, label = await self._one_model(parsed, "score_matrix", parsed.prompts)
        return MatrixResponse(scores=matrix, model=label)

    async def _one_model(self, parsed: Any, method: str, prompts: List[str]) -> Tuple[Any, str]:
        """``method`` of the model a request names (or the first served) on its decoded
        images, and the model's label."""
        (route,) = await self.models.available([self._model(parsed.model)])
        pixels = await self._decode(parsed.images, [route])
        return await self.models.call(route, method, prompts, pixels[route.key]), route.info["label"]

    async def _rewards(self, body: Body) -> RewardsResponse:
        parsed = await self._parse(body, RewardsRequest)
        _check_pairs(parsed.prompts, parsed.images)
        keys = self._models(parsed.models, parsed.weights)
        mode = parsed.normalize or self.settings.normalize
        try:
            weights = check_weights(parsed.weights, keys) if parsed.weights is not None else None
            check_scaling(mode, self.stats, keys)
        except InputError as error:
            raise Refusal(400, "invalid_input", str(error)) from None
        routes = await self.models.available(keys)
        pixels = await self._decode(parsed.images, routes)
        answers = await self.models.call_all(
            {route.key: (route, "score", parsed.prompts, pixels[route.key]) for route in routes}
        )
        scores = normalized(answers, mode, self.stats)
        reward = weighted_reward(scores, weights) if weights else None
        labels = {route.key: route.info["label"] for route in routes}
        return RewardsResponse(scores=scores, reward=reward, normalize=mode, models=labels)

    def _model(self, key: Optional[str]) -> str:
        if key is None:
            return self.models.keys[0]
        if key not in self.models.routes:
            raise Refusal(400, "unknown_model",
                          f"model {key!r} is not served here; served: {', '.join(self.models.keys)}")
        return key

    def _models(self, keys: Optional[List[str]], weights: Optional[Dict[str, float]]) -> List[str]:
        """The models a /rewards request names: ``models``, else those weighted, else all."""
        if keys is None:
            keys = list(weights) if weights else self.models.keys
        if not keys:
            raise Refusal(400, "invalid_input", "models is empty: name at least one served model")
        if len(set(keys)) != len(keys):
            raise Refusal(400, "invalid_input", f"models names a model twice: {keys}")
        return [self._model(key) for key in keys]

    async def _parse(self, body: Body, schema: Type[BaseModel]) -> Any:
        loop = asyncio.get_running_loop()
        parsed = await loop.run_in_executor(self.decode_pool, parse_body, body, schema)
        images = parsed.images
        if not images:
            raise Refusal(400, "invalid_input", "images is empty: give at least one image")
        check_pair_count(len(images), self.settings.max_pairs, "images")
        return parsed

    async def _decode(
        self, images: Sequence[ImagePayload], routes: Sequence[ModelRoute]
    ) -> Dict[str, torch.Tensor]:
        """Each model's pixels ``[N, 3, S, S]``: every image opened once, run through each
        distinct chain of ``routes``; 400 naming the first image that cannot be scored."""
        configs = {route.key: route.info["preprocess"] for route in routes}
        chains = {config: self._chain(config) for config in set(configs.values())}
        loop = asyncio.get_running_loop()
        jobs = [
            loop.run_in_executor(self.decode_pool, self._decode_one, index, image, chains)
            for index, image in enumerate(images)
        ]
        results = await asyncio.gather(*jobs, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        stacked = {config: collate_pixels([result[config] for result in results]) for config in chains}
        return {key: stacked[config] for key, config in configs.items()}

    def _chain(self, config: Hashable) -> ImagePreprocessor:
        chain = self._chains.get(config)
        if chain is None:
            chain = self._chains[config] = ImagePreprocessor(config)  # type: ignore[arg-type]
        return chain

    def _decode_one(
        self, index: int, image: ImagePayload, chains: Mapping[Hashable, ImagePreprocessor]
    ) -> Dict[Hashable, torch.Tensor]:
        payload = {"data": image.data, "shape": image.shape} if isinstance(image, ImageObject) else image
        name = f"images[{index}]"
        try:
            pixels = decode_for(chains, read_payload(payload), self.limits, name)
        except InputError as error:
            detail = str(error) if str(error).startswith(name) else f"{name}: {error}"
            raise Refusal(400, "invalid_image", detail, index=index) from None
        self.metrics.images_decoded.inc()
        return pixels


def _cluster_gpus() -> float:
    import ray

    return ray.cluster_resources().get("GPU", 0.0) if ray.is_initialized() else 0.0


def deployment_name(key: str) -> str:
    """A model's deployment: ``Model-<name>`` in the characters Serve's names allow."""
    return "Model-" + re.sub(r"[^A-Za-z0-9_.-]", "_", key)


def build_app(args: Union[ServeSettings, Dict[str, Any]]) -> Application:
    """The Serve application for ``args`` (a :class:`ServeSettings` or a dict of its fields).

    This is the application builder for ``serve run imagereward.runners.serve:build_app key=value ...``
    and for ``import_path`` in a Serve config file.
    """
    settings = ServeSettings.model_validate(args)
    cluster_gpus = _cluster_gpus()
    models = {}
    for entry in settings.models:
        gpus = entry.gpus_per_replica
        if gpus is None:
            gpus = default_gpus(cluster_gpus, int8=entry.int8 is not None)
        models[entry.key] = ModelReplica.options(
            name=deployment_name(entry.key),
            num_replicas=entry.replicas,
            # Let every call reach the replica: its own bounded queue answers 429.
            max_ongoing_requests=entry.max_queue_pairs + 64,
            ray_actor_options={"num_cpus": entry.cpus_per_replica, "num_gpus": gpus},
        ).bind(entry.model_dump())
    queue = sum(entry.max_queue_pairs for entry in settings.models)
    return RewardServer.options(
        num_replicas=settings.ingress_replicas,
        max_ongoing_requests=queue + 64,
        ray_actor_options={"num_cpus": settings.ingress_cpus},
    ).bind(settings.model_dump(), models)
