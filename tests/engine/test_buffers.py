"""The preprocessing buffer pool (engine/buffers.py): an array is handed out again only once nothing refers to it,
and the inputs it carries are the same bytes as new arrays' would be."""

from __future__ import annotations

import numpy as np
import pytest

from lensengine.engine.buffers import BufferPool
from lensengine.engine.preprocess import Preprocessor, resize_batch
from lensengine.engine.specs import MODEL_SPECS

SEVEN = [MODEL_SPECS[k] for k in ("OU-J", "OU-Y", "OU-H", "OU-JYH", "OU-VIS", "OU-66", "OU-200")]


def test_an_array_is_reused_only_when_nothing_refers_to_it():
    pool = BufferPool(enabled=True)
    assert pool.enabled
    first = pool.empty((4, 5))
    first[:] = 1.0
    address = first.ctypes.data
    del first
    again = pool.empty((4, 5))
    assert again.ctypes.data == address and (again == 1.0).all()  # the same memory, as it was left
    view = again[1:][:, None]  # a view of a view still holds the array
    del again
    other = pool.empty((4, 5))
    assert other.ctypes.data != address
    del view, other
    assert pool.empty((4, 5)).ctypes.data == address  # every view gone: free again
    assert pool.empty((4, 5), np.float64).dtype == np.float64 and pool.empty((5, 4)).shape == (5, 4)


def test_the_pool_keeps_no_more_than_its_caps():
    pool = BufferPool(max_bytes=3 * 80, per_shape=2, enabled=True)
    held = [pool.empty((4, 5)) for _ in range(4)]  # 80 bytes each, all held
    assert pool.nbytes == 2 * 80  # two kept for the shape, the others plain arrays
    held.append(pool.empty((20,)))
    held.append(pool.empty((20,)))
    assert pool.nbytes == 3 * 80  # the byte cap: the second (20,) array is not kept
    del held
    pool.empty((3, 10))  # 120 bytes: room made by forgetting the free (4, 5) arrays, the oldest shape
    assert pool.nbytes == 80 + 120
    held = [pool.empty((3, 10)), pool.empty((3, 10))]  # room for the second by forgetting the (20,) one
    assert pool.nbytes == 2 * 120
    held.append(pool.empty((1000,)))  # larger than the pool: never kept, nothing forgotten for it
    assert pool.nbytes == 2 * 120
    off = BufferPool(enabled=False)
    a = off.empty((4, 5))
    assert not off.enabled and off.nbytes == 0 and a.shape == (4, 5)


def test_lensengine_buffers_off_turns_the_pool_off(monkeypatch):
    monkeypatch.setenv("LENSENGINE_BUFFERS", "off")
    assert not BufferPool().enabled
    monkeypatch.delenv("LENSENGINE_BUFFERS")
    assert BufferPool().enabled


def _bands(rng, n):
    vis = rng.gamma(2.0, 3.0, (n, 200, 200)).astype(np.float32)
    vis[:, 95:105, 95:105] += 200
    bands = {"VIS": vis, **{b: rng.gamma(2.0, 40.0, (n, 66, 66)).astype(np.float32) for b in "YJH"}}
    bands["VIS"][3] = np.nan          # a bad band: zeroed and flagged
    bands["Y"][5] = 7.0               # a constant one
    bands["J"][6] *= np.float32(1e35)  # extreme but finite
    bands["H"][7, 0, 0] = 3e38
    return bands


def test_pooled_preprocessing_gives_the_same_bytes_batch_after_batch():
    """Eight sub-batches through one pooled preprocessor, three of them kept alive while later ones reuse
    memory: every input is byte for byte what a preprocessor without a pool makes, also for the kept ones."""
    rng = np.random.default_rng(11)
    bands = _bands(rng, 256)
    plain, pooled = Preprocessor(SEVEN), Preprocessor(SEVEN, buffers=BufferPool(enabled=True))
    kept = []
    for lo in range(0, 256, 32):
        sub = {b: a[lo:lo + 32] for b, a in bands.items()}
        want, got = plain(sub, 32), pooled(sub, 32)
        assert want.inputs.keys() == got.inputs.keys()
        for name in want.inputs:
            assert want.inputs[name].tobytes() == got.inputs[name].tobytes(), (lo, name)
            np.testing.assert_array_equal(want.usable[name], got.usable[name])
        np.testing.assert_array_equal(want.flags, got.flags)
        if lo < 96:
            kept.append((want, got))
    assert pooled.buffers.nbytes > 0
    for want, got in kept:  # nothing written over while still held
        for name in want.inputs:
            assert want.inputs[name].tobytes() == got.inputs[name].tobytes()


@pytest.mark.parametrize("n_in,n_out", [(200, 66), (66, 200)])
def test_resize_into_pooled_arrays_is_bit_identical(n_in, n_out):
    images = np.random.default_rng(3).normal(size=(9, n_in, n_in)).astype(np.float32)
    pool = BufferPool(enabled=True)
    for _ in range(2):  # the second time into reused memory
        assert resize_batch(images, n_out, pool).tobytes() == resize_batch(images, n_out).tobytes()


def test_a_workers_sub_batches_in_flight_reuse_every_plane_once_the_pool_is_warm(monkeypatch):
    """A scoring worker holds about five sub-batches at once (one being read, two waiting, two being scored), and
    each holds four planes of one shape (the four bands at 66 px and at 200 px).  With the default caps the pool
    keeps them all: after the first five sub-batches no preprocessing array is new memory."""
    from collections import deque

    pool = BufferPool(enabled=True)
    rng = np.random.default_rng(5)
    bands = {"VIS": rng.gamma(2.0, 1.0, (8, 200, 200)).astype(np.float32)}
    for b in ("Y", "J", "H"):
        bands[b] = rng.gamma(2.0, 1.0, (8, 66, 66)).astype(np.float32)
    prep = Preprocessor(SEVEN, buffers=pool)
    made = []
    real_empty = np.empty

    def counted_empty(shape, dtype=np.float32, **kwargs):
        made.append(shape)
        return real_empty(shape, dtype, **kwargs)

    monkeypatch.setattr(np, "empty", counted_empty)
    in_flight = deque(maxlen=5)  # the oldest sub-batch is let go as a new one comes in
    for _ in range(6):
        in_flight.append(prep(bands, 8))
    warm = len(made)
    for _ in range(6):
        in_flight.append(prep(bands, 8))
    assert warm > 0 and len(made) == warm, f"{len(made) - warm} new arrays after the pool was warm"


def test_a_workers_store_pieces_reuse_the_pools_arrays_and_score_the_same(tmp_path, tiny_models, monkeypatch):
    """score_chunk reads the store piece by piece into the pool's arrays (a piece's 200-px images are tens of MB,
    faulted in afresh on every read before stop 41): eight pieces read need no more new image arrays than are
    in flight at once, and the scores are those of a run with the pool off."""
    from lensengine.engine import scoring
    from lensengine.engine.models import load_entry

    from .conftest import make_store

    make_store(tmp_path / "s.zarr", tiles=("T0",), n_per_tile=512, chunk_size=256, bad=False)
    ou_j = (load_entry(next(tiny_models.glob("*OU_J.onnx"))),)
    monkeypatch.setattr(scoring, "READ_PIECE", 64)  # pieces of 64 in sub-batches of 16: eight pieces, four
    piece = (64, 200, 200)                           # sub-batches each, as a worker's 128 in sub-batches of 32

    def scores(pool):
        monkeypatch.setattr(scoring, "pool", pool)
        made = []
        real_empty = np.empty

        def counted_empty(shape, dtype=np.float32, **kwargs):
            made.append(tuple(np.atleast_1d(shape)))
            return real_empty(shape, dtype, **kwargs)

        monkeypatch.setattr(np, "empty", counted_empty)
        rows = list(scoring.score_store(tmp_path / "s.zarr", ou_j, None, device="cpu", threads=2, batch_size=16))
        monkeypatch.setattr(np, "empty", real_empty)
        return np.concatenate([r["P_OU_J"] for r in rows]), made.count(piece)

    pooled, new_pooled = scores(BufferPool(enabled=True))
    fresh, new_fresh = scores(BufferPool(enabled=False))
    assert new_fresh == 8  # every piece a new array without the pool
    assert 1 <= new_pooled <= 3, f"{new_pooled} new piece arrays for 8 pieces"
    assert pooled.tobytes() == fresh.tobytes() and np.isfinite(pooled).all()
