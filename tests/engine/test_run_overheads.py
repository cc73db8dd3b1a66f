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
