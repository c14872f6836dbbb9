"""A client for the reward server (``imagereward serve``); needs only ``httpx``.

>>> from imagereward.client import RewardClient
>>> client = RewardClient("http://127.0.0.1:8000")
>>> client.score(["a cat", "a dog"], ["cat.png", dog_pil_image])
[0.31, -1.2]

Images may be PIL images, ``uint8`` numpy arrays ``[H, W(, C)]``, float numpy
arrays ``[H, W, C]`` or float torch tensors ``[C, H, W]`` in [0, 1], ``uint8``
torch tensors ``[C, H, W]``, paths, or one batch array/tensor ``[N, ...]``.
Pixels travel raw and files as their bytes (see :mod:`imagereward.wire`), so the
server scores exactly what :meth:`~imagereward.scoring.scorer.RewardScorer.score_batch`
would score in-process. Requests refused with 429 or 503, and connection failures,
are retried with exponential backoff (honouring ``Retry-After``).
"""

from __future__ import annotations

import os
import random
import time
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image

from .errors import ImageNotFoundError, ImageRewardError, ImageTypeError, InputError
from .prompts import check_prompt, check_prompts
from .wire import WireImage, file_image, pil_image, raw_image

if TYPE_CHECKING:  # pragma: no cover
    from .scoring.base import RankResult

RETRY_STATUSES = (429, 503)


class RewardServerError(ImageRewardError, RuntimeError):
    """The server refused or failed a request; ``index`` names the bad item when there is one."""

    def __init__(self, status_code: int, kind: str, detail: str, index: Optional[int] = None) -> None:
        super().__init__(f"reward server answered {status_code} ({kind}): {detail}")
        self.status_code, self.kind, self.detail, self.index = status_code, kind, detail, index


# -- images to wire form -----------------------------------------------------------------
def _float_to_uint8(pixels: np.ndarray, index: int) -> np.ndarray:
    if not np.isfinite(pixels).all() or pixels.min() < 0.0 or pixels.max() > 1.0:
        raise InputError(f"images[{index}]: float pixels must lie in [0, 1]")
    return np.round(pixels.astype(np.float32) * 255.0).astype(np.uint8)


def _array_image(array: np.ndarray, index: int, channels_first: bool) -> WireImage:
    if np.issubdtype(array.dtype, np.floating):
        array = _float_to_uint8(array, index)
    elif array.dtype != np.uint8:
        raise ImageTypeError(f"images[{index}]: pixels must be uint8 or float in [0, 1], got {array.dtype}")
    if channels_first and array.ndim == 3:
        array = array.transpose(1, 2, 0)
    try:
        return raw_image(array)
    except InputError as error:
        raise InputError(f"images[{index}]: {error}") from None


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


def encode_images(images: Any) -> List[Dict[str, Any]]:
    """A list of images, or one batch ``[N, ...]`` array or tensor, as JSON image objects."""
    if (isinstance(images, np.ndarray) or hasattr(images, "detach")) and images.ndim == 4:
        images = list(images)
    if not isinstance(images, (list, tuple)):
        raise ImageTypeError(f"images must be a list, a tuple or a 4-d batch, got {type(images).__name__}")
    return [encode_image(image, index).to_json() for index, image in enumerate(images)]


# -- the client ----------------------------------------------------------------------------
class RewardClient:
    """Scores images on a reward server.

    ``timeout`` is seconds per attempt; ``retries`` is how many times a request
    refused with 429/503 or failed to connect is tried again, waiting
    ``backoff * 2**attempt`` seconds (with jitter, at most ``max_backoff``, or the
    server's ``Retry-After``) in between.
    """

    def __init__(
        self,
        url: str = "http://127.0.0.1:8000",
        api_key: Optional[str] = None,
        *,
        timeout: float = 120.0,
        retries: int = 5,
        backoff: float = 0.5,
        max_backoff: float = 10.0,
    ) -> None:
        import httpx

        self._httpx = httpx
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout)
        self.retries, self.backoff, self.max_backoff = retries, backoff, max_backoff

    # -- scoring ------------------------------------------------------------------------
    def score(self, prompts: Union[str, Sequence[str]], images: Any) -> List[float]:
        """Rewards of N (prompt, image) pairs, in order; one prompt (a str) goes with every image."""
        encoded = encode_images(images)
        return self._post("/score", {"prompts": _prompt_list(prompts, len(encoded)), "images": encoded})["scores"]

    def rank(self, prompt: str, images: Any) -> "RankResult":
        """Ranks (1 = best) and rewards of images for one prompt."""
        from .scoring.base import RankResult  # imports torch: only when ranking

        check_prompt(prompt)
        reply = self._post("/rank", {"prompt": prompt, "images": encode_images(images)})
        return RankResult(reply["ranking"], reply["rewards"])

    def score_matrix(self, prompts: Sequence[str], images: Any) -> np.ndarray:
        """Scores of every prompt with every image, ``float32 [P, I]``."""
        reply = self._post("/score_matrix", {"prompts": check_prompts(prompts), "images": encode_images(images)})
        return np.asarray(reply["scores"], dtype=np.float32)

    def reward_fn(
        self, images: Any, prompts: Sequence[str], metadata: Any = None
    ) -> Tuple[np.ndarray, Dict[str, Any]]:
        """The reward function shape of DDPO/GRPO-style trainers: ``(rewards, info)``.

        ``images`` is typically the trainer's float batch ``[N, 3, H, W]`` in [0, 1];
        ``metadata`` (per-prompt metadata) is accepted and not used. Returns the
        rewards as ``float32 [N]`` and a dict with the model name and the seconds taken.
        """
        start = time.perf_counter()
        encoded = encode_images(images)
        reply = self._post("/score", {"prompts": _prompt_list(prompts, len(encoded)), "images": encoded})
        info = {"model": reply["model"], "seconds": time.perf_counter() - start}
        return np.asarray(reply["scores"], dtype=np.float32), info

    # -- service ----------------------------------------------------------------------
    def ready(self) -> Dict[str, Any]:
        """The server's ``/readyz`` answer (raises :class:`RewardServerError` when not ready)."""
        return self._request("GET", "/readyz", None)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> "RewardClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- transport --------------------------------------------------------------------
    def _post(self, path: str, body: Dict[str, Any]) -> Dict[str, Any]:
        return self._request("POST", path, body)

    def _request(self, method: str, path: str, body: Optional[Dict[str, Any]]) -> Dict[str, Any]:
        httpx = self._httpx
        retryable = (httpx.NetworkError, httpx.ConnectTimeout, httpx.RemoteProtocolError)
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                response = self._client.request(method, path, json=body)
            except retryable:
                if last:
                    raise
                self._sleep(attempt, None)
                continue
            if response.status_code in RETRY_STATUSES and not last:
                self._sleep(attempt, response.headers.get("retry-after"))
                continue
            if response.status_code != 200:
                raise _server_error(response)
            return response.json()
        raise AssertionError("unreachable")

    def _sleep(self, attempt: int, retry_after: Optional[str]) -> None:
        delay = self.backoff * (2 ** attempt) * random.uniform(0.5, 1.0)
        if retry_after is not None and retry_after.isdigit():
            delay = float(retry_after)
        time.sleep(min(delay, self.max_backoff))


def _prompt_list(prompts: Any, count: int) -> List[str]:
    """One prompt per image: a single str is repeated for all ``count`` images; a list is
    checked and sent as it is (the server says when it does not pair up with the images)."""
    return [prompts] * count if isinstance(prompts, str) else check_prompts(prompts)


def _server_error(response: Any) -> RewardServerError:
    try:
        body = response.json()
        return RewardServerError(response.status_code, body["error"], body["detail"], body.get("index"))
    except (ValueError, KeyError, TypeError):
        return RewardServerError(response.status_code, "http_error", response.text[:500])
