"""Keep the memory a forward pass frees inside the process, for the next one to reuse.

A forward pass of ViT-L on a batch of images allocates and frees about a hundred
megabytes per block (projections, attention scores, the MLP's hidden layer). With
glibc's default settings much of that goes back to the kernel on every ``free`` and is
page-faulted in again (zeroed by the kernel) on the next allocation: on a 2-core AMD
EPYC that is 150,000-350,000 minor page faults and 4-10% of the time of 8 images
(``benchmarks/allocator.py`` measures it). Two ``mallopt`` settings stop it: no block is
served by a fresh ``mmap`` (glibc would otherwise map every block above 32 MiB on its
own and unmap it on ``free``, whatever the threshold: the MLP's hidden layer of ViT-H at
16 images is 42 MB in bf16, ViT-L's 52 MB in fp32), and the heap is never trimmed. The
process keeps what it has used at its peak (the peak itself does not change).

The settings are process-wide, so they are made once, when a model is placed on a
CPU, and only where they are glibc's and nobody chose otherwise: not when
``MALLOC_MMAP_MAX_``, ``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_`` or
``GLIBC_TUNABLES`` is set, and not with ``IMAGEREWARD_MALLOC_TUNING=0``. Other allocators
(jemalloc, tcmalloc through ``LD_PRELOAD``) already cache freed memory and are left alone.
Threads other than the main one allocate from glibc's per-thread arenas, whose heaps
are at most 64 MiB each and may still be unmapped whole when all of one is free.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import sys

logger = logging.getLogger(__name__)

TUNING_ENV = "IMAGEREWARD_MALLOC_TUNING"
# mallopt parameter numbers from glibc's <malloc.h>, and the values set.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
NO_MMAP = 0  # M_MMAP_MAX: no block from its own mmap
NEVER_TRIM = -1  # M_TRIM_THRESHOLD: -1 turns trimming off (mallopt(3))
# Environment variables by which a user sets glibc's malloc (then left alone).
USER_SETTINGS = ("MALLOC_MMAP_MAX_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")


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
    done = bool(mallopt(_M_MMAP_MAX, NO_MMAP)) and bool(mallopt(_M_TRIM_THRESHOLD, NEVER_TRIM))
    logger.debug("glibc malloc keeps freed memory: %s", done)
    return done
