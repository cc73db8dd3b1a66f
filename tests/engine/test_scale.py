"""Issue 14, done-when: a run over 10 000 chunks keeps client memory within 20 % of a run over 1 000.

A real 10 000-chunk store (and 10 000 model calls) would take minutes, so the test drives the run's
own scheduling code (:func:`lensengine.engine.run.run_tasks` over the tasks that
:meth:`_Plan.tasks` makes, one per chunk) with a null scorer (``len``) on a Dask cluster that runs in
this process: the measured RSS holds the client, the scheduler and the worker together, and the
scheduler's task table is sampled directly.  Submitting every task at once, as the run did before,
puts all 10 000 in the scheduler and grows this process by far more than 20 %.
"""

from __future__ import annotations

from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.slow


def _plan(n_chunks: int, per_tile: int = 1000):
    """A plan of ``n_chunks`` one-cutout chunks in tiles of ``per_tile``, with seven realistic model entries."""
    from lensengine.engine.models import ModelEntry
    from lensengine.engine.run import _Plan
    from lensengine.engine.scoring import ChunkTask

    models = tuple(ModelEntry(f"OU-{i}", Path(f"/models/published/OU_{i}.onnx"), ("VIS", "Y", "J", "H"), 200,
                              sha256=f"{i:064x}") for i in range(7))
    template = ChunkTask("/surveys/euclid.zarr", "", 0, 0, 0, models)
    tiles = [(f"T{t:05d}", min(per_tile, n_chunks - t * per_tile)) for t in range(-(-n_chunks // per_tile))]
    return _Plan(None, None, template, tiles, chunk_size=1, task_size=1)


def _run(client, scheduler, n_chunks: int, per_worker: int) -> tuple[int, int, int]:
    """(tasks run, peak RSS of this process, most tasks the scheduler held) for a null run of ``n_chunks``."""
    from lensengine.engine.run import run_tasks

    me = psutil.Process()
    peak = {"rss": me.memory_info().rss, "tasks": 0, "seen": 0}

    def on_result(task, result) -> None:
        assert result == 1  # len(task): the task arrived whole
        peak["seen"] += 1
        peak["tasks"] = max(peak["tasks"], len(scheduler.tasks))
        if peak["seen"] % 50 == 0:
            peak["rss"] = max(peak["rss"], me.memory_info().rss)

    plan = _plan(n_chunks)
    assert plan.n_tasks == n_chunks
    done = run_tasks(client, plan.tasks(), len, on_result, key=lambda t: f"null-{t.tile}-{t.start}",
                     in_flight_per_worker=per_worker)
    return done, max(peak["rss"], me.memory_info().rss), peak["tasks"]


def test_client_memory_is_flat_in_the_number_of_chunks():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                      dashboard_address="127.0.0.1:0", scheduler_kwargs={"dashboard": False}) as cluster, \
            Client(cluster) as client:
        scheduler = cluster.scheduler
        _run(client, scheduler, 300, 4)  # warm up: imports, allocator pools, the comms
        done_small, rss_small, held_small = _run(client, scheduler, 1_000, 4)
        done_large, rss_large, held_large = _run(client, scheduler, 10_000, 4)
    assert (done_small, done_large) == (1_000, 10_000)  # every task once
    # the window: 4 per worker, refilled at half; released tasks leave the scheduler at once
    assert held_small <= 8 and held_large <= 8, (held_small, held_large)
    assert rss_large <= 1.2 * rss_small, f"client RSS {rss_small / 2**20:.1f} MiB at 1 000 chunks, " \
                                         f"{rss_large / 2**20:.1f} MiB at 10 000"


def test_tasks_cover_every_row_once_whatever_the_task_size():
    """Row ranges of a chunk, whole chunks, several chunks: the tasks tile each tile exactly, pieces inside chunks."""
    from lensengine.engine.run import effective_task_size

    plan = _plan(1)
    plan.chunk_size, plan.tiles = 16, [("A", 40), ("B", 16), ("C", 1)]
    for requested in (1, 5, 16, 20, 32, 100):
        plan.task_size = effective_task_size(requested, 57, 16)
        tasks = list(plan.tasks())
        assert len(tasks) == plan.n_tasks, requested
        for tile, n in plan.tiles:
            rows = [r for t in tasks if t.tile == tile for p in t.pieces for r in range(p.start, p.stop)]
            assert rows == list(range(n)), (requested, tile)
        for t in tasks:
            assert all(p.start // 16 == p.index == (p.stop - 1) // 16 for p in t.pieces)  # a piece: one chunk
            assert (t.start, t.stop) == (t.pieces[0].start, t.pieces[-1].stop)
            assert len(t) <= max(plan.task_size, 1)
    assert effective_task_size(20, 57, 16) == 16  # more than a chunk: whole chunks
    assert effective_task_size(0, 200, 1024) == 128  # the 200-cutout demo: 2 tasks, progress that moves
    assert effective_task_size(0, 8000, 1024) == 500  # a small store: 16 tasks
    assert effective_task_size(0, 10**9, 1024) == 1024  # a survey: one chunk per task


def test_the_last_tasks_are_cut_smaller_so_that_the_workers_finish_together():
    """The plan's last two tasks are cut into up to four row ranges of at least MIN_TASK_SIZE; the rest stay whole
    chunks; every row once, in order; ``n_tasks`` counts what ``tasks()`` yields, also across tiles."""
    from lensengine.engine.run import MIN_TASK_SIZE, effective_task_size

    plan = _plan(1)
    plan.chunk_size, plan.tiles = 1024, [("A", 20_000)]
    plan.task_size = effective_task_size(0, 20_000, 1024)
    tasks = list(plan.tasks())
    assert [(t.start, t.stop) for t in tasks[-9:]] == [
        (17408, 18432),  # the third from last: a whole chunk
        (18432, 18688), (18688, 18944), (18944, 19200), (19200, 19456),  # the last whole chunk, in four
        (19456, 19592), (19592, 19728), (19728, 19864), (19864, 20000)]  # the partial last chunk, in four
    assert len(tasks) == plan.n_tasks == 20 + 3 + 3
    assert [r for t in tasks for p in t.pieces for r in range(p.start, p.stop)] == list(range(20_000))

    # the last two ranges in one tile: its last whole chunk is cut, a range shorter than two MIN_TASK_SIZE is not
    plan.tiles = [("A", 3072), ("B", 1024 + MIN_TASK_SIZE + 5)]
    tasks = list(plan.tasks())
    assert [(t.tile, t.start, t.stop) for t in tasks if t.tile == "B"] == [
        ("B", 0, 256), ("B", 256, 512), ("B", 512, 768), ("B", 768, 1024), ("B", 1024, 1157)]
    assert len(tasks) == plan.n_tasks == 3 + 5
    for tile, n in plan.tiles:
        assert [r for t in tasks if t.tile == tile for p in t.pieces for r in range(p.start, p.stop)] == list(range(n))

    # the last two ranges in two tiles: the first tile's last chunk is cut too
    plan.tiles = [("A", 3072), ("B", MIN_TASK_SIZE + 5)]
    tasks = list(plan.tasks())
    assert [(t.tile, t.start, t.stop) for t in tasks[-6:]] == [
        ("A", 1024, 2048), ("A", 2048, 2304), ("A", 2304, 2560), ("A", 2560, 2816), ("A", 2816, 3072), ("B", 0, 133)]
    assert len(tasks) == plan.n_tasks == 4 + 3
    for tile, n in plan.tiles:
        assert [r for t in tasks if t.tile == tile for p in t.pieces for r in range(p.start, p.stop)] == list(range(n))
