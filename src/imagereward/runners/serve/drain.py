"""Drain on stop: every accepted request is answered, new ones get 503, then the server exits.

``imagereward serve`` starts a :class:`DrainCoordinator` (a named Ray actor that needs no
CPU) next to the application and names it in the settings. Each replica watches it from
a thread (:class:`DrainWatch`) and reports how many requests it holds. On Ctrl-C or
SIGTERM the command asks the coordinator to drain: replicas refuse new requests with 503
(``Retry-After``) and the command waits until none holds a request, or until the drain
timeout, before Serve is shut down. An application started otherwise (``serve run``, a
config file) has no coordinator and stops as Serve stops it.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Dict, Optional

import ray

NAMESPACE = "imagereward"
POLL_S = 0.1


@ray.remote(num_cpus=0)
class DrainCoordinator:
    """What the replicas hold, and whether the server is stopping."""

    def __init__(self) -> None:
        self.draining = False
        self.active: Dict[str, int] = {}

    def start_draining(self) -> None:
        self.draining = True

    def report(self, replica: str, active: int) -> bool:
        """A replica's count of requests in hand; answers whether to drain."""
        self.active[replica] = active
        return self.draining

    def busy(self) -> int:
        return sum(self.active.values())


class DrainWatch:
    """In a replica: polls the coordinator, counts the requests in hand, knows when to refuse."""

    def __init__(self, coordinator_name: Optional[str], replica: str) -> None:
        self.replica = replica
        self.active = 0
        self.draining = False
        self._lock = threading.Lock()
        self._coordinator: Any = None
        if coordinator_name:
            self._coordinator = ray.get_actor(coordinator_name, namespace=NAMESPACE)
            threading.Thread(target=self._watch, name="imagereward-drain", daemon=True).start()

    def enter(self) -> None:
        with self._lock:
            self.active += 1

    def leave(self) -> None:
        with self._lock:
            self.active -= 1

    def _watch(self) -> None:
        while True:
            try:
                self.draining = ray.get(self._coordinator.report.remote(self.replica, self.active))
            except Exception:  # the coordinator is gone: the server is going away
                self.draining = True
            time.sleep(POLL_S)


def start_coordinator(name: str) -> Any:
    return DrainCoordinator.options(name=name, namespace=NAMESPACE, lifetime=None).remote()


def drain(coordinator: Any, timeout_s: float) -> int:
    """Start draining and wait until no replica holds a request; return how many were left
    (0 unless the timeout ran out)."""
    ray.get(coordinator.start_draining.remote())
    deadline = time.monotonic() + timeout_s
    time.sleep(2 * POLL_S)  # every replica has seen the flag and reported its count since
    left = ray.get(coordinator.busy.remote())
    while left and time.monotonic() < deadline:
        time.sleep(POLL_S)
        left = ray.get(coordinator.busy.remote())
    return left
