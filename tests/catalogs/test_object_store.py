"""Survey stores on object storage (issue 14): an S3-compatible server started by the test (moto).

The run scores a store at ``s3://`` end to end, is killed mid-run and resumed, and gives the same
scores as the same store on local disk; ``store from-fits --out s3://`` writes a store that opens and
validates; a store whose writing was cut off is refused and replaced by the next write; a missing
filesystem package is named.  Credentials reach every process (the CLI, the Dask workers) only
through the standard AWS environment variables, as in production.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from astropy.io import fits

pytest.importorskip("s3fs", reason="s3:// stores need s3fs (pip install s3fs)")
pytest.importorskip("moto.server", reason="the local S3 server is moto's server mode (pip install 'moto[server]')")

REPO = Path(__file__).resolve().parents[2]
NISP = ("Y", "J", "H")


def _models_helpers():
    """tests/reliability/_models.py (tiny ONNX models without torch), loaded by path: tests are not a package."""
    spec = importlib.util.spec_from_file_location("_reliability_models", REPO / "tests/reliability/_models.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory):
    """A moto S3 server on a free loopback port, and the AWS variables that point at it; yields its URL.

    The variables are set for the whole module (before the Dask workers start, which inherit them)
    and point at no real AWS configuration file.
    """
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    nowhere = tmp_path_factory.mktemp("aws")
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_CONFIG_FILE": str(nowhere / "config"),
           "AWS_SHARED_CREDENTIALS_FILE": str(nowhere / "credentials")}
    with pytest.MonkeyPatch.context() as patch:
        for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
            patch.delenv(key, raising=False)
        for key, value in env.items():
            patch.setenv(key, value)
        try:
            yield env["AWS_ENDPOINT_URL"]
        finally:
            server.stop()


@pytest.fixture
def s3_env(s3_server):
    """A fresh bucket on the test server; yields its ``s3://`` URL."""
    import boto3

    bucket = f"lens-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    return f"s3://{bucket}"


@pytest.fixture(scope="module")
def scheduler(s3_server):
    """One small local Dask cluster (a worker process, started with the AWS variables) for the in-process runs."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address="127.0.0.1:0", scheduler_kwargs={"dashboard": False}) as cluster:
        yield cluster.scheduler_address


def _fill(location, *, tiles=("A", "B"), n_per_tile: int = 32, chunk_size: int = 8, seed: int = 0):
    """Write a NISP-only store at a path or URL; object IDs are ``1000 * tile index + row``."""
    from lensengine.catalogs.store import CutoutBatch, SurveyStore

    rng = np.random.default_rng(seed)
    with SurveyStore.build(location, survey="object store test", bands=NISP, chunk_size=chunk_size,
                           truth_columns={"label": "int8"}) as store:
        for t, tile in enumerate(tiles):
            n = n_per_tile
            store.append(tile, CutoutBatch(
                object_id=1000 * t + np.arange(n, dtype=np.int64), ra=rng.uniform(150, 151, n),
                dec=rng.uniform(2, 3, n), vis=None, nisp=rng.gamma(2.0, 40.0, (n, 3, 66, 66)).astype(np.float32),
                flags=np.zeros(n, np.uint32), truth={"label": (np.arange(n) % 2).astype(np.int8)}))
    return location


def _cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "lensengine.engine", *args]


def _sorted_scores(path: Path) -> dict[str, np.ndarray]:
    """The score table (a file or a partitioned dataset) as columns, rows sorted by (tile, row)."""
    table = pq.read_table(path)
    cols = {name: np.asarray(table.column(name).to_pylist()) for name in table.column_names}
    order = np.lexsort((cols["ROW"], cols["TILE"]))
    return {name: values[order] for name, values in cols.items()}


def test_run_on_s3_is_killed_resumed_and_equals_a_local_run(s3_env, scheduler, tmp_path):
    from click.testing import CliRunner

    from lensengine.catalogs._location import Location
    from lensengine.engine.cli import cli

    models = tmp_path / "models"
    _models_helpers().onnx_model(models / "OU_J.onnx", "OU-J", ("J",), 66, scale=0.01)
    local = _fill(tmp_path / "survey.zarr", tiles=("A",))
    url = f"{s3_env}/survey.zarr"
    fs, root = Location(url).fs()
    fs.put(f"{local}/", root, recursive=True)  # uploaded as a user would (aws s3 sync, rclone ...)

    out = tmp_path / "s3run" / "c.fits"
    out.parent.mkdir()
    args = ("-q", "run", "--tiles", url, "--models", str(models), "--out", str(out), "--scheduler", scheduler,
            "--threshold", "0.5", "--batch-size", "1")
    proc = subprocess.Popen(_cmd(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    parts = out.with_name(out.name + ".parts")
    try:
        deadline = time.time() + 120
        while proc.poll() is None and time.time() < deadline and not list(parts.rglob("*.parquet")):
            time.sleep(0.02)
        assert proc.poll() is None, proc.communicate()
        os.killpg(proc.pid, signal.SIGKILL)  # the client killed, not interrupted: it cannot clean up
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
    assert list(parts.rglob("*.parquet")) and not out.exists()  # killed with some tasks done, before the merge

    resumed = CliRunner().invoke(cli, [*args, "--resume", "--json"])
    assert resumed.exit_code == 0, resumed.output
    summary = json.loads(resumed.stdout)
    assert summary["store"] == url and summary["n_cutouts"] == 32
    tasks = summary.get("n_tasks", summary["n_chunks"])
    assert 1 <= summary["n_resumed"] < tasks, summary  # some tasks kept from the killed run, the others done now

    local_out = tmp_path / "localrun" / "c.fits"
    local_out.parent.mkdir()
    plain = CliRunner().invoke(cli, ["-q", "run", "--tiles", str(local), "--models", str(models), "--out",
                                     str(local_out), "--scheduler", scheduler, "--threshold", "0.5",
                                     "--batch-size", "1"])
    assert plain.exit_code == 0, plain.output

    remote = _sorted_scores(out.with_name("c_scores.parquet"))
    here = _sorted_scores(local_out.with_name("c_scores.parquet"))
    # every cutout exactly once, with the object ID the store holds at its row
    assert remote["ROW"].tolist() == list(range(32)) and set(remote["TILE"].tolist()) == {"A"}
    np.testing.assert_array_equal(remote["OBJECT_ID"], remote["ROW"])
    score_columns = [c for c in here if c.startswith("P_")]
    assert score_columns and set(score_columns) <= set(remote)
    for name in ["OBJECT_ID", "RA", "DEC", "FLAGS", *score_columns]:
        np.testing.assert_array_equal(remote[name], here[name], err_msg=name)
    assert np.isfinite(remote[score_columns[0]].astype(float)).all()


def _wcs_header(n: int, scale: float) -> fits.Header:
    return fits.Header({"CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CRVAL1": 150.1, "CRVAL2": 2.2,
                        "CRPIX1": (n + 1) / 2, "CRPIX2": (n + 1) / 2, "CDELT1": -scale / 3600, "CDELT2": scale / 3600,
                        "CUNIT1": "deg", "CUNIT2": "deg"})


def test_from_fits_writes_a_store_on_s3_that_opens_and_validates(s3_env, tmp_path, cli_root):
    from click.testing import CliRunner

    rng = np.random.default_rng(3)
    inputs = tmp_path / "cutouts"
    inputs.mkdir()
    for i in range(3):
        hdus = [fits.PrimaryHDU(header=fits.Header({"OBJID": 70 + i}))]
        for name, size, scale in (("VIS_FLUX", 200, 0.1), ("NIR_Y_FLUX", 66, 0.3), ("NIR_J_FLUX", 66, 0.3),
                                  ("NIR_H_FLUX", 66, 0.3)):
            data = rng.gamma(2.0, 5.0, (size, size)).astype(np.float32)
            hdus.append(fits.ImageHDU(data, header=_wcs_header(size, scale), name=name))
        fits.HDUList(hdus).writeto(inputs / f"obj{i}.fits")
    url = f"{s3_env}/fits.zarr"
    result = CliRunner().invoke(cli_root, ["store", "from-fits", str(inputs), "--out", url, "--chunk-size", "32"])
    assert result.exit_code == 0, result.output
    assert f"wrote 3 cutouts (cutouts layout) to {url}" in result.output
    valid = CliRunner().invoke(cli_root, ["store", "validate", url, "--json"])
    assert valid.exit_code == 0, valid.output
    assert json.loads(valid.output) == []
    info = CliRunner().invoke(cli_root, ["store", "info", "--tiles", url, "--json"])
    assert info.exit_code == 0, info.output
    assert json.loads(info.output)["total_cutouts"] == 3 and json.loads(info.output)["path"] == url
    from lensengine.catalogs.store import SurveyStore

    assert SurveyStore.open(url).read_chunk("fits", 0).object_id.tolist() == [70, 71, 72]
    # a second write without --overwrite is refused
    again = CliRunner().invoke(cli_root, ["store", "from-fits", str(inputs), "--out", url])
    assert again.exit_code == 2 and "--overwrite" in again.output


def test_a_store_cut_off_on_s3_is_refused_and_replaced_by_the_next_write(s3_env):
    from lensengine.catalogs.store import IncompleteStoreError, SurveyStore
    from lensengine.catalogs.validate import validate_store

    url = f"{s3_env}/cut.zarr"
    # a writer killed part-way: the store was created with the mark and never finished
    SurveyStore.create(url, survey="cut off", bands=NISP, chunk_size=8, incomplete=True)
    with pytest.raises(IncompleteStoreError, match="unfinished store"):
        SurveyStore.open(url)
    problems = validate_store(url)
    assert [p.kind for p in problems] == ["incomplete-store"]
    # a writer that fails (not killed) removes what it wrote
    with pytest.raises(RuntimeError, match="disk on fire"):
        with SurveyStore.build(f"{s3_env}/failed.zarr", survey="x", bands=NISP, chunk_size=8):
            raise RuntimeError("disk on fire")
    from lensengine.catalogs._location import Location

    assert not Location(f"{s3_env}/failed.zarr").exists()
    # the next write replaces the cut-off store without --overwrite, and its result opens
    _fill(url, tiles=("Z",), n_per_tile=8)
    reopened = SurveyStore.open(url)
    assert reopened.tiles == ["Z"] and reopened.total_cutouts() == 8
    assert validate_store(url) == []


def test_a_missing_filesystem_package_is_named(monkeypatch):
    from lensengine.catalogs.store import SurveyStore

    for name in [m for m in sys.modules if m == "s3fs" or m.startswith("s3fs.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "s3fs", None)  # import s3fs now raises ImportError
    registry = importlib.import_module("fsspec.registry")  # the module; fsspec.registry is a mapping
    monkeypatch.delitem(registry._registry, "s3", raising=False)  # forget the class imported earlier
    with pytest.raises(ValueError, match=r"pip install s3fs"):
        SurveyStore.open("s3://some-bucket/survey.zarr")
