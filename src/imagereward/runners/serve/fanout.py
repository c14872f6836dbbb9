"""The ingress's view of the model deployments: what each needs, whether it answers, calling it.

Each served model is a :class:`ModelRoute`: its deployment handle, what its replicas
said about themselves (preprocessing, device, dtype) and whether they answer. A
watcher probes every model once a second, so a model whose replicas are dead is
refused at once (503 naming it) instead of holding requests until they time out,
while requests for the other models keep being answered. A call that fails in
flight (its replica died) is a 503 naming the model too; a model's full queue is a
429 naming it.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional

from .limits import Refusal

logger = logging.getLogger("ray.serve")

PROBE_PERIOD_S = 1.0
PROBE_TIMEOUT_S = 5.0
RETRY_AFTER_S = "2"


@dataclass
class ModelRoute:
    """One served model as the ingress sees it."""

    key: str
    handle: Any
    info: Optional[Dict[str, Any]] = None  # the replicas' describe() answer, once they have given it
    ready: Optional[bool] = None  # None until the first probe or call has told
    detail: Optional[str] = None

    def mark(self, ready: bool, detail: Optional[str] = None) -> None:
        if self.ready and not ready:
            logger.warning("imagereward: model %s is not answering: %s", self.key, detail)
        self.ready, self.detail = ready, detail

    def unavailable(self) -> Refusal:
        reason = f": {self.detail}" if self.detail else ""
        return Refusal(503, "model_unavailable", f"model {self.key} is not available{reason}; retry later",
                       headers={"Retry-After": RETRY_AFTER_S}, model=self.key)


class ModelRoutes:
    """Every served model's route, the watcher that keeps their readiness current, the calls."""

    def __init__(self, handles: Mapping[str, Any]) -> None:
        self.routes: Dict[str, ModelRoute] = {key: ModelRoute(key, handle) for key, handle in handles.items()}
        self._watcher: Optional[asyncio.Task] = None

    @property
    def keys(self) -> List[str]:
        return list(self.routes)

    def watch(self) -> None:
        """Start the watcher (once, in the replica's event loop)."""
        if self._watcher is None or self._watcher.done():
            self._watcher = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        while True:
            await asyncio.gather(*(self.probe(route) for route in self.routes.values()))
            await asyncio.sleep(PROBE_PERIOD_S)

    async def probe(self, route: ModelRoute) -> None:
        try:
            route.info = await asyncio.wait_for(route.handle.describe.remote(), PROBE_TIMEOUT_S)
            route.mark(True)
        except asyncio.TimeoutError:
            route.mark(False, f"its replicas did not answer within {PROBE_TIMEOUT_S:g} s")
        except asyncio.CancelledError:
            raise
        except Exception as error:  # noqa: BLE001 - a dead or failing replica, reported as the model's
            route.mark(False, _reason(error))

    async def available(self, keys: List[str]) -> List[ModelRoute]:
        """The routes of ``keys``, described; 503 naming the models that are not answering."""
        self.watch()
        routes = [self.routes[key] for key in keys]
        await asyncio.gather(*(self.probe(r) for r in routes if r.info is None or r.ready is None))
        down = [route for route in routes if not route.ready or route.info is None]
        if down:
            refusal = down[0].unavailable()
            if len(down) > 1:
                refusal.detail = (f"models {', '.join(r.key for r in down)} are not available; "
                                  f"{down[0].key}: {down[0].detail}; retry later")
            raise refusal
        return routes

    async def call(self, route: ModelRoute, method: str, *args: Any) -> Any:
        """A model's answer to ``method(*args)``: its scores, or a refusal naming it."""
        response = getattr(route.handle, method).remote(*args)
        try:
            answer = await response
        except asyncio.CancelledError:  # timed out, or the client went away: the model drops the pairs
            response.cancel()
            raise
        except Exception as error:  # noqa: BLE001 - the replica died in flight, or Serve refused
            if type(error).__name__ == "BackPressureError":
                raise Refusal(429, "queue_full", f"model {route.key}'s queue is full; retry later",
                              headers={"Retry-After": RETRY_AFTER_S}, model=route.key) from None
            route.mark(False, _reason(error))
            raise route.unavailable() from None
        refusal = answer.get("refusal")
        if refusal is not None:
            raise Refusal(refusal["status"], refusal["kind"], f"model {route.key}: {refusal['detail']}",
                          headers=refusal["headers"], model=route.key)
        return answer["scores"]

    async def call_all(self, calls: Mapping[str, Any]) -> Dict[str, Any]:
        """Answers of concurrent calls ``{key: (route, method, *args)}``; the first refusal (in
        request order) is raised after every call has finished, naming all that failed."""
        keys = list(calls)
        results = await asyncio.gather(*(self.call(*calls[key]) for key in keys), return_exceptions=True)
        failed = [(key, r) for key, r in zip(keys, results) if isinstance(r, BaseException)]
        for _, result in failed:
            if not isinstance(result, Refusal):
                raise result
        if failed:
            refusal = failed[0][1]
            if len(failed) > 1:
                refusal.detail += f" (also failed: {', '.join(key for key, _ in failed[1:])})"
            raise refusal
        return dict(zip(keys, results))


def _reason(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(error).__name__}: {first[:200]}" if first else type(error).__name__
