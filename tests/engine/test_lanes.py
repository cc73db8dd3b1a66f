"""Networks side by side in a worker (`lensengine run --lanes`, issue 13 item 4): the same scores and flags as one
network at a time, with or without the cascade; calls split so the lanes hold one call's memory; a failure in a
lane raised, not lost; the auto rule; the choice in the catalogue."""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from lensengine.catalogs.flags import Flag
from lensengine.catalogs.store import SurveyStore
from lensengine.engine.cascade import Cascade
from lensengine.engine.ensemble import MeanEnsemble
from lensengine.engine.models import discover_models
from lensengine.engine.run import RunOptions, plan_lanes
from lensengine.engine.scoring import make_runner, score_batch

from .conftest import make_store  # noqa: F401  (importlib mode: package-relative import)


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    path = tmp_path_factory.mktemp("lanes") / "s.zarr"
    make_store(path, tiles=("T0",), n_per_tile=40, chunk_size=64)  # rows 1-3 are bad cutouts (see make_store)
    return SurveyStore.open(path).read("T0", 0, 40)


def _runners(models):
    return {m.name: make_runner(m, "fp32", "cpu", 1) for m in models}


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.mark.parametrize("lanes", [2, 3])
def test_lanes_give_the_scores_and_flags_of_one_lane(batch, tiny_models, lanes):
    models = discover_models(tiny_models)
    runners = _runners(models)
    # one model refuses some outputs: BAD_MODEL_OUTPUT must land on the same rows from any lane
    vis = runners["OU-VIS"]
    runners["OU-VIS"] = lambda x: np.where(x[:, 0, 100, 100] > np.median(x[:, 0], axis=(1, 2)), np.nan,
                                           vis(x).ravel())  # a rule per cutout, whatever shares its call
    one = score_batch(batch, models, MeanEnsemble(), runners=runners, batch_size=8)
    many = score_batch(batch, models, MeanEnsemble(), runners=runners, batch_size=8, lanes=lanes)
    _assert_same(one, many)
    bad = (one["FLAGS"] & np.uint32(Flag.BAD_MODEL_OUTPUT)) != 0
    assert 5 <= bad.sum() <= 35  # the test's refusals really happened
    # the cascade's second stage runs in the lanes too
    cheap = np.column_stack([one["P_OU_J"], one["P_OU_JYH"]]).astype(np.float64).mean(axis=1)
    gate = Cascade(("OU-J", "OU-JYH"), ("OU-VIS",), float(np.nanmedian(cheap)), "validated", 0.5)
    _assert_same(score_batch(batch, models, MeanEnsemble(), runners=runners, batch_size=8, cascade=gate),
                 score_batch(batch, models, MeanEnsemble(), runners=runners, batch_size=8, cascade=gate, lanes=lanes))


def test_lanes_run_in_their_threads_largest_input_first_in_split_calls(batch, tiny_models):
    models = discover_models(tiny_models)
    real = _runners(models)
    calls: list[tuple[str, int, str]] = []
    lock = threading.Lock()

    def recording(name):
        def run(x):
            with lock:
                calls.append((name, len(x), threading.current_thread().name))
            return real[name](x)
        return run

    runners = {m.name: recording(m.name) for m in models}
    score_batch(batch, models, None, runners=runners, batch_size=8, lanes=2)
    assert all(thread.startswith("lensengine-lane") for _, _, thread in calls)
    assert max(size for _, size, _ in calls) == 4  # 8-cutout sub-batches in calls of at most 8 / 2
    for m in models:  # every usable cutout once (rows 1-3 are bad for some networks)
        assert 37 <= sum(size for name, size, _ in calls if name == m.name) <= 40
    # the 200-px network is the first job handed out: the lane that takes it calls it first (smallest first, the
    # 66-px networks would open both lanes)
    first_call: dict[str, str] = {}
    for name, _, thread in calls:
        first_call.setdefault(thread, name)
    assert "OU-VIS" in first_call.values()


def test_call_size_by_hand():
    from lensengine.engine.scoring import CPU_CALL_PIXELS, call_size

    assert CPU_CALL_PIXELS == 16 * 200 * 200
    assert call_size((32, 4, 200, 200), 32) == 16           # the 200-px networks: calls of 16
    assert call_size((32, 1, 200, 200), 32) == 16
    assert call_size((32, 4, 66, 66), 32) == 32             # the 66-px ones: the whole sub-batch ...
    assert call_size((500, 1, 66, 66), 500) == 146          # ... up to 640 000 // 4 356 cutouts
    assert call_size((32, 4, 66, 66), 32, lanes=2) == 16    # lanes split the sub-batch first
    assert call_size((33, 4, 66, 66), 33, lanes=2) == 17
    assert call_size((32, 4, 200, 200), 32, lanes=2) == 16
    assert call_size((10, 4, 200, 200), 10) == 10           # a short sub-batch in one call
    assert call_size((32, 4, 200, 200), 32, call_pixels=0) == 32  # no cap (a GPU)
    assert call_size((4, 1, 1000, 1000), 4) == 1            # at least one cutout a call


def _recorded(models, calls):
    real = _runners(models)

    def recording(name):
        def run(x):
            calls.append((name, len(x)))
            return real[name](x)
        return run

    return {m.name: recording(m.name) for m in models}


def test_200px_calls_are_capped_on_the_cpu_with_the_same_scores(batch, tiny_models, monkeypatch):
    """CPU calls hold at most CPU_CALL_PIXELS stamp pixels (the 200-px networks' memory, docs/performance.md);
    every cutout scores exactly as in whole-sub-batch calls; on a GPU the cap is GPU_CALL_PIXELS (64 cutouts of
    200 px, 587 of 66 px: the sizes the H200 measured best, docs/performance.md "The GPU benchmark")."""
    from lensengine.engine import scoring

    models = discover_models(tiny_models)
    calls: list[tuple[str, int]] = []
    capped = score_batch(batch, models, MeanEnsemble(), runners=_recorded(models, calls), batch_size=32)
    def sizes(name):
        return [n for model, n in calls if model == name]

    # 40 cutouts in sub-batches of 32 and 8 (rows 1-3 are bad for some networks, so a call may be short)
    assert len(sizes("OU-J")) == 2 and max(sizes("OU-J")) > 16          # 66 px: one call per sub-batch
    assert len(sizes("OU-VIS")) == 3 and max(sizes("OU-VIS")) == 16     # 200 px: the 32 in two calls
    calls.clear()
    whole = score_batch(batch, models, MeanEnsemble(), runners=_recorded(models, calls), batch_size=32, call_pixels=0)
    assert len(sizes("OU-VIS")) == 2 and max(sizes("OU-VIS")) > 16
    _assert_same(capped, whole)
    assert scoring.call_size((4096, 1, 200, 200), 4096, call_pixels=scoring.GPU_CALL_PIXELS) == 64
    assert scoring.call_size((4096, 3, 66, 66), 4096, call_pixels=scoring.GPU_CALL_PIXELS) == 587
    # score_chunk (run, evaluate) takes the GPU cap where the networks run on a GPU, the CPU one elsewhere
    assert scoring._on_gpu("cpu") is False and scoring._on_gpu("cuda") and scoring._on_gpu("tensorrt")
    monkeypatch.setattr(scoring, "_gpu_here", lambda: True)
    assert scoring._on_gpu("auto") and not scoring._on_gpu("cpu")


def test_a_failure_in_a_lane_is_raised(batch, tiny_models):
    models = discover_models(tiny_models)
    runners = _runners(models)

    def broken(x):
        raise RuntimeError("session lost")

    runners["OU-JYH"] = broken
    with pytest.raises(RuntimeError, match="session lost"):
        score_batch(batch, models, None, runners=runners, batch_size=8, lanes=2)


def _opts(models, **kw) -> RunOptions:
    return RunOptions(store=Path("s.zarr"), out=Path("c.fits"), scores=Path("s"), models=models, **kw)


def test_auto_lanes_rule(tiny_models):
    models = discover_models(tiny_models)
    assert plan_lanes(_opts(models, device="cpu"), 2) == (2, 1)                # two cores, one worker: two lanes
    assert plan_lanes(_opts(models, device="cpu"), 8) == (2, 4)
    assert plan_lanes(_opts(models, device="cpu", workers=2), 2) == (1, 1)     # one core per worker
    assert plan_lanes(_opts(models, device="cpu", lanes=1), 2) == (1, 2)       # as before
    assert plan_lanes(_opts(models, device="cpu", threads=6, lanes=3), 2) == (3, 2)
    assert plan_lanes(_opts(models, device="cpu", scheduler="tcp://x:8786"), 2) == (1, 0)  # threads unknown
    assert plan_lanes(_opts(models[:1], device="cpu"), 2) == (1, 2)            # one network
    assert plan_lanes(_opts(models, device="cpu", precision="bf16"), 2) == (1, 2)  # torch runners: not auto
    assert plan_lanes(_opts(models, device="cuda"), 2) == (1, 2)


@pytest.mark.slow
def test_run_records_its_lanes_and_scores_as_one_lane(tmp_path, tiny_models):
    import pyarrow.parquet as pq
    from astropy.io import fits

    from lensengine.catalogs.catalog import score_table_files
    from lensengine.engine.cli import cli

    make_store(tmp_path / "s.zarr", n_per_tile=24, chunk_size=24)
    tables = {}
    for lanes in (1, 2):
        out = tmp_path / f"c{lanes}.fits"
        result = CliRunner().invoke(cli, ["-q", "run", "--tiles", str(tmp_path / "s.zarr"), "--models",
                                          str(tiny_models), "--out", str(out), "--scores", str(tmp_path / f"s{lanes}"),
                                          "--threads", "2", "--lanes", str(lanes), "--threshold", "0",
                                          "--no-dashboard"], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        with fits.open(out) as hdul:
            assert (hdul[1].header["LANES"], hdul[1].header["NTHREADS"]) == (lanes, 2 // lanes)
        table = pq.read_table([str(p) for p in score_table_files(tmp_path / f"s{lanes}")]).to_pandas()
        tables[lanes] = table.sort_values(["TILE", "ROW"]).reset_index(drop=True)
    assert len(tables[1]) == 48
    for column in [c for c in tables[1].columns if c.startswith("P_")] + ["FLAGS"]:
        np.testing.assert_array_equal(tables[1][column].to_numpy(), tables[2][column].to_numpy(), err_msg=column)


def test_in_process_scoring_takes_lanes_by_the_same_rule(monkeypatch, tmp_path, tiny_models):
    """evaluate and recall-test score through score_store: two lanes on two threads, one on one."""
    from lensengine.engine import scoring

    seen: list[int] = []
    launch = scoring._launch
    monkeypatch.setattr(scoring, "_launch", lambda *args: seen.append(args[3]) or launch(*args))
    make_store(tmp_path / "s.zarr", tiles=("T0",), n_per_tile=16, chunk_size=16)
    models = discover_models(tiny_models)
    for threads, lanes in ((2, 2), (1, 1)):
        seen.clear()
        list(scoring.score_store(tmp_path / "s.zarr", models, None, device="cpu", threads=threads))
        assert seen and set(seen) == {lanes}


@pytest.mark.parametrize("lanes", [2, 3])
def test_sub_batches_prepared_as_lane_jobs_score_as_with_a_read_thread(batch, tiny_models, monkeypatch, lanes):
    """With lanes of one thread each (``prep_on_lanes``) the next sub-batch is prepared by a job on the lanes, not
    by a thread of its own that takes turns with them on the same cores: the same scores and flags, with a
    cascade too, and every preparation made on a lane."""
    from lensengine.engine import scoring
    from lensengine.engine.preprocess import Preprocessor

    models = discover_models(tiny_models)
    runners = _runners(models)
    where: list[str] = []
    real = Preprocessor.__call__
    monkeypatch.setattr(Preprocessor, "__call__",
                        lambda self, *a, **k: where.append(threading.current_thread().name) or real(self, *a, **k))
    cheap_models = ("OU-J", "OU-JYH")
    gate = Cascade(cheap_models, ("OU-VIS",), 0.5, "validated", 0.5)

    def scores(on_lanes: bool, cascade=None) -> dict:
        where.clear()
        return scoring._score_sub_batches(scoring._sub_batches(batch, 0, 8), len(batch), models, MeanEnsemble(),
                                          runners=runners, lanes=lanes, prep_on_lanes=on_lanes, cascade=cascade)

    for cascade in (None, gate):
        thread = scores(False, cascade)
        assert where and all(name == "lensengine-prefetch" for name in where[:5])
        on_lanes = scores(True, cascade)
        first_stage = where[:5] if cascade is None else [w for w in where if w != "MainThread"]
        assert first_stage and all(name.startswith("lensengine-lane") for name in first_stage), where
        _assert_same(thread, on_lanes)


def test_lane_jobs_preparing_sub_batches_raise_at_their_item_and_never_overlap():
    """:func:`_on_lanes` hands items over in order, raises a failure at the item where it happened, and never
    advances the sequence from two threads at once."""
    from lensengine.engine.scoring import _on_lanes

    busy = threading.Lock()

    def items():
        for i in range(6):
            assert busy.acquire(blocking=False), "two threads advanced the sequence at once"
            try:
                if i == 4:
                    raise ValueError("bad piece 4")
                yield i, threading.current_thread().name
            finally:
                busy.release()

    got = []
    with pytest.raises(ValueError, match="bad piece 4"):
        for i, name in _on_lanes(items(), 2):
            got.append(i)
            assert name.startswith("lensengine-lane")
    assert got == [0, 1, 2, 3]
    stream = _on_lanes(iter(range(100)), 2)
    assert [next(stream) for _ in range(3)] == [0, 1, 2]
    stream.close()  # a caller that stops early: the job in progress is waited for, nothing raises


def test_reading_and_preprocessing_take_no_thread_of_their_own_only_where_the_networks_fill_the_cores(monkeypatch):
    """The default CPU run (one worker with a lane per core, or a one-thread worker per core) prepares on its
    lanes or in turn; where cores are left over, threads are unknown or the networks are on a GPU, a read
    thread of its own does.  The run decides for its local cluster; a ``--scheduler`` cluster is unknown."""
    from lensengine.engine import run, scoring

    monkeypatch.setattr(scoring, "_gpu_here", lambda: False)
    task = scoring.ChunkTask("s", "T", 0, 0, 1, (), device="auto", threads=1, lanes=2, fills_cores=True)
    assert scoring._prep_mode(task) == "lanes"
    assert scoring._prep_mode(dataclasses.replace(task, lanes=1)) == "inline"
    for other in (dict(fills_cores=False), dict(threads=2), dict(threads=0), dict(device="cuda")):
        assert scoring._prep_mode(dataclasses.replace(task, **other)) == "thread", other
    opts = _opts(())
    assert run.fills_the_cores(opts, lanes=2, threads=1, ncores=2)  # the default: one worker, two lanes
    assert run.fills_the_cores(_opts((), workers=2), lanes=1, threads=1, ncores=2)
    assert not run.fills_the_cores(opts, lanes=2, threads=1, ncores=4)  # --threads 2 on four cores
    assert not run.fills_the_cores(opts, lanes=2, threads=2, ncores=4)
    assert not run.fills_the_cores(_opts((), scheduler="tcp://h:8786"), lanes=2, threads=1, ncores=2)


def test_a_one_thread_worker_among_others_prepares_in_turn_with_the_same_scores(tmp_path, tiny_models, monkeypatch):
    """``inline``: the task's own thread reads and prepares each sub-batch between the networks' calls (no read
    thread); the rows equal those of a read thread."""
    from lensengine.catalogs.store import SurveyStore as Store
    from lensengine.engine import scoring

    path = tmp_path / "s.zarr"
    make_store(path, tiles=("T0",), n_per_tile=40, chunk_size=64)
    models = tuple(discover_models(tiny_models))
    where: list[str] = []
    real = Store.read
    monkeypatch.setattr(Store, "read", lambda self, *a, **k: where.append(threading.current_thread().name)
                        or real(self, *a, **k))
    task = scoring.ChunkTask(str(path), "T0", 0, 0, 40, models, "cpu", 1, 8, lanes=1, fills_cores=False)
    threaded = scoring.score_chunk(task)
    assert set(where) == {"lensengine-prefetch"}
    where.clear()
    inline = scoring.score_chunk(dataclasses.replace(task, fills_cores=True))
    assert set(where) == {threading.current_thread().name}
    for key in threaded:
        assert np.array_equal(threaded[key], inline[key], equal_nan=threaded[key].dtype.kind == "f"), key
