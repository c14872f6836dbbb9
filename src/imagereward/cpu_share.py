"""How many CPUs a process may use, and torch threads to match.

A process may be given fewer CPUs than its machine has: an affinity mask (``taskset``,
a cpuset), a cgroup CPU quota (``docker run --cpus``, a Kubernetes CPU limit), or a
share that Ray gives an actor or replica. torch's default thread count follows the
affinity mask but not a quota. A process that runs more threads than its quota is
throttled in every scheduling period, and its threads then wait for each other at
every parallel step: ``benchmarks/cpu_quota.py`` measures what that costs.

The commands that score in their own process (``imagereward score``, ``rank``,
``eval``, ``benchmark``, ``reward-stats``) and training set their threads with
:func:`use_allocated_threads`; the server's replicas and Ray Data's actors with
:func:`threads_for` of their Ray CPU share. ``imagereward.load()`` inside a user's
program leaves torch's threads alone: call :func:`use_allocated_threads` to ask for it.
"""

from __future__ import annotations

import logging
import os
from typing import Iterator, List, Optional, Tuple

logger = logging.getLogger(__name__)

CGROUP_ROOT = "/sys/fs/cgroup"
SELF_CGROUP = "/proc/self/cgroup"
# Environment variables by which a user sets the threads (then left alone).
USER_SETTINGS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def threads_for(cpus: float) -> int:
    """A CPU share, rounded, at least one: a process that runs more threads than it holds
    CPUs oversubscribes the machine it shares with other processes."""
    return max(1, int(round(cpus)))


def cpu_allocation() -> float:
    """The CPUs this process may use: its affinity mask, capped by its cgroup's CPU quota."""
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = cpu_quota()
    return float(affinity) if quota is None else min(float(affinity), quota)


def cpu_quota() -> Optional[float]:
    """The tightest CPU quota, in CPUs, on this process's cgroup and its ancestors (cgroup v2
    ``cpu.max``, v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``); ``None`` without one.
    Read from :data:`CGROUP_ROOT` and :data:`SELF_CGROUP`."""
    folders = _cgroup_folders(CGROUP_ROOT, SELF_CGROUP)
    quotas = [q for q in (_read_quota(folder, v2) for folder, v2 in folders) if q is not None]
    return min(quotas) if quotas else None


def use_allocated_threads(threads: Optional[int] = None, processes: int = 1) -> int:
    """Set torch's threads for this process and return them.

    ``threads`` when given; else, unless ``OMP_NUM_THREADS`` or ``MKL_NUM_THREADS`` is set
    (torch then follows it), this process's share of :func:`cpu_allocation` among
    ``processes`` processes (those of a torchrun job on one machine), never more than
    torch's own default.
    """
    import torch

    current = torch.get_num_threads()
    if threads is None and any(os.environ.get(name) for name in USER_SETTINGS):
        return current
    allocation = cpu_allocation()
    if threads is None:
        threads = min(current, threads_for(allocation / max(1, processes)))
    if threads != current:
        torch.set_num_threads(threads)
    logger.info("torch threads: %d (CPUs this process may use: %g)", threads, allocation)
    return threads


# -- cgroups ----------------------------------------------------------------------------
def _own_cgroups(self_cgroup: str) -> List[Tuple[str, str]]:
    """``(controllers, path)`` of each line of ``/proc/self/cgroup``; v2's controllers are ''."""
    try:
        with open(self_cgroup, "r", encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) == 3:
            found.append((parts[1], parts[2]))
    return found


def _cgroup_folders(cgroup_root: str, self_cgroup: str) -> Iterator[Tuple[str, bool]]:
    """Each cgroup folder that may hold this process's CPU quota, with whether it is v2:
    the process's own cgroup and its ancestors, under each mount of the CPU controller.
    In a container (its own cgroup namespace) the path is ``/``: the mount's own folder."""
    for controllers, path in _own_cgroups(self_cgroup):
        if controllers == "":
            mounts: Tuple[Tuple[str, bool], ...] = ((cgroup_root, True), (os.path.join(cgroup_root, "unified"), True))
        elif "cpu" in controllers.split(","):
            mounts = tuple((os.path.join(cgroup_root, name), False) for name in ("cpu", "cpu,cpuacct", "cpuacct,cpu"))
        else:
            continue
        for mount, v2 in mounts:
            if not os.path.isdir(mount):
                continue
            folder = os.path.join(mount, path.strip("/"))
            if not os.path.isdir(folder):  # a path from outside this namespace: the mount's own
                folder = mount
            while True:
                yield folder, v2
                if os.path.normpath(folder) == os.path.normpath(mount):
                    break
                folder = os.path.dirname(folder)


def _read_quota(folder: str, v2: bool) -> Optional[float]:
    try:
        if v2:
            with open(os.path.join(folder, "cpu.max"), "r", encoding="ascii") as handle:
                quota, period = handle.read().split()[:2]
            if quota == "max":
                return None
        else:
            with open(os.path.join(folder, "cpu.cfs_quota_us"), "r", encoding="ascii") as handle:
                quota = handle.read().strip()
            with open(os.path.join(folder, "cpu.cfs_period_us"), "r", encoding="ascii") as handle:
                period = handle.read().strip()
        value, per = int(quota), int(period)
    except (OSError, ValueError):
        return None
    if value <= 0 or per <= 0:  # v1 writes -1 for no quota
        return None
    return value / per
