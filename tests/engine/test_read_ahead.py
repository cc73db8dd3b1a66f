"""Reading ahead: a task reads the first piece of the range scored after it while its networks finish (stop 42)."""

from __future__ import annotations

import dataclasses
import threading

import numpy as np
import pytest

from lensengine.catalogs.flags import Flag
from lensengine.catalogs.store import SurveyStore
from lensengine.engine import scoring
from lensengine.engine.models import load_entry
from lensengine.engine.run import RunTask, reading_ahead
from lensengine.engine.scoring import ChunkTask, score_chunk, score_store, with_read_ahead

from .conftest import corrupt_chunk, make_store


@pytest.fixture
def ou_j(tiny_models):
    return (load_entry(next(tiny_models.glob("*OU_J.onnx"))),)


@pytest.fixture
def counted_reads(monkeypatch):
    """Every store read as (tile, start, stop, thread name), in order."""
    reads: list[tuple] = []
    real = SurveyStore.read

    def read(self, tile, start, stop, **kwargs):
        reads.append((tile, start, stop, threading.current_thread().name))
        return real(self, tile, start, stop, **kwargs)

    monkeypatch.setattr(SurveyStore, "read", read)
    monkeypatch.setattr(scoring, "READ_PIECE", 8)  # pieces of 8 in sub-batches of 4: two pieces a task
    return reads


def _tasks(path, models, rows=16):
    store = SurveyStore.open(path)
    return [ChunkTask(str(path), tile, index, lo, min(lo + rows, stop), models, "cpu", 1, 4)
            for tile in store.tiles for index, (start, stop) in enumerate(store.chunk_slices(tile))
            for lo in range(start, stop, rows)]


def _same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert np.array_equal(a[name], b[name], equal_nan=a[name].dtype.kind == "f"), name


def test_scoring_in_order_reads_every_piece_once_and_each_tasks_first_piece_ahead(tmp_path, ou_j, counted_reads,
                                                                                      monkeypatch):
    """Over two tiles (bad cutouts included): the same rows as tasks scored without reading ahead, every piece
    read exactly once, and each task's first piece read by the task before it, before it started."""
    path = tmp_path / "s.zarr"
    make_store(path)  # tiles T0, T1 of 48 cutouts, chunks of 16
    plain = [score_chunk(t) for t in _tasks(path, ou_j)]
    assert len(counted_reads) == 12 and all(name == "lensengine-prefetch" for *_, name in counted_reads)
    counted_reads.clear()
    real_score_chunk = scoring.score_chunk

    def started(task):
        counted_reads.append(("start", task.tile, task.start))
        return real_score_chunk(task)

    monkeypatch.setattr(scoring, "score_chunk", started)
    ahead = list(score_store(path, ou_j, None, device="cpu", threads=1, batch_size=4))
    for a, b in zip(plain, ahead, strict=True):
        _same(a, b)
    reads = [r[:3] for r in counted_reads if r[0] != "start"]
    assert sorted(reads) == sorted({(t, a, a + 8) for t in ("T0", "T1") for a in range(0, 48, 8)})  # once each
    events = [r[:3] for r in counted_reads]
    for tile, start in [("T0", 16), ("T0", 32), ("T1", 0), ("T1", 16), ("T1", 32)]:  # every task but the first
        assert events.index((tile, start, start + 8)) < events.index(("start", tile, start))
    assert events.index(("T0", 0, 8)) > events.index(("start", "T0", 0))
    assert scoring._read_ahead._slot is None  # the last task had nothing to read ahead


def test_a_piece_read_for_a_range_that_does_not_come_next_is_let_go(tmp_path, ou_j, counted_reads):
    path = tmp_path / "s.zarr"
    make_store(path, tiles=("T0",))
    first, second, third = _tasks(path, ou_j)
    expected = score_chunk(third)
    counted_reads.clear()
    score_chunk(dataclasses.replace(first, ahead=(second.tile, second.index, second.start, second.stop)))
    assert counted_reads[-1][:3] == ("T0", 16, 24)  # read ahead for the second task ...
    _same(score_chunk(third), expected)  # ... but another came next: it reads its own pieces
    assert counted_reads[-2:] == [("T0", 32, 40, "lensengine-prefetch"), ("T0", 40, 48, "lensengine-prefetch")]
    assert scoring._read_ahead._slot is None  # the unwanted piece is not kept


def test_a_corrupt_chunk_read_ahead_is_reported_by_its_own_task(tmp_path, ou_j):
    """Reading ahead into a corrupt chunk does not fail the task before it; the chunk's own task reports it
    unreadable (flag and reason), as without reading ahead."""
    path = tmp_path / "s.zarr"
    make_store(path, tiles=("T0",))
    corrupt_chunk(path, "T0", 1)
    rows = list(score_store(path, ou_j, None, device="cpu", threads=1, batch_size=4))
    assert [len(r["FLAGS"]) for r in rows] == [16, 16, 16]
    assert not (rows[0]["FLAGS"] & Flag.UNREADABLE).any() and not (rows[2]["FLAGS"] & Flag.UNREADABLE).any()
    assert (rows[1]["FLAGS"] & Flag.UNREADABLE).all() and "vis" in rows[1]["ERROR"][0]
    assert np.isfinite(rows[0]["P_OU_J"][4:]).all()


def test_a_one_worker_run_tells_each_piece_the_range_after_it():
    """reading_ahead: within a task each piece is told the next piece, the last piece the next task's first;
    the last task is told nothing; the tasks are made one at a time as they are needed."""
    def task(start, stop, *edges):
        cuts = [start, *edges, stop]
        return RunTask("T", start, stop, tuple(ChunkTask("s", "T", a // 10, a, b, ()) for a, b in zip(cuts, cuts[1:])))

    made = []

    def tasks():
        for t in (task(0, 20, 10), task(20, 25), task(25, 30)):
            made.append(t.start)
            yield t

    it = reading_ahead(tasks())
    first = next(it)
    assert made == [0, 20]  # one task ahead, no more
    assert [p.ahead for p in first.pieces] == [("T", 1, 10, 20), ("T", 2, 20, 25)]
    assert [p.ahead for t in it for p in t.pieces] == [("T", 2, 25, 30), None]
    assert list(with_read_ahead(iter([]))) == []
