"""What the server refuses: unauthenticated, oversized, overloaded or slow requests."""

from __future__ import annotations

import hmac
import math
import os
from typing import Dict, Optional


class Refusal(Exception):
    """A request the server answers with an error status instead of scores."""

    def __init__(
        self,
        status: int,
        kind: str,
        detail: str,
        index: Optional[int] = None,
        headers: Optional[Dict[str, str]] = None,
        model: Optional[str] = None,
    ) -> None:
        super().__init__(detail)
        self.status, self.kind, self.detail, self.index = status, kind, detail, index
        self.headers = headers or {}
        self.model = model

    def body(self) -> Dict[str, object]:
        return {"error": self.kind, "detail": self.detail, "index": self.index, "model": self.model}


def api_key_from_env(name: Optional[str]) -> Optional[str]:
    """The key held by environment variable ``name``; a named but empty variable is an error."""
    if name is None:
        return None
    key = os.environ.get(name, "")
    if not key:
        raise RuntimeError(
            f"the API key variable {name} is not set in the server's environment; "
            "refusing to serve without the key that was asked for"
        )
    return key


def check_api_key(expected: Optional[str], authorization: Optional[str], x_api_key: Optional[str]) -> None:
    """Accept ``Authorization: Bearer KEY`` or ``X-API-Key: KEY`` when a key is configured."""
    if expected is None:
        return
    given = x_api_key
    if given is None and authorization and authorization.lower().startswith("bearer "):
        given = authorization[len("bearer "):].strip()
    if given is None or not hmac.compare_digest(given.encode(), expected.encode()):
        raise Refusal(
            401, "unauthorized", "missing or wrong API key (Authorization: Bearer KEY)",
            headers={"WWW-Authenticate": "Bearer"},
        )


def check_content_length(value: Optional[str], limit: int) -> None:
    if value is not None and value.isdigit() and int(value) > limit:
        raise Refusal(413, "too_large", f"request body of {value} bytes is over the limit of {limit}")


def check_pair_count(count: int, limit: int, what: str = "pairs") -> None:
    if count > limit:
        raise Refusal(413, "too_many_pairs", f"{count} {what} in one request, the limit is {limit}")


class AdmissionGate:
    """A bound on the pairs a replica has admitted and not yet scored.

    ``admit`` refuses with 429 when the bound would be passed; ``Retry-After``
    estimates when the queue will have drained, from the recent throughput.
    """

    def __init__(self, max_pairs: int) -> None:
        self.max_pairs = max_pairs
        self.depth = 0
        self.pairs_per_second: Optional[float] = None

    def admit(self, pairs: int) -> None:
        if self.depth + pairs > self.max_pairs:
            raise Refusal(
                429, "queue_full",
                f"server queue is full ({self.depth} pairs waiting, limit {self.max_pairs}); retry later",
                headers={"Retry-After": str(self.retry_after())},
            )
        self.depth += pairs

    def release(self, pairs: int) -> None:
        self.depth -= pairs

    def observe_throughput(self, pairs: int, seconds: float) -> None:
        if seconds <= 0:
            return
        rate = pairs / seconds
        previous = self.pairs_per_second
        self.pairs_per_second = rate if previous is None else 0.8 * previous + 0.2 * rate

    def retry_after(self) -> int:
        rate = self.pairs_per_second or 1.0
        return max(1, math.ceil(self.depth / rate))
