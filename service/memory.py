"""How the serving process's C allocator treats the memory a batch frees.

Each forward pass of a large encoder allocates and frees the same few hundred MB of activations. By
default glibc hands freed memory back to the system: an inference thread's own malloc arena is built
of 64 MB heaps that are unmapped once empty, and the top of a heap is trimmed above a threshold that
moves with the sizes seen. The next batch then faults every page back in (tens of thousands of minor
faults for a batch of 8 clips of HuBERT-large: a real share of its time on a small VM; the README has
the measured A/B). The peak memory
is the same either way, since the next batch needs those pages again.

``keep_freed_memory`` makes every thread share the main arena (``M_ARENA_MAX=1``: the inference thread
is the only one that allocates much), serves blocks below 32 MB from it rather than from fresh
mappings, and never trims it below 1 GB of free top. It must run before the process starts threads.
Only glibc has these knobs; elsewhere it does nothing.
"""

from __future__ import annotations

import ctypes
import logging
import sys

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024  # glibc's largest
TRIM_THRESHOLD_BYTES = 1024 * 1024 * 1024


def keep_freed_memory() -> bool:
    """Set glibc's malloc to keep freed memory for reuse (see the module doc); True if it was set."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # glibc only: musl has no such function  # noqa: B018
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    settings = (
        (_M_ARENA_MAX, 1),
        (_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES),
        (_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES),
    )
    done = all(mallopt(param, value) == 1 for param, value in settings)
    if not done:
        log.warning("glibc refused a malloc setting; freed memory may be returned to the system")
    return done
