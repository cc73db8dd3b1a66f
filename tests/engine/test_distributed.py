"""`lensengine run` against a real Dask cluster: a `dask scheduler` and two `dask worker` processes."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from astropy.table import Table

from .conftest import make_store

pytestmark = pytest.mark.slow

DASK = shutil.which("dask") or str(Path(sys.executable).with_name("dask"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """A scheduler and workers as separate OS processes on loopback."""

    def __init__(self, tmp: Path, n_workers: int = 2):
        self.port = _free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.tmp = tmp
        env = dict(os.environ, DASK_DISTRIBUTED__WORKER__DAEMON="False")
        self.logs = [open(tmp / "scheduler.log", "w")]
        self.scheduler = subprocess.Popen(
            [DASK, "scheduler", "--host", "127.0.0.1", "--port", str(self.port), "--dashboard-address", ":0",
             "--no-show"], stdout=subprocess.DEVNULL, stderr=self.logs[0],
            start_new_session=True, env=env)
        self.workers = []
        for i in range(n_workers):
            log = open(tmp / f"worker{i}.log", "w")
            self.logs.append(log)
            # --no-nanny: the worker is the process we kill, nothing restarts it behind our back
            self.workers.append(subprocess.Popen(
                [DASK, "worker", self.address, "--nthreads", "1", "--no-nanny", "--name", f"w{i}",
                 "--local-directory", str(tmp / f"w{i}"), "--no-dashboard"],
                stdout=subprocess.DEVNULL, stderr=log, start_new_session=True, env=env))
        self._wait_for_workers(n_workers)

    def _wait_for_workers(self, n: int) -> None:
        from distributed import Client

        deadline = time.time() + 120
        with Client(self.address, timeout="60s") as client:
            while len(client.scheduler_info()["workers"]) < n:
                if time.time() > deadline:
                    raise TimeoutError(f"only {len(client.scheduler_info()['workers'])} of {n} workers joined")
                time.sleep(0.2)

    def close(self) -> None:
        for proc in [*self.workers, self.scheduler]:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in [*self.workers, self.scheduler]:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        for log in self.logs:
            log.close()


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path)
    yield c
    c.close()


def _run(args, **kw):
    return subprocess.run([sys.executable, "-m", "lensengine.engine", "-v", "run", *args],
                          capture_output=True, text=True, timeout=600, **kw)


def _scores(path: Path) -> Table:
    import pyarrow.parquet as pq

    return Table(pq.read_table(path).to_pydict())


def test_scores_a_store_through_a_scheduler_and_two_workers(cluster, tmp_path, tiny_models):
    store = tmp_path / "s.zarr"
    make_store(store, tiles=("A", "B"), n_per_tile=32, chunk_size=16, bad=False)
    out = tmp_path / "c.fits"
    result = _run(["--tiles", str(store), "--models", str(tiny_models), "--scheduler", cluster.address,
                   "--out", str(out), "--threshold", "0.2"])
    assert result.returncode == 0, result.stderr
    scores = _scores(tmp_path / "c_scores.parquet")
    assert sorted(zip(scores["TILE"], scores["ROW"])) == [(t, r) for t in "AB" for r in range(32)]
    assert np.isfinite(scores["P_ENSEMBLE"]).all()
    # both workers did work: the log names the provider per worker address
    providers = re.search(r"execution provider\(s\) on the workers: (\{.*\})", result.stderr)
    assert providers and providers.group(1).count("CPUExecutionProvider") == 2


def test_a_killed_worker_loses_nothing(cluster, tmp_path, tiny_models):
    store = tmp_path / "s.zarr"
    make_store(store, tiles=("A",), n_per_tile=16 * 12, chunk_size=16, bad=False)
    out = tmp_path / "c.fits"
    proc = subprocess.Popen([sys.executable, "-m", "lensengine.engine", "run", "--tiles", str(store),
                             "--models", str(tiny_models), "--scheduler", cluster.address, "--out", str(out),
                             "--threshold", "0.2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    parts = tmp_path / "c.fits.parts"
    deadline = time.time() + 300
    while time.time() < deadline and len(list(parts.rglob("part-*.parquet"))) < 2:
        time.sleep(0.05)
    victim = cluster.workers[0]
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait()
    done_at_kill = len(list(parts.rglob("part-*.parquet")))
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr
    assert done_at_kill < 12, "the worker died after the run had finished: nothing was tested"
    scores = _scores(tmp_path / "c_scores.parquet")
    rows = list(scores["ROW"])
    assert sorted(rows) == list(range(16 * 12)) and len(set(rows)) == len(rows)
    assert list(scores["OBJECT_ID"]) == list(range(16 * 12))
    assert np.isfinite(scores["P_ENSEMBLE"]).all()
