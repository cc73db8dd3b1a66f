"""Reusable arrays for preprocessing: a sub-batch's planes land in memory the last sub-batch let go.

Every sub-batch allocates arrays of the same shapes again (a 64-cutout
sub-batch: three 200-px NISP planes of 10 MB, the 200-px networks' four-band
input of 41 MB, the 66-px planes and stacks).  In a Dask worker each one is a
fresh ``mmap`` (Dask's ``MALLOC_TRIM_THRESHOLD_`` fixes glibc's mmap threshold
at 128 kB; engine/heap.py) whose pages are faulted in and zeroed by the kernel
again, about 250 faults per cutout, and returned to the system when freed.  The store pieces a task reads
(128 cutouts: 20 MB of 200-px images) are made here too (``SurveyStore.read(empty=pool.empty)``): as new
arrays they cost a run 60-85 ms of page faults a piece (stop 41).

:class:`BufferPool` hands out an array of the asked shape that nothing else
refers to any more, and allocates (and keeps) a new one only when every array
of that shape is still in use.  "Nothing refers to it" is read from CPython's
reference count: a view (a slice of a sub-batch, a model's band, a network
call's piece) holds its base array, so an array is reused only once every
view of it is gone.  The pool keeps at most what was in use at once, per
shape, up to :data:`POOL_BYTES` in all, making room by forgetting the free
arrays of the shapes least recently asked for; beyond that it allocates as
NumPy would.  Without the GIL's reference counting (a free-threaded build) it never
reuses.  ``LENSENGINE_BUFFERS=off`` turns it off (every array new, as before).
"""

from __future__ import annotations

import os
import sys
import threading

import numpy as np

__all__ = ["POOL_BYTES", "PER_SHAPE", "BufferPool", "pool"]

#: memory the process's pool may hold, all shapes together (above what a worker's pipeline holds at once)
POOL_BYTES = 512 << 20
#: arrays kept per shape: a sub-batch being read, two waiting (the prefetch depth) and two being scored, each
#: holding up to four planes of one shape (the four bands at 66 px, or at 200 px).  At 6, the 66- and 200-px planes
#: were new memory in 67 % and 29 % of the sub-batches (stop 40: 1.5 times the page faults of a run)
PER_SHAPE = 24


def _refcounts(arrays: list[np.ndarray]) -> list[int]:
    """CPython's reference count of each array as this function sees it (the pool's one way of asking)."""
    return [sys.getrefcount(array) for array in arrays]


def _unreferenced_count() -> int | None:
    """What :func:`_refcounts` reads for an array that only its list holds; None where the count cannot tell
    a held array from a free one (not CPython, no GIL, or an interpreter that counts differently)."""
    is_gil_enabled = getattr(sys, "_is_gil_enabled", None)
    if sys.implementation.name != "cpython" or (is_gil_enabled is not None and not is_gil_enabled()):
        return None
    free = _refcounts([np.empty(1)])[0]
    held = np.empty(1)
    named = _refcounts([held])[0]
    view = held[1:]
    if not free < named < _refcounts([held])[0]:
        return None
    del view
    return free


class BufferPool:
    """Arrays by (shape, dtype), each handed out again once nothing refers to it (see the module)."""

    def __init__(self, max_bytes: int = POOL_BYTES, per_shape: int = PER_SHAPE, enabled: bool | None = None):
        if enabled is None:
            enabled = os.environ.get("LENSENGINE_BUFFERS", "").lower() not in ("off", "0", "no")
        self._free_count = _unreferenced_count() if enabled else None
        self.enabled = self._free_count is not None
        self.max_bytes = max_bytes
        self.per_shape = per_shape
        self._arrays: dict[tuple, list[np.ndarray]] = {}
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def nbytes(self) -> int:
        """Bytes the pool holds (in use or free)."""
        return self._bytes

    def empty(self, shape: tuple[int, ...], dtype=np.float32) -> np.ndarray:
        """An uninitialised C-contiguous array of ``shape``: one no longer referred to, else a new one."""
        shape, dtype = tuple(int(s) for s in shape), np.dtype(dtype)
        if not self.enabled:
            return np.empty(shape, dtype)
        key = (shape, dtype.str)
        with self._lock:
            kept = self._arrays.pop(key, [])
            self._arrays[key] = kept  # the most recently asked shape last
            for array, count in zip(kept, _refcounts(kept)):
                if count <= self._free_count:
                    return array
            size = int(np.prod(shape)) * dtype.itemsize
            array = np.empty(shape, dtype)
            if len(kept) < self.per_shape and self._make_room(size, key):
                kept.append(array)
                self._bytes += size
            return array

    def _make_room(self, size: int, key: tuple) -> bool:
        """Whether ``size`` more bytes fit, after forgetting free arrays of other shapes, least recently asked
        first (a shape seen once, such as a chunk's short last sub-batch, does not hold memory for good)."""
        if size > self.max_bytes:
            return False
        for other in list(self._arrays):
            if self._bytes + size <= self.max_bytes:
                break
            if other == key:
                continue
            arrays = self._arrays[other]
            busy = [a for a, count in zip(arrays, _refcounts(arrays)) if count > self._free_count]
            self._bytes -= sum(a.nbytes for a in arrays) - sum(a.nbytes for a in busy)
            if busy:
                self._arrays[other] = busy
            else:
                del self._arrays[other]
        return self._bytes + size <= self.max_bytes

    def clear(self) -> None:
        """Forget every kept array (those still in use stay valid for their holders)."""
        with self._lock:
            self._arrays.clear()
            self._bytes = 0


#: the process's pool (preprocessing in every thread of a worker or of an interactive run)
pool = BufferPool()
