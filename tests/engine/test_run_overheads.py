"""What `lensengine run` spends outside the networks (issue 13 item 4): sessions that leave their cores free
between operators, one session per model and worker (the providers query builds the runner's own), and the
cluster shut down in the background while the catalogue is written, its errors still raised; and the helpers of
``benchmarks/bench_engine.py --overlap`` that measure it (a store's first N cutouts, the cascade's bound)."""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path

import numpy as np
import pytest

from lensengine.catalogs.store import SurveyStore
from lensengine.engine import sessions
from lensengine.engine.models import discover_models
from lensengine.engine.run import _Closing, _providers
from lensengine.engine.scoring import ChunkTask, make_runner

from .conftest import make_store  # noqa: F401  (importlib mode: package-relative import)


def test_sessions_do_not_spin_between_operators(tiny_models):
    """A spinning pool holds both cores of a 2-core machine while the next sub-batch is being prepared."""
    entry = discover_models(tiny_models)[0]
    sessions.clear_sessions()
    sess = sessions.get_session(str(entry.path), "cpu", 2, entry.name)
    assert sess.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"


class _LocalClient:
    """Runs ``client.run``'s function here, as one worker would."""

    def run(self, fn, *args):
        return {"tcp://worker": fn(*args)}


def test_providers_query_builds_the_session_the_runner_then_uses(tiny_models):
    entries = tuple(discover_models(tiny_models))
    task = ChunkTask("unused.zarr", "T0", 0, 0, 1, entries, "cpu", 1)
    sessions.clear_sessions()
    make_runner.cache_clear()
    assert _providers(_LocalClient(), task) == {"tcp://worker": "CPUExecutionProvider"}
    assert len(sessions._SESSIONS) == 1
    make_runner(entries[0], "fp32", "cpu", 1)
    assert len(sessions._SESSIONS) == 1  # the runner took the session the query built: no second copy


class _Recorder:
    def __init__(self, fail: bool = False):
        self.closed_in: list[str] = []
        self.fail = fail

    def close(self):
        self.closed_in.append(threading.current_thread().name)
        if self.fail:
            raise RuntimeError("cluster would not stop")


def test_cluster_closes_in_the_background_once_released_and_exactly_once():
    client, cluster = _Recorder(), _Recorder()
    closing = _Closing(client, cluster)
    closing.start()
    closing.start()  # a second release starts nothing more
    closing.finish()
    assert client.closed_in == cluster.closed_in == ["lensengine-close-cluster"]

    client, cluster = _Recorder(), _Recorder()
    _Closing(client, cluster).finish()  # never released (a failed run): closed at once, in the caller's thread
    assert client.closed_in == cluster.closed_in == [threading.current_thread().name]


def test_a_failed_background_close_is_raised_by_finish():
    closing = _Closing(_Recorder(), _Recorder(fail=True))
    closing.start()
    with pytest.raises(RuntimeError, match="would not stop"):
        closing.finish()


def _bench_engine():
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_engine.py"
    spec = importlib.util.spec_from_file_location("_bench_engine", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_overlap_benchmark_subset_and_cascade_bound(tmp_path, tiny_models):
    """The --overlap mode's store subset (first N cutouts across tiles, truth kept) and the cascade's bound."""
    bench = _bench_engine()
    make_store(tmp_path / "s.zarr", n_per_tile=24, chunk_size=16)  # tiles T0, T1; IDs 1000 * tile + row
    sub = SurveyStore.open(bench.subset_store(tmp_path / "s.zarr", tmp_path / "sub.zarr", 30))
    assert sub.tiles == ["T0", "T1"] and sub.total_cutouts() == 30
    assert np.array_equal(sub.read("T1", 0, 6).object_id, 1000 + np.arange(6))
    assert np.array_equal(sub.read("T0", 0, 24).truth["label"], np.arange(24) % 2)
    with pytest.raises(ValueError, match="fewer than 60"):
        bench.subset_store(tmp_path / "s.zarr", tmp_path / "sub2.zarr", 60)
    # tiny_models: OU-J, OU-JYH (66 px, cheap) and OU-VIS (200 px, the expensive one without a cascade.json)
    rate = bench.cascade_bound(tiny_models, {"OU-J": 100.0, "OU-JYH": 50.0, "OU-VIS": 10.0}, 0.77, 0.1)
    assert rate == pytest.approx(1 / (1 / 100 + 1 / 50 + 0.1 / 10))


def test_overlap_bound_scores_the_stores_own_cutouts(tmp_path, tiny_models):
    """The --overlap bound runs the networks on the store's first cutouts, preprocessed as a run does: the
    bound's scores are the engine's scores of those cutouts, so it times the pixels the run scores."""
    from lensengine.engine.scoring import score_store
    from lensengine.catalogs.catalog import score_column

    bench = _bench_engine()
    make_store(tmp_path / "s.zarr", n_per_tile=24, chunk_size=16, bad=False)  # tiles T0, T1
    bands = bench.first_cutouts(tmp_path / "s.zarr", 30)
    assert all(len(a) == 30 for a in bands.values())
    t1 = SurveyStore.open(tmp_path / "s.zarr").read("T1", 0, 6).bands()
    assert all(np.array_equal(bands[b][24:], t1[b]) for b in bands)
    bound = bench.model_only(tiny_models, 30, store=tmp_path / "s.zarr")
    models = discover_models(tiny_models)
    rows = list(score_store(tmp_path / "s.zarr", models, None, device="cpu", threads=1))
    for m in models:
        engine = np.concatenate([r[score_column(m.name)] for r in rows])[:30]
        assert np.allclose(bound["outputs"][m.name].reshape(-1), engine, atol=1e-6), m.name
    random = bench.model_only(tiny_models, 30)  # without a store: random bands, other scores
    assert not np.allclose(random["outputs"][models[0].name].reshape(-1), bound["outputs"][models[0].name].reshape(-1))


def test_local_cluster_wakes_up_less_and_keeps_the_users_dask_settings(tmp_path, monkeypatch):
    """The local cluster's workers run without Dask's statistical profiler and with sparse monitors (LEAN_DASK),
    except where the user set a value; the client process's own Dask config is left as it was."""
    import dask

    from lensengine.engine.run import LEAN_DASK, RunOptions, _client, _close, lean_dask_config

    assert lean_dask_config() == {k: lean for k, (_, lean) in LEAN_DASK.items()}
    with dask.config.set({"distributed.admin.system-monitor.interval": "3s"}):  # a config file's value: kept
        assert "distributed.admin.system-monitor.interval" not in lean_dask_config()
    # a DASK_* variable is kept, even one that asks for Dask's default
    monkeypatch.setenv("DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED", "True")
    assert "distributed.worker.profile.enabled" not in lean_dask_config()
    monkeypatch.delenv("DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED")
    opts = RunOptions(store=tmp_path, out=tmp_path / "c.fits", scores=tmp_path / "s.parquet", models=[],
                      workers=1, dashboard=False)
    with dask.config.set({"distributed.admin.tick.interval": "50ms"}):  # the user's value reaches the workers
        client, cluster = _client(opts, tmp_path, None)
    try:
        (every,) = client.run(lambda dask_worker: {k: v.callback_time for k, v in
                                                   dask_worker.periodic_callbacks.items()}).values()
        assert "profile" not in every and every["memory_monitor"] == 1000 and every["monitor"] == 2000
        assert every["tick"] == 50
        assert cluster.scheduler.periodic_callbacks["monitor"].callback_time == 2000
    finally:
        _close(client, cluster)
    assert dask.config.get("distributed.worker.profile.enabled") is True  # this process: Dask's default again


def test_cpu_split_of_a_run_is_hand_computed():
    """--overlap's CPU split: the busiest thread per core are the networks, the rest is everything else."""
    run = {"busiest_threads_cpu_s": [50.0, 40.0, 5.0, 1.0], "cpu_s": 100.0, "wall_s": 60.0, "cutouts": 1000}
    split = _bench_engine().cpu_split(run, cores=2)
    assert split == pytest.approx({"network_share": 90 / 120, "network_ms": 90.0, "rest_ms": 10.0,
                                   "idle_share": 20 / 120})


def test_ab_benchmark_compares_score_tables_bit_for_bit(tmp_path, monkeypatch):
    """bench_ab.py's check that two versions scored alike: row order does not matter, any P or flag does."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tests.conftest import BENCHMARKS, load_script

    monkeypatch.syspath_prepend(str(BENCHMARKS))  # bench_ab imports bench_engine
    bench = load_script(BENCHMARKS / "bench_ab.py", "_bench_ab")

    def table(folder: Path, rows: list[tuple[str, int, float, int]]) -> Path:
        for tile in sorted({r[0] for r in rows}):
            part = [r for r in rows if r[0] == tile]
            (folder / f"tile={tile}").mkdir(parents=True)
            pq.write_table(pa.table({"TILE": [r[0] for r in part], "ROW": [r[1] for r in part],
                                     "P_OU_J": np.array([r[2] for r in part], np.float32),
                                     "FLAGS": np.array([r[3] for r in part], np.uint32),
                                     "ERROR": ["" for _ in part]}), folder / f"tile={tile}" / "part-0.parquet")
        return folder

    rows = [("T0", 0, 0.25, 0), ("T0", 1, float("nan"), 8), ("T1", 0, 0.5, 0), ("T1", 1, 0.75, 0)]
    a = table(tmp_path / "a", rows)
    assert bench.same_scores(a, table(tmp_path / "b", rows[::-1]))           # another order, NaN equal to NaN
    assert not bench.same_scores(a, table(tmp_path / "c", [*rows[:3], ("T1", 1, 0.7500001, 0)]))
    assert not bench.same_scores(a, table(tmp_path / "d", [*rows[:2], ("T1", 0, 0.5, 1), rows[3]]))
