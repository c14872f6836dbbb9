"""A private Ray for one command, which never outlives the command.

``ray.init(address="local")`` starts a Ray of the command's own (never a cluster that
happens to run on the machine). Ray stops it when the command exits, but not when the
command is killed (SIGKILL, out of memory): its agents then linger for minutes. So the
command also starts a watchdog process that follows the command's process tree and,
once the command is gone, ends the processes of that tree it has seen: by process id,
checked against each process's start time, so a recycled id is never touched.

    python -m imagereward.runners.private_ray WATCH_PID

Linux only (``/proc``); elsewhere only Ray's own clean-up applies.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any, Dict, Optional, Tuple

POLL_S = 0.5
GRACE_S = 3.0


# Ray's notices that a user of a private, loopback-only Ray cannot act on.
QUIET_LOGGERS = ("ray._private.authentication.authentication_token_setup",)


def start(verbose: bool = False, **options: Any) -> Any:
    """``ray.init`` of a private local Ray, watched; returns the ``ray`` module."""
    import logging

    import ray

    if not verbose:
        for name in QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR)
    ray.init(address="local", include_dashboard=False, **options)
    start_watchdog(os.getpid())
    return ray


def start_watchdog(pid: int) -> Optional[subprocess.Popen]:
    if not os.path.isdir("/proc"):
        return None
    return subprocess.Popen(
        [sys.executable, "-m", "imagereward.runners.private_ray", str(pid)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,  # a signal to the command's process group does not reach it
    )


def _stat(pid: int) -> Optional[Tuple[int, int]]:
    """``(parent id, start time)`` of a process, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None
    return int(fields[1]), int(fields[19])


def descendants(root: int) -> Dict[int, int]:
    """Every process below ``root``: id -> start time."""
    children: Dict[int, list] = {}
    started: Dict[int, int] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            stat = _stat(int(name))
            if stat is not None:
                children.setdefault(stat[0], []).append(int(name))
                started[int(name)] = stat[1]
    found: Dict[int, int] = {}
    todo = list(children.get(root, []))
    while todo:
        pid = todo.pop()
        if pid not in found and pid in started:
            found[pid] = started[pid]
            todo.extend(children.get(pid, []))
    return found


def _alive(pid: int, start_time: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[1] == start_time


def watch(pid: int) -> None:
    """Follow ``pid``'s process tree while it lives; then end what is left of it."""
    me = os.getpid()
    own = _stat(pid)
    seen: Dict[int, int] = {}
    while own is not None and _alive(pid, own[1]):
        seen.update({p: t for p, t in descendants(pid).items() if p != me})
        time.sleep(POLL_S)
    left = {p: t for p, t in seen.items() if _alive(p, t)}
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for p, t in left.items():
            if _alive(p, t):
                try:
                    os.kill(p, sig)
                except OSError:
                    pass
        deadline = time.monotonic() + GRACE_S
        while time.monotonic() < deadline and any(_alive(p, t) for p, t in left.items()):
            time.sleep(0.1)


if __name__ == "__main__":
    watch(int(sys.argv[1]))
