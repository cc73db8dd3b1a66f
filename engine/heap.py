"""The scoring workers' heap: keep the memory a batch freed for the next batch.

Every sub-batch allocates the same arrays again (a read piece of 128 VIS
cutouts is 20 MB, each resampled plane and the 200-px networks' four-band
input of a 32-cutout sub-batch 5–20 MB).  Dask starts its workers with
``MALLOC_TRIM_THRESHOLD_=65536``, which also fixes glibc's mmap threshold at
128 kB: every such array is then a fresh ``mmap`` whose pages are faulted in
anew and returned when it is freed.  On the 2-core development VM a worker
took about 450 page faults per cutout, and the threads outside the networks
spent 16–18 s of CPU on 4 096 cutouts against 9–10 s with the heap kept (trim
256 MB, mmap 64 MB, glibc's arenas: the settings measured thread by thread;
docs/performance.md, "Stop 34").

With ``LENSENGINE_HEAP=keep`` in the workers' environment, :func:`keep_batch_memory`
sets, once per process, ``M_ARENA_MAX`` to :data:`ARENAS`, ``M_MMAP_THRESHOLD`` to
:data:`MMAP_FROM` (arrays below it come from the heap and are reused) and
``M_TRIM_THRESHOLD`` to :data:`KEEP_FREE` (at most that much free memory is kept at
the heap's top before it is returned).  It is opt-in because it costs memory for
a gain seen mainly in ``--cascade`` runs (measured side by side, stop 34: one
worker 0.98–1.06× the cutouts/s, the cascade 1.16–1.39×, peak RSS of a default run
1.50 against 0.98 GiB).  Only glibc has ``mallopt``; elsewhere it does nothing.  The
preprocessing arrays themselves are reused by the buffer pool (engine/buffers.py, on by
default), which halves the faults without keeping the rest of the heap.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys
from functools import lru_cache

log = logging.getLogger(__name__)

__all__ = ["ARENAS", "KEEP_FREE", "MMAP_FROM", "keep_batch_memory"]

#: allocations at least this large are mmapped (and returned when freed): above a sub-batch's arrays
MMAP_FROM = 64 << 20
#: free memory kept at the top of the heap before it is trimmed: about what a worker's pipeline holds at once
KEEP_FREE = 128 << 20
#: malloc arenas: one per core would let every thread (lanes, prefetch) keep its own free memory
ARENAS = 1
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8  # glibc's mallopt parameters (malloc.h)


@lru_cache(maxsize=1)
def keep_batch_memory() -> bool:
    """With ``LENSENGINE_HEAP=keep``, set this process's heap to keep batch-sized memory (see the module);
    True if it was set."""
    if os.environ.get("LENSENGINE_HEAP", "").lower() != "keep" or not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    done = (mallopt(_M_ARENA_MAX, ARENAS) == 1 and mallopt(_M_MMAP_THRESHOLD, MMAP_FROM) == 1
            and mallopt(_M_TRIM_THRESHOLD, KEEP_FREE) == 1)
    if not done:
        log.debug("mallopt refused the heap settings; the allocator is left as it is")
    return done
