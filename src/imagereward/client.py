"""Clients for the reward server (``imagereward serve``); they need only ``httpx`` and ``msgpack``.

>>> from imagereward.client import RewardClient
>>> client = RewardClient("http://127.0.0.1:8000")
>>> client.score(["a cat", "a dog"], ["cat.png", dog_pil_image])
[0.31, -1.2]
>>> client.rewards(prompts, images, weights={"PickScore": 1.0, "HPSv2.1": 0.5}).reward

:class:`AsyncRewardClient` has the same methods for asyncio trainers.

Images may be PIL images, ``uint8`` numpy arrays ``[H, W(, C)]``, float numpy
arrays ``[H, W, C]`` or float torch tensors ``[C, H, W]`` in [0, 1], ``uint8``
torch tensors ``[C, H, W]``, paths, or one batch array/tensor ``[N, ...]``.
Pixels travel raw and files as their bytes (see :mod:`imagereward.wire`), so the
server scores exactly what :meth:`~imagereward.scoring.scorer.RewardScorer.score_batch`
would score in-process. Bodies go as msgpack, with the images' bytes as they are
(``wire="json"`` sends them base64 in JSON, for servers of another make or a proxy that
reads JSON only). Requests refused with 429 or 503, and connection failures,
are retried with exponential backoff (honouring ``Retry-After``), within an optional
total deadline.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import itertools
import os
import random
import ssl
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image

from .errors import ImageNotFoundError, ImageRewardError, ImageTypeError, InputError, OptionsError
from .prompts import check_prompt, check_prompts
from .wire import WireImage, check_wire, encode_body, file_image, msgpack_module, pil_image, raw_image, uint8_pixels

if TYPE_CHECKING:  # pragma: no cover
    from .scoring.base import RankResult

RETRY_STATUSES = (429, 503)


class RewardServerError(ImageRewardError, RuntimeError):
    """The server refused or failed a request; ``index`` names the bad item and ``model`` the
    model to blame, when there is one."""

    def __init__(self, status_code: int, kind: str, detail: str, index: Optional[int] = None,
                 model: Optional[str] = None) -> None:
        super().__init__(f"reward server answered {status_code} ({kind}): {detail}")
        self.status_code, self.kind, self.detail, self.index = status_code, kind, detail, index
        self.model = model


# -- images to wire form -----------------------------------------------------------------
def _array_image(array: np.ndarray, index: int, channels_first: bool) -> WireImage:
    try:
        return raw_image(uint8_pixels(array, channels_first))
    except InputError as error:
        raise type(error)(f"images[{index}]: {error}") from None


def _path_image(path: str, index: int) -> WireImage:
    """A file's bytes as they are: the server decodes them as ``score`` decodes the path."""
    if not os.path.isfile(path):
        raise ImageNotFoundError(path)
    try:
        with open(path, "rb") as file:
            return file_image(file.read())
    except OSError as error:
        raise InputError(f"images[{index}]: cannot read image file {path}: {error}") from None


def encode_image(image: Any, index: int = 0) -> WireImage:
    """One image in the form the server reads (see the module docstring for what is accepted)."""
    if isinstance(image, Image.Image):
        return pil_image(image)
    if isinstance(image, (str, os.PathLike)):
        return _path_image(os.fspath(image), index)
    if isinstance(image, np.ndarray):
        return _array_image(image, index, channels_first=False)
    if hasattr(image, "detach") and hasattr(image, "numpy"):  # a torch tensor
        return _array_image(image.detach().cpu().numpy(), index, channels_first=True)
    raise ImageTypeError(
        f"images[{index}]: expected a PIL image, a path, a numpy array or a torch tensor, "
        f"got {type(image).__name__}"
    )


def encode_images(images: Any) -> List[WireImage]:
    """A list of images, or one batch ``[N, ...]`` array or tensor, in wire form."""
    if (isinstance(images, np.ndarray) or hasattr(images, "detach")) and images.ndim == 4:
        images = list(images)
    if not isinstance(images, (list, tuple)):
        raise ImageTypeError(f"images must be a list, a tuple or a 4-d batch, got {type(images).__name__}")
    return [encode_image(image, index) for index, image in enumerate(images)]


# -- requests and retries, shared by both clients ------------------------------------------
@dataclass(frozen=True)
class Rewards:
    """A ``/rewards`` answer: each model's scores, and their weighted sum when weights were given."""

    scores: Dict[str, np.ndarray]
    reward: Optional[np.ndarray]
    normalize: str
    models: Dict[str, str]


@dataclass(frozen=True)
class Call:
    """One request: what to send (its ``images`` in wire form), and how to read the answer."""

    method: str
    path: str
    body: Optional[Dict[str, Any]]
    read: Callable[[Dict[str, Any]], Any]


def _with_model(body: Dict[str, Any], model: Optional[str]) -> Dict[str, Any]:
    if model is not None:
        body["model"] = model
    return body


def score_call(prompts: Union[str, Sequence[str]], images: Any, model: Optional[str] = None) -> Call:
    encoded = encode_images(images)
    body = _with_model({"prompts": _prompt_list(prompts, len(encoded)), "images": encoded}, model)
    return Call("POST", "/score", body, lambda reply: reply["scores"])


def rank_call(prompt: str, images: Any, model: Optional[str] = None) -> Call:
    check_prompt(prompt)

    def read(reply: Dict[str, Any]) -> "RankResult":
        from .scoring.base import RankResult  # imports torch: only when ranking

        return RankResult(reply["ranking"], reply["rewards"])

    return Call("POST", "/rank", _with_model({"prompt": prompt, "images": encode_images(images)}, model), read)


def matrix_call(prompts: Sequence[str], images: Any, model: Optional[str] = None) -> Call:
    body = _with_model({"prompts": check_prompts(prompts), "images": encode_images(images)}, model)
    return Call("POST", "/score_matrix", body, lambda reply: np.asarray(reply["scores"], dtype=np.float32))


def rewards_call(
    prompts: Union[str, Sequence[str]],
    images: Any,
    models: Optional[Sequence[str]] = None,
    weights: Optional[Mapping[str, float]] = None,
    normalize: Optional[str] = None,
) -> Call:
    encoded = encode_images(images)
    body: Dict[str, Any] = {"prompts": _prompt_list(prompts, len(encoded)), "images": encoded}
    if models is not None:
        body["models"] = list(models)
    if weights is not None:
        body["weights"] = dict(weights)
    if normalize is not None:
        body["normalize"] = normalize

    def read(reply: Dict[str, Any]) -> Rewards:
        reward = reply.get("reward")
        return Rewards(
            scores={model: np.asarray(values, dtype=np.float32) for model, values in reply["scores"].items()},
            reward=None if reward is None else np.asarray(reward, dtype=np.float32),
            normalize=reply["normalize"],
            models=reply["models"],
        )

    return Call("POST", "/rewards", body, read)


def ready_call() -> Call:
    return Call("GET", "/readyz", None, lambda reply: reply)


@dataclass(frozen=True)
class RetryPolicy:
    """When to try a request again: after 429/503 or a failed connection, ``retries`` times at
    most, waiting ``backoff * 2**attempt`` seconds (with jitter, at most ``max_backoff``, or the
    server's ``Retry-After``), and never past ``deadline`` seconds from the first attempt."""

    retries: int = 5
    backoff: float = 0.5
    max_backoff: float = 10.0
    deadline: Optional[float] = None

    def end(self) -> Optional[float]:
        return None if self.deadline is None else time.monotonic() + self.deadline

    def delay(self, attempt: int, retry_after: Optional[str], end: Optional[float]) -> Optional[float]:
        """Seconds to wait before the next attempt, or None to give up."""
        if attempt >= self.retries:
            return None
        delay = self.backoff * (2 ** attempt) * random.uniform(0.5, 1.0)
        if retry_after is not None and retry_after.isdigit():
            delay = float(retry_after)
        delay = min(delay, self.max_backoff)
        if end is not None and time.monotonic() + delay >= end:
            return None
        return delay

    def timeout(self, per_attempt: float, end: Optional[float]) -> float:
        if end is None:
            return per_attempt
        left = end - time.monotonic()
        if left <= 0:
            raise DeadlineError(f"no answer within the deadline of {self.deadline:g} s")
        return min(per_attempt, left)


class DeadlineError(ImageRewardError, TimeoutError):
    """The request was not answered within the client's total deadline (retries included)."""


def tls_context() -> ssl.SSLContext:
    """The certificate-verifying TLS context every client of this process shares.

    httpx builds a new one for each client it opens, reading the whole CA bundle again:
    about 20 ms of CPU per client, spent even for ``http://`` URLs (a trainer that opens a
    client per worker or per step pays it each time, on the cores it trains with). The
    CAs are what httpx reads by default: ``SSL_CERT_FILE``, else ``SSL_CERT_DIR``, else
    certifi's bundle; a change of either variable makes a new context.
    """
    cafile = os.environ.get("SSL_CERT_FILE") or None
    return _tls_context(cafile, None if cafile else os.environ.get("SSL_CERT_DIR") or None)


@functools.lru_cache(maxsize=None)
def _tls_context(cafile: Optional[str], capath: Optional[str]) -> ssl.SSLContext:
    if cafile is None and capath is None:
        import certifi  # httpx's own dependency

        return ssl.create_default_context(cafile=certifi.where())
    try:
        return ssl.create_default_context(cafile=cafile, capath=capath)
    except (OSError, ssl.SSLError) as error:  # neither names the file
        setting = f"SSL_CERT_FILE={cafile}" if cafile else f"SSL_CERT_DIR={capath}"
        raise OptionsError(f"{setting}: cannot read CA certificates there: {error}") from None


def _retryable(httpx: Any) -> Tuple[type, ...]:
    return (httpx.NetworkError, httpx.ConnectTimeout, httpx.RemoteProtocolError)


class _Client:
    """What both clients share: settings, the transport they open, and when to retry."""

    _transport = "Client"  # the httpx class: Client or AsyncClient

    def __init__(
        self,
        url: str = "http://127.0.0.1:8000",
        api_key: Optional[str] = None,
        *,
        timeout: float = 120.0,
        retries: int = 5,
        backoff: float = 0.5,
        max_backoff: float = 10.0,
        deadline: Optional[float] = None,
        wire: str = "msgpack",
    ) -> None:
        import httpx

        check_wire(wire)
        if wire == "msgpack":
            msgpack_module()  # says how to install it, before any request
        self._httpx = httpx
        self.wire = wire
        self.timeout = timeout
        self.policy = RetryPolicy(retries, backoff, max_backoff, deadline)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = getattr(httpx, self._transport)(
            base_url=url.rstrip("/"), headers=headers, timeout=timeout, verify=tls_context()
        )

    def _retry_delay(self, attempt: int, response: Any, end: Optional[float]) -> Optional[float]:
        """Seconds to wait before trying again after ``response`` (429/503 only), or None to answer."""
        if response.status_code not in RETRY_STATUSES:
            return None
        return self.policy.delay(attempt, response.headers.get("retry-after"), end)

    def _content(self, call: Call) -> Dict[str, Any]:
        """The request's body and media type, as ``httpx.request`` keywords."""
        if call.body is None:
            return {}
        content, media_type = encode_body(call.body, self.wire)
        return {"content": content, "headers": {"Content-Type": media_type}}

    def _answer(self, call: Call, response: Any) -> Any:
        if response.status_code != 200:
            raise _server_error(response)
        return call.read(response.json())


class RewardClient(_Client):
    """Scores images on a reward server (one model, or several with :meth:`rewards`).

    ``timeout`` is seconds per attempt and ``deadline`` (optional) seconds in all,
    retries included; ``retries`` is how many times a request refused with 429/503
    or failed to connect is tried again (see :class:`RetryPolicy`). ``model`` picks
    a served model (default: the server's first). ``wire`` is the body's format:
    ``"msgpack"`` (images as bytes) or ``"json"`` (images base64).
    """

    # -- scoring ------------------------------------------------------------------------
    def score(self, prompts: Union[str, Sequence[str]], images: Any, model: Optional[str] = None) -> List[float]:
        """Rewards of N (prompt, image) pairs, in order; one prompt (a str) goes with every image."""
        return self._send(score_call(prompts, images, model))

    def rank(self, prompt: str, images: Any, model: Optional[str] = None) -> "RankResult":
        """Ranks (1 = best) and rewards of images for one prompt."""
        return self._send(rank_call(prompt, images, model))

    def score_matrix(self, prompts: Sequence[str], images: Any, model: Optional[str] = None) -> np.ndarray:
        """Scores of every prompt with every image, ``float32 [P, I]``."""
        return self._send(matrix_call(prompts, images, model))

    def rewards(
        self,
        prompts: Union[str, Sequence[str]],
        images: Any,
        models: Optional[Sequence[str]] = None,
        weights: Optional[Mapping[str, float]] = None,
        normalize: Optional[str] = None,
    ) -> Rewards:
        """Each model's scores of N pairs (every image decoded once on the server) and, with
        ``weights``, their weighted sum; ``normalize`` ``"zscore"`` uses the server's statistics."""
        return self._send(rewards_call(prompts, images, models, weights, normalize))

    def reward_fn(
        self, images: Any, prompts: Sequence[str], metadata: Any = None
    ) -> Tuple[np.ndarray, Dict[str, Any]]:
        """The reward function shape of DDPO-style trainers: ``(rewards, info)`` from the server's
        first model (see :mod:`imagereward.rl` for several models, weights and local scoring)."""
        start = time.perf_counter()
        reply = self._send(dataclasses.replace(score_call(prompts, images), read=lambda reply: reply))
        info = {"model": reply["model"], "seconds": time.perf_counter() - start}
        return np.asarray(reply["scores"], dtype=np.float32), info

    # -- service ----------------------------------------------------------------------
    def ready(self) -> Dict[str, Any]:
        """The server's ``/readyz`` answer (raises :class:`RewardServerError` when not ready)."""
        return self._send(ready_call())

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> "RewardClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- transport --------------------------------------------------------------------
    def _send(self, call: Call) -> Any:
        end = self.policy.end()
        content = self._content(call)
        for attempt in itertools.count():
            try:
                response = self._client.request(call.method, call.path, **content,
                                                timeout=self.policy.timeout(self.timeout, end))
            except _retryable(self._httpx):
                delay = self.policy.delay(attempt, None, end)
                if delay is None:
                    raise
            else:
                delay = self._retry_delay(attempt, response, end)
                if delay is None:
                    return self._answer(call, response)
            time.sleep(delay)
        raise AssertionError("unreachable")


class AsyncRewardClient(_Client):
    """:class:`RewardClient` for asyncio trainers: the same methods, awaited, on ``httpx.AsyncClient``.

    Images and bodies are encoded in a worker thread, so a large batch does not stall the
    event loop.

    >>> async with AsyncRewardClient("http://127.0.0.1:8000") as client:
    ...     result = await client.rewards(prompts, images, weights={"PickScore": 1.0, "HPSv2.1": 1.0})
    """

    _transport = "AsyncClient"

    async def score(self, prompts: Union[str, Sequence[str]], images: Any, model: Optional[str] = None) -> List[float]:
        return await self._send(await asyncio.to_thread(score_call, prompts, images, model))

    async def rank(self, prompt: str, images: Any, model: Optional[str] = None) -> "RankResult":
        return await self._send(await asyncio.to_thread(rank_call, prompt, images, model))

    async def score_matrix(self, prompts: Sequence[str], images: Any, model: Optional[str] = None) -> np.ndarray:
        return await self._send(await asyncio.to_thread(matrix_call, prompts, images, model))

    async def rewards(
        self,
        prompts: Union[str, Sequence[str]],
        images: Any,
        models: Optional[Sequence[str]] = None,
        weights: Optional[Mapping[str, float]] = None,
        normalize: Optional[str] = None,
    ) -> Rewards:
        call = await asyncio.to_thread(rewards_call, prompts, images, models, weights, normalize)
        return await self._send(call)

    async def ready(self) -> Dict[str, Any]:
        return await self._send(ready_call())

    async def aclose(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> "AsyncRewardClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    async def _send(self, call: Call) -> Any:
        end = self.policy.end()
        content = await asyncio.to_thread(self._content, call) if call.body is not None else {}
        for attempt in itertools.count():
            try:
                response = await self._client.request(call.method, call.path, **content,
                                                      timeout=self.policy.timeout(self.timeout, end))
            except _retryable(self._httpx):
                delay = self.policy.delay(attempt, None, end)
                if delay is None:
                    raise
            else:
                delay = self._retry_delay(attempt, response, end)
                if delay is None:
                    return self._answer(call, response)
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")


def _prompt_list(prompts: Any, count: int) -> List[str]:
    """One prompt per image: a single str is repeated for all ``count`` images; a list is
    checked and sent as it is (the server says when it does not pair up with the images)."""
    return [prompts] * count if isinstance(prompts, str) else check_prompts(prompts)


def _server_error(response: Any) -> RewardServerError:
    try:
        body = response.json()
        return RewardServerError(response.status_code, body["error"], body["detail"], body.get("index"),
                                 body.get("model"))
    except (ValueError, KeyError, TypeError):
        return RewardServerError(response.status_code, "http_error", response.text[:500])
