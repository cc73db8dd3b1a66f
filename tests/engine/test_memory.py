"""Memory stays flat in the size of what is scored: a task is read and scored a piece at a time.

The check is on the Python/NumPy heap (tracemalloc: exact and cheap; the ONNX
Runtime arenas are sized by the batch, never by the task, and are measured by
``benchmarks/bench_engine.py``).  A runner stand-in keeps it fast: what is
measured is the data path around the networks, not the networks.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from lensengine.engine import scoring
from lensengine.engine.models import discover_models
from lensengine.engine.scoring import ChunkTask, score_chunk

from .conftest import make_store  # noqa: F401  (importlib mode: package-relative import)

ROWS = 1024


@pytest.fixture(scope="module")
def nisp_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("memory") / "nisp.zarr"
    make_store(path, tiles=("T0",), n_per_tile=ROWS, chunk_size=ROWS, bands=("Y", "J", "H"), bad=False)
    return path


def _peak(task: ChunkTask) -> tuple[int, dict]:
    tracemalloc.start()
    try:
        rows = score_chunk(task)
        return tracemalloc.get_traced_memory()[1], rows
    finally:
        tracemalloc.stop()


def test_peak_memory_does_not_grow_with_the_task(nisp_store, tiny_models, monkeypatch):
    models = tuple(m for m in discover_models(tiny_models) if m.name in ("OU-J", "OU-JYH"))
    monkeypatch.setattr(scoring, "make_runner",
                        lambda model, *a, **k: (lambda x: x.mean(axis=(1, 2, 3)).astype(np.float32)))

    def task(stop):
        return ChunkTask(str(nisp_store), "T0", 0, 0, stop, models, "cpu", 1, 32, None, "fp32")

    _peak(task(32))  # warm caches (store handle, preprocessor, resize matrices)
    small, _ = _peak(task(ROWS // 4))
    large, rows = _peak(task(ROWS))
    assert len(rows["ROW"]) == ROWS and np.isfinite(rows["P_ENSEMBLE"]).all()
    # 4x the rows: reading the whole task at once would hold 40 MB more pixels; read in pieces it holds the same
    more_pixels = (ROWS - ROWS // 4) * 3 * 66 * 66 * 4
    assert large - small < more_pixels / 8, (small, large)
