"""Keep the memory a forward pass frees inside the process, for the next one to reuse.

A forward pass of ViT-L on a batch of images allocates and frees about a hundred
megabytes per block (projections, attention scores, the MLP's hidden layer). With
glibc's default settings much of that goes back to the kernel on every ``free`` and is
page-faulted in again (zeroed by the kernel) on the next allocation: on a 2-core AMD
EPYC that is 150,000-350,000 minor page faults and 4-10% of the time of 8 images
(``benchmarks/allocator.py`` measures it). Two ``mallopt`` settings stop it: blocks up
to 32 MiB come from the heap instead of fresh ``mmap`` calls, and the heap is trimmed
only when 256 MiB at its top are free. The process keeps what it has used at its peak
(the peak itself does not change).

The settings are process-wide, so they are made once, when a model is placed on a
CPU, and only where they are glibc's and nobody chose otherwise: not when
``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_`` or ``GLIBC_TUNABLES`` is set, and
not with ``IMAGEREWARD_MALLOC_TUNING=0``. Other allocators (jemalloc, tcmalloc through
``LD_PRELOAD``) already cache freed memory and are left alone.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import sys

logger = logging.getLogger(__name__)

TUNING_ENV = "IMAGEREWARD_MALLOC_TUNING"
MMAP_THRESHOLD_BYTES = 32 << 20
TRIM_THRESHOLD_BYTES = 256 << 20

# mallopt parameter numbers from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# Environment variables by which a user sets glibc's malloc (then left alone).
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")


@functools.lru_cache(maxsize=None)
def keep_freed_memory() -> bool:
    """Apply the settings above once per process; ``True`` where they are in effect."""
    if os.environ.get(TUNING_ENV, "1") == "0" or any(os.environ.get(n) for n in USER_SETTINGS):
        return False
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018  (present in glibc only, not musl)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    done = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
    )
    logger.debug("glibc malloc keeps freed memory: %s", done)
    return done
