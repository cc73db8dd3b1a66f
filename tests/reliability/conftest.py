"""Shared fixtures of the fault-matrix tests: tiny stores, a tiny model, one small Dask cluster, the CLI.

Kept small and generic: a store is a few 16-cutout chunks of NISP-only cutouts (no 200-px VIS, so
writing and reading cost little), the model a tiny ONNX graph (no torch), and in-process runs share
one local Dask cluster through ``--scheduler`` instead of starting one each.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ._models import onnx_model

NISP = ("Y", "J", "H")


def tiny_store(path: Path, *, tiles=("A", "B"), n_per_tile: int = 32, chunk_size: int = 16, seed: int = 0,
               id_offset: int = 0) -> Path:
    """A NISP-only store; object IDs are ``id_offset + 1000 * tile index + row`` (so every row is identifiable)."""
    from lensengine.catalogs.store import CutoutBatch, SurveyStore

    rng = np.random.default_rng(seed)
    store = SurveyStore.create(path, survey="reliability test", bands=NISP, chunk_size=chunk_size,
                               truth_columns={"label": "int8"})
    for t, tile in enumerate(tiles):
        n = n_per_tile
        store.append(tile, CutoutBatch(
            object_id=id_offset + 1000 * t + np.arange(n, dtype=np.int64), ra=rng.uniform(150, 151, n),
            dec=rng.uniform(2, 3, n), vis=None, nisp=rng.gamma(2.0, 40.0, (n, 3, 66, 66)).astype(np.float32),
            flags=np.zeros(n, np.uint32), truth={"label": (np.arange(n) % 2).astype(np.int8)}))
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """One tiny ONNX model named OU-J (J band, 66 px): P = 0.01 * mean(x), about 0.8 on these stores."""
    directory = tmp_path_factory.mktemp("tiny-model")
    onnx_model(directory / "OU_J.onnx", "OU-J", ("J",), 66, scale=0.01)
    return directory


@pytest.fixture(scope="session")
def scheduler():
    """Address of one small local Dask cluster (one worker process) shared by the in-process runs."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address="127.0.0.1:0", scheduler_kwargs={"dashboard": False}) as cluster:
        yield cluster.scheduler_address


@pytest.fixture
def cli_run(scheduler, tiny_model_dir):
    """Run ``lensengine run`` in this process on the shared cluster; returns the click Result."""
    from click.testing import CliRunner

    from lensengine.engine.cli import cli

    def run(store: Path, out: Path, *extra: str, scheduler_address: str | None = scheduler):
        args = ["-q", "run", "--tiles", str(store), "--models", str(tiny_model_dir), "--out", str(out)]
        if scheduler_address:
            args += ["--scheduler", scheduler_address]
        return CliRunner().invoke(cli, [*args, *extra])

    return run


def lensengine_cmd(*args: str) -> list[str]:
    """The real command line (a fresh process: signals, logging and the local cluster as a user sees them)."""
    return [sys.executable, "-m", "lensengine.engine", *args]


def popen(args: list[str], **kw) -> subprocess.Popen:
    """Start a command in its own process group (a test can signal it, and its workers, as a terminal would)."""
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, **kw)
