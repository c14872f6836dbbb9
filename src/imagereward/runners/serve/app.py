"""The reward server as a Ray Serve application: FastAPI ingress, dynamic batching, limits.

Each replica holds one scorer. A request is authenticated, size-checked, parsed
and its images decoded through the scorer's own item pipeline (the same decoding,
limits and preprocessing as in-process scoring) in worker threads *before* it joins
the batch queue, so a bad image is refused with 400 naming its index and never
reaches a batch shared with other requests. Admitted pairs join one
``@serve.batch`` queue as single items: pairs of many concurrent requests share
one forward pass, and each request awaits exactly its own items, in its order.

    serve run imagereward.runners.serve:build_app model=CLIP max_batch_size=64
"""

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Awaitable, Callable, Dict, List, Mapping, Optional, Sequence, Type, Union

import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from PIL import Image
from pydantic import BaseModel, ValidationError
from ray import serve
from ray.serve import Application

from ... import __version__
from ...errors import InputError
from ...items import decode
from ...scoring.base import ranks_from_rewards
from ...scoring.scorer import default_decode_workers
from ...wire import read_payload
from .drain import DrainWatch
from .limits import (
    AdmissionGate,
    Refusal,
    api_key_from_env,
    check_api_key,
    check_content_length,
    check_pair_count,
)
from .metrics import ServerMetrics
from .schemas import (
    ErrorResponse,
    ImageObject,
    MatrixRequest,
    MatrixResponse,
    RankRequest,
    RankResponse,
    ReadyResponse,
    ScoreRequest,
    ScoreResponse,
    request_body,
)
from .settings import ServeSettings

logger = logging.getLogger("ray.serve")

ERRORS = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in (
        (400, "invalid JSON, or an item that cannot be scored (its index is given)"),
        (401, "API key missing or wrong"),
        (413, "request body or number of pairs over the limit"),
        (429, "queue full: retry after Retry-After seconds"),
        (503, "the server is stopping: retry after Retry-After seconds"),
        (504, "not finished within the request timeout"),
    )
}

api = FastAPI(
    title="imagereward reward server",
    version=__version__,
    description="Rewards of (prompt, image) pairs from ImageReward or a baseline scorer.",
)


def load_scorer(settings: ServeSettings) -> Any:
    """The scorer of ``settings``, on this replica's GPU if it has one, with the server's limits.

    Images arrive decoded in the request threads: the scorer keeps no decoding threads.
    """
    from ...allocator import keep_freed_memory

    keep_freed_memory()  # the replica's process is the server's own; set before the model loads
    scorer = settings.spec("cuda" if torch.cuda.is_available() else "cpu").load()
    scorer.limits = settings.limits
    return scorer


def validation_refusal(error: ValidationError) -> Refusal:
    """400 for a body that does not fit its schema, naming the first offending item."""
    first = error.errors()[0]
    location = [str(part) for part in first["loc"]]
    index = next((part for part in first["loc"] if isinstance(part, int)), None)
    kind = "invalid_json" if first["type"] == "json_invalid" else "invalid_input"
    where = ".".join(location) or "body"
    return Refusal(400, kind, f"{where}: {first['msg']}", index=index)


@serve.deployment(name="RewardServer")
@serve.ingress(api)
class RewardServer:
    """One replica: a scorer, its batch queue, its limits and its metrics."""

    def __init__(self, settings: Mapping[str, Any]) -> None:
        self.settings = ServeSettings.model_validate(settings)
        self.api_key = api_key_from_env(self.settings.api_key_env)
        self.scorer = load_scorer(self.settings)
        self.model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="imagereward-model")
        self.decode_pool = ThreadPoolExecutor(
            max_workers=default_decode_workers(), thread_name_prefix="imagereward-decode"
        )
        self.gate = AdmissionGate(self.settings.max_queue_pairs)
        replica = serve.get_replica_context().replica_id.unique_id
        self.metrics = ServerMetrics(str(replica), self.settings.label)
        self.drain = DrainWatch(self.settings.drain_coordinator, str(replica))
        self._batched.set_max_batch_size(self.settings.max_batch_size)
        self._batched.set_batch_wait_timeout_s(self.settings.batch_wait_ms / 1000.0)
        size = self.scorer.preprocess.config.image_size
        self.scorer.score_batch([""], [Image.new("RGB", (size, size))])  # warm up

    # -- endpoints ----------------------------------------------------------------------
    @api.post(
        "/score", response_model=ScoreResponse, responses=ERRORS, openapi_extra=request_body(ScoreRequest)
    )
    async def score(self, request: Request) -> Response:
        """Rewards of N (prompt, image) pairs, in request order."""
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

    @api.get("/healthz")
    async def healthz(self) -> Dict[str, str]:
        """The replica is alive."""
        return {"status": "ok"}

    @api.get("/readyz", response_model=ReadyResponse, responses={503: ERRORS[503]})
    async def readyz(self) -> Any:
        """The model is loaded and warmed up, and the server is not stopping (else 503).

        Serve routes requests to a replica only once its constructor (loading and
        warm-up) has finished; until one is ready, the proxy holds requests, so a
        probe's own timeout reads as "not ready".
        """
        if self.drain.draining:
            return self._refuse("readyz", Refusal(503, "stopping", "the server is stopping",
                                                  headers={"Retry-After": "1"}))
        return ReadyResponse(
            ready=True,
            model=self.settings.label,
            device=str(self.scorer.device),
            dtype=str(self.scorer.compute_dtype).replace("torch.", ""),
        )

    @api.get("/metrics", responses={401: ERRORS[401]})
    async def metrics(self, request: Request) -> Response:
        """Prometheus text format: this replica's counters and histograms."""
        try:
            self._authorize(request)
        except Refusal as refusal:
            return self._refuse("metrics", refusal)
        self.metrics.queue_depth.set(self.gate.depth)
        return Response(self.metrics.render(), media_type=self.metrics.content_type)

    # -- request handling ---------------------------------------------------------------
    async def _answer(
        self, endpoint: str, request: Request, run: Callable[[bytes], Awaitable[BaseModel]]
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
            body = await self._read_body(request)
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

    async def _score(self, body: bytes) -> ScoreResponse:
        parsed = await self._parse(body, ScoreRequest)
        if len(parsed.prompts) != len(parsed.images):
            raise Refusal(
                400, "invalid_input", f"got {len(parsed.prompts)} prompts for {len(parsed.images)} images"
            )
        pixels = await self._decode(parsed.images)
        scores = await self._score_pairs(parsed.prompts, pixels)
        self.metrics.pairs.labels(endpoint="score").inc(len(scores))
        return ScoreResponse(scores=scores, model=self.settings.label)

    async def _rank(self, body: bytes) -> RankResponse:
        parsed = await self._parse(body, RankRequest)
        pixels = await self._decode(parsed.images)
        rewards = await self._score_pairs([parsed.prompt] * len(pixels), pixels)
        self.metrics.pairs.labels(endpoint="rank").inc(len(rewards))
        return RankResponse(ranking=ranks_from_rewards(rewards), rewards=rewards, model=self.settings.label)

    async def _score_matrix(self, body: bytes) -> MatrixResponse:
        parsed = await self._parse(body, MatrixRequest)
        if not parsed.prompts:
            raise Refusal(400, "invalid_input", "prompts is empty: give at least one prompt")
        check_pair_count(len(parsed.prompts), self.settings.max_pairs, "prompts")
        pixels = await self._decode(parsed.images)
        self.gate.admit(len(pixels))  # the queue holds images; each is encoded once
        try:
            loop = asyncio.get_running_loop()
            matrix = await loop.run_in_executor(
                self.model_thread, self.scorer.score_pixel_matrix, parsed.prompts, torch.stack(pixels)
            )
        finally:
            self.gate.release(len(pixels))
        self.metrics.pairs.labels(endpoint="score_matrix").inc(matrix.numel())
        return MatrixResponse(scores=matrix.tolist(), model=self.settings.label)

    async def _parse(self, body: bytes, schema: Type[BaseModel]) -> Any:
        loop = asyncio.get_running_loop()
        try:
            parsed = await loop.run_in_executor(self.decode_pool, schema.model_validate_json, body)
        except ValidationError as error:
            raise validation_refusal(error) from None
        images = parsed.images
        if not images:
            raise Refusal(400, "invalid_input", "images is empty: give at least one image")
        check_pair_count(len(images), self.settings.max_pairs, "images")
        return parsed

    async def _decode(self, images: Sequence[Union[str, ImageObject]]) -> List[torch.Tensor]:
        """Each image as the scorer's pixels ``[3, S, S]``, or 400 naming it."""
        loop = asyncio.get_running_loop()
        jobs = [
            loop.run_in_executor(self.decode_pool, self._decode_one, index, image)
            for index, image in enumerate(images)
        ]
        results = await asyncio.gather(*jobs, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return results

    def _decode_one(self, index: int, image: Union[str, ImageObject]) -> torch.Tensor:
        payload = image if isinstance(image, str) else {"data": image.data, "shape": image.shape}
        name = f"images[{index}]"
        try:
            return decode(self.scorer.preprocess, read_payload(payload), self.scorer.limits, name)
        except InputError as error:
            detail = str(error) if str(error).startswith(name) else f"{name}: {error}"
            raise Refusal(400, "invalid_image", detail, index=index) from None

    async def _score_pairs(self, prompts: List[str], pixels: List[torch.Tensor]) -> List[float]:
        """Admit the pairs, put each in the batch queue, await all of them in order."""
        self.gate.admit(len(pixels))
        try:
            return await asyncio.gather(*(self._batched(p, x) for p, x in zip(prompts, pixels)))
        finally:
            self.gate.release(len(pixels))

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.01)
    async def _batched(self, prompts: List[str], pixels: List[torch.Tensor]) -> List[float]:
        """One forward pass for pairs of any number of requests (each decoded and checked alone)."""
        self.metrics.batch_size.observe(len(prompts))
        start = time.perf_counter()
        loop = asyncio.get_running_loop()
        results = await loop.run_in_executor(
            self.model_thread, self.scorer.score_pixels, prompts, torch.stack(pixels)
        )
        self.gate.observe_throughput(len(prompts), time.perf_counter() - start)
        return results


def _cluster_has_gpus() -> bool:
    import ray

    return ray.is_initialized() and ray.cluster_resources().get("GPU", 0) > 0


def build_app(args: Union[ServeSettings, Dict[str, Any]]) -> Application:
    """The Serve application for ``args`` (a :class:`ServeSettings` or a dict of its fields).

    This is the application builder for ``serve run imagereward.runners.serve:build_app key=value ...``
    and for ``import_path`` in a Serve config file.
    """
    settings = ServeSettings.model_validate(args)
    gpus = settings.gpus_per_replica
    if gpus is None:
        gpus = 1.0 if _cluster_has_gpus() else 0.0
    return RewardServer.options(
        num_replicas=settings.replicas,
        # Let every request reach the replica: its own bounded queue answers 429.
        max_ongoing_requests=settings.max_queue_pairs + 64,
        ray_actor_options={"num_cpus": settings.cpus_per_replica, "num_gpus": gpus},
    ).bind(settings.model_dump())
