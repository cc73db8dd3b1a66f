"""The workers' heap (engine/heap.py) and the buffer pool (engine/buffers.py): a batch's freed arrays serve the next
batch instead of being faulted in anew.

Each check runs in a fresh interpreter started as Dask starts its workers (``MALLOC_TRIM_THRESHOLD_=65536``), so
the allocator's state is the one a worker has, and this test process's own is left alone.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(sys.platform != "linux" or platform.libc_ver()[0] != "glibc",
                                reason="the heap settings are glibc's mallopt")

_ALLOCATE = """
import json, resource, sys
import numpy as np
from lensengine.engine.buffers import BufferPool
from lensengine.engine.heap import keep_batch_memory
from lensengine.engine.preprocess import Preprocessor
from lensengine.engine.registry import resolve_models
kept = keep_batch_memory() if sys.argv[1] == "keep" else False
rng = np.random.default_rng(0)
bands = {"VIS": rng.gamma(2.0, 3.0, (128, 200, 200)).astype(np.float32)}
bands.update({b: rng.gamma(2.0, 40.0, (128, 66, 66)).astype(np.float32) for b in "YJH"})
buffers = BufferPool() if sys.argv[1] == "pool" else None
prepare = Preprocessor([m.as_spec() for m in resolve_models(None, None)], buffers=buffers)  # the seven networks' inputs
prepare(bands, 128)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):  # five sub-batches of 128 cutouts, each prepared and then dropped, as a worker does
    prepare(bands, 128)
print(json.dumps({"kept": kept, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def _faults(mode: str, **env) -> dict:
    env = {**os.environ, "MALLOC_TRIM_THRESHOLD_": "65536", **env}
    out = subprocess.run([sys.executable, "-c", _ALLOCATE, mode], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def test_kept_batch_memory_is_reused_without_page_faults():
    as_dask = _faults("as-dask-starts-it")
    kept = _faults("keep", LENSENGINE_HEAP="keep")
    assert kept["kept"] is True
    # 640 cutouts' inputs (about 270 MB of new arrays): faulted in anew batch after batch under Dask's setting ...
    assert as_dask["faults"] > 20 * 640, as_dask
    # ... and the memory of the first batch reused for the next ones once kept
    assert kept["faults"] < as_dask["faults"] / 5, (kept, as_dask)


def test_pooled_buffers_cut_the_page_faults_without_touching_the_heap():
    as_dask = _faults("as-dask-starts-it")
    pooled = _faults("pool")
    assert pooled["kept"] is False
    # the planes and stacked inputs come back from the pool; what is left is NumPy's smaller temporaries
    assert pooled["faults"] < as_dask["faults"] / 5, (pooled, as_dask)


def test_without_lensengine_heap_keep_the_allocator_is_left_alone():
    assert _faults("keep", LENSENGINE_HEAP="")["kept"] is False
