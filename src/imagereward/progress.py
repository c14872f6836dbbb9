"""Progress of long loops: a bar on a terminal, plain periodic lines anywhere else.

A redirected stderr (a log file, a cluster job's output) gets one line every
``interval`` seconds and one at the end, never ``\\r``-redrawn bars.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Optional, TextIO


class LineProgress:
    """The part of tqdm's interface the loops here use, written as plain lines."""

    def __init__(self, total: Optional[int], unit: str, desc: str, stream: TextIO,
                 interval: float = 30.0, initial: int = 0) -> None:
        self.total, self.unit, self.desc, self.stream = total, unit, desc, stream
        self.interval, self.n = interval, initial
        self._start = self._last = time.monotonic()
        self._first = initial

    def update(self, count: int = 1) -> None:
        self.n += count
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            self._write(now)

    def _write(self, now: float) -> None:
        rate = (self.n - self._first) / max(now - self._start, 1e-9)
        of = f"/{self.total}" if self.total else ""
        share = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        print(f"{self.desc}: {self.n}{of} {self.unit}s{share}, {rate:.2f} {self.unit}s/s",
              file=self.stream, flush=True)

    def close(self) -> None:
        if self.n > self._first:
            self._write(time.monotonic())

    def __enter__(self) -> "LineProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class _Silent:
    n = 0

    def update(self, count: int = 1) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> "_Silent":
        return self

    def __exit__(self, *exc: Any) -> None:
        pass


def progress(total: Optional[int], unit: str, desc: str, enabled: bool = True, initial: int = 0,
             stream: Optional[TextIO] = None) -> Any:
    """A tqdm bar on a terminal, :class:`LineProgress` on a redirected stream, nothing when off."""
    stream = stream or sys.stderr
    if not enabled:
        return _Silent()
    if stream.isatty():
        from tqdm.auto import tqdm

        return tqdm(total=total, initial=initial, unit=unit, desc=desc, file=stream,
                    dynamic_ncols=True, smoothing=0.1, leave=False)
    return LineProgress(total, unit, desc, stream, initial=initial)
