"""Issue 12's fault matrix, the run-integrity rows: #2-#9, #14-#22.

One test per fault, named after it.  Each asserts what was false on b9282e6
(the docstring says what happened there) and is true now.  Runs go through the
real CLI: in this process on one shared small Dask cluster where that does not
weaken the test, in a fresh process where signals, logging or the local
cluster itself are the subject.
"""

from __future__ import annotations

import ast
import errno
import hashlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from astropy.io import fits

from .conftest import lensengine_cmd, popen, tiny_store


def _wait_while_running(proc, ready, timeout: float = 120.0) -> None:
    """Poll until ``ready()`` holds, the run process ends, or ``timeout`` seconds pass."""
    deadline = time.time() + timeout
    while not ready() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def _scores(path: Path) -> dict[str, np.ndarray]:
    table = pq.read_table(path)
    return {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names}


def _assert_every_row_once(scores: dict, tiles=("A", "B"), n_per_tile: int = 32, id_offset: int = 0) -> None:
    """Each (tile, row) exactly once, carrying the object ID the store holds there."""
    keys = list(zip(scores["TILE"].tolist(), scores["ROW"].tolist()))
    assert len(keys) == len(set(keys)) == len(tiles) * n_per_tile
    for tile, row, oid in zip(scores["TILE"], scores["ROW"], scores["OBJECT_ID"]):
        assert oid == id_offset + 1000 * tiles.index(tile) + row, (tile, row, oid)


def _parts_after_failed_merge(cli_run, store: Path, out: Path, monkeypatch) -> Path:
    """Score every chunk but fail the merge: the finished parts stay, as after a crash."""
    import lensengine.engine.run as run

    def boom(*args, **kwargs):
        raise RuntimeError("simulated crash before the merge")

    with monkeypatch.context() as m:
        m.setattr(run, "_merge", boom)
        result = cli_run(store, out)
    assert result.exit_code == 1, result.output
    parts = out.with_name(out.name + ".parts")
    assert len(list(parts.rglob("part-*.parquet"))) == 4
    return parts


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


# --- #2 ---------------------------------------------------------------------------------------

def test_fault_02_empty_catalogue_is_valid_fits(tmp_path, cli_run):
    """b9282e6: no candidates -> exit 1, ``KeyError: 'pop from an empty set'`` in the FITS write, no catalogue."""
    from lensengine.catalogs.catalog import read_catalog

    store = tiny_store(tmp_path / "s.zarr")
    out = tmp_path / "none.fits"
    result = cli_run(store, out, "--threshold", "1")
    assert result.exit_code == 0, result.output
    cat = read_catalog(out)
    assert len(cat) == 0
    for column in ("NAME", "RANK", "OBJECT_ID", "TILE", "CHUNK", "ROW", "RA", "DEC", "P_OU_J", "P_ENSEMBLE",
                   "FLAGS", "FLAG_TEXT", "ERROR", "TRUTH_LABEL", "KNOWN_LENS"):
        assert column in cat.colnames, column
    assert str(cat["RA"].unit) == "deg"
    assert cat.meta["NCAND"][0] == 0 and cat.meta["NCUTOUT"][0] == 64 and cat.meta["MODEL1"][0] == "OU-J"
    assert len(cat.meta["SHA1"][0]) == 64

    # every chunk unreadable: still a valid, empty catalogue that counts them
    from lensengine.catalogs._zarr_layout import chunk_file

    for tile in ("A", "B"):
        for index in (0, 1):
            chunk_file(store, tile, "nisp", index, 4).write_bytes(b"garbage")
    out2 = tmp_path / "unreadable.fits"
    result = cli_run(store, out2, "--threshold", "0")
    assert result.exit_code == 0, result.output
    cat = read_catalog(out2)
    assert len(cat) == 0 and cat.meta["NUNREAD"][0] == 64


# --- #3 ---------------------------------------------------------------------------------------

def test_fault_03_second_run_on_the_same_out_is_refused(tmp_path, cli_run, tiny_model_dir):
    """b9282e6: a second run on the same --out deleted the first's parts; with another store the first
    finished with exit 0 holding rows of both stores."""
    first = tiny_store(tmp_path / "first.zarr")
    other = tiny_store(tmp_path / "other.zarr", tiles=("X", "Y"), seed=3, id_offset=50_000)
    out = tmp_path / "c.fits"
    lock = tmp_path / "c.fits.lock"
    proc = popen(lensengine_cmd("-q", "run", "--tiles", str(first), "--models", str(tiny_model_dir), "--out",
                                str(out), "--workers", "1", "--batch-size", "1"))
    try:
        _wait_while_running(proc, lock.exists)
        assert lock.exists(), proc.communicate()
        holder = json.loads(lock.read_text())
        second = cli_run(other, out)
        assert second.exit_code == 2, second.output
        assert "another run holds" in second.output and str(holder["pid"]) in second.output
        _, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, stderr
    _assert_every_row_once(_scores(tmp_path / "c_scores.parquet"))
    assert not lock.exists()

    # a lock left by a dead process on this host is stale: taken over with a warning
    lock.write_text(json.dumps({"pid": _dead_pid(), "host": socket.gethostname(), "since": "earlier"}))
    again = cli_run(other, out, "--restart")
    assert again.exit_code == 0, again.output
    _assert_every_row_once(_scores(tmp_path / "c_scores.parquet"), tiles=("X", "Y"), id_offset=50_000)
    assert not lock.exists()


# --- #4 ---------------------------------------------------------------------------------------

def test_fault_04_resume_refuses_a_store_whose_content_changed(tmp_path, cli_run, monkeypatch):
    """b9282e6: --resume after the store was rebuilt at the same path mixed in the old rows (exit 0)."""
    store = tiny_store(tmp_path / "s.zarr")
    out = tmp_path / "c.fits"
    parts = _parts_after_failed_merge(cli_run, store, out, monkeypatch)
    tiny_store(tmp_path / "s2.zarr", seed=9)  # same shape, other pixels and positions
    os.rename(store, tmp_path / "old.zarr")
    os.rename(tmp_path / "s2.zarr", store)
    result = cli_run(store, out, "--resume")
    assert result.exit_code == 2, result.output
    assert "cannot resume" in result.output and "content changed" in result.output
    assert not out.exists() and len(list(parts.rglob("part-*.parquet"))) == 4  # nothing deleted by the refusal


# --- #5 ---------------------------------------------------------------------------------------

def test_fault_05_a_part_copied_onto_another_chunk_is_redone(tmp_path, cli_run, monkeypatch):
    """b9282e6: a part copied onto another chunk's name gave 16 rows twice and 16 lost, exit 0."""
    store = tiny_store(tmp_path / "s.zarr")
    out = tmp_path / "c.fits"
    parts = _parts_after_failed_merge(cli_run, store, out, monkeypatch)
    tile_a = parts / "scores" / "tile=A"
    (tile_a / "part-000000000016.parquet").write_bytes((tile_a / "part-000000000000.parquet").read_bytes())
    result = cli_run(store, out, "--resume")
    assert result.exit_code == 0, result.output
    assert "redid 1 task" in result.output
    _assert_every_row_once(_scores(tmp_path / "c_scores.parquet"))


# --- #6 ---------------------------------------------------------------------------------------

def test_fault_06_a_garbage_part_is_redone(tmp_path, cli_run, monkeypatch):
    """b9282e6: a garbage part made every later --resume fail; the part was never redone."""
    store = tiny_store(tmp_path / "s.zarr")
    out = tmp_path / "c.fits"
    parts = _parts_after_failed_merge(cli_run, store, out, monkeypatch)
    (parts / "scores" / "tile=B" / "part-000000000000.parquet").write_bytes(b"PAR1 this is not a parquet file")
    result = cli_run(store, out, "--resume")
    assert result.exit_code == 0, result.output
    assert "redid 1 task" in result.output
    _assert_every_row_once(_scores(tmp_path / "c_scores.parquet"))
    assert not parts.exists()


# --- #7 ---------------------------------------------------------------------------------------

def test_fault_07_rerun_without_resume_refuses_and_foreign_folders_survive(tmp_path, cli_run, monkeypatch):
    """b9282e6: a rerun without --resume silently deleted the finished parts, and ``<out>.parts`` was
    deleted recursively even when the run had not made it (a user's file inside was lost)."""
    store = tiny_store(tmp_path / "s.zarr")
    out = tmp_path / "c.fits"
    parts = _parts_after_failed_merge(cli_run, store, out, monkeypatch)
    result = cli_run(store, out)
    assert result.exit_code == 2, result.output
    assert "--resume" in result.output and "--restart" in result.output
    assert len(list(parts.rglob("part-*.parquet"))) == 4
    result = cli_run(store, out, "--restart")
    assert result.exit_code == 0, result.output
    assert not parts.exists()

    mine = tmp_path / "mine.fits"
    folder = mine.with_name(mine.name + ".parts")
    folder.mkdir()
    (folder / "notes.txt").write_text("my notes")
    for extra in ((), ("--restart",)):
        result = cli_run(store, mine, *extra)
        assert result.exit_code == 2, result.output
        assert "not made by lensengine" in result.output
    assert (folder / "notes.txt").read_text() == "my notes"


# --- #8, #9 -----------------------------------------------------------------------------------

def test_fault_08_committed_length_beyond_the_data_is_refused_before_work(tmp_path, cli_run):
    """b9282e6: exit 2 only after all scoring, with ``Column 3 named TILE expected length 0 but got length 32``."""
    store = tiny_store(tmp_path / "s.zarr")
    meta = store / "tiles" / "B" / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["attributes"]["n_cutouts"] = 64  # the arrays hold 32
    meta.write_text(json.dumps(doc))
    out = tmp_path / "c.fits"
    result = cli_run(store, out)
    assert result.exit_code == 2, result.output
    assert "tile 'B'" in result.output and "array 'nisp'" in result.output and "committed length 64" in result.output
    assert not out.with_name("c.fits.parts").exists()  # refused before any work


def test_fault_09_array_dtype_against_the_data_is_refused_before_work(tmp_path, cli_run):
    """b9282e6: metadata saying float64 over float32 data made every chunk UNREADABLE (``cannot reshape``)."""
    store = tiny_store(tmp_path / "s.zarr")
    meta = store / "tiles" / "A" / "nisp" / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["data_type"] = "float64"
    meta.write_text(json.dumps(doc))
    out = tmp_path / "c.fits"
    result = cli_run(store, out)
    assert result.exit_code == 2, result.output
    assert "tile 'A'" in result.output and "array 'nisp' has dtype float64, expected float32" in result.output
    assert not out.with_name("c.fits.parts").exists()


# --- #14 --------------------------------------------------------------------------------------

def test_fault_14_non_ascii_tile_and_control_characters_in_arguments(tmp_path, cli_run):
    """b9282e6: exit 2 at the FITS write, after all work (FITS headers and tables hold printable ASCII only)."""
    store = tiny_store(tmp_path / "s\tü.zarr")
    os.rename(store / "tiles" / "B", store / "tiles" / "Bä")
    out = tmp_path / "c.fits"
    result = cli_run(store, out, "--threshold", "0")
    assert result.exit_code == 0, result.output
    from lensengine.catalogs.catalog import fits_text, read_catalog

    cat = read_catalog(out)
    assert sorted(set(cat["TILE"])) == ["A", "B\\xe4"]
    assert cat.meta["STORE"][0] == fits_text(str(store.resolve())) and "\\t" in cat.meta["STORE"][0]
    scores = _scores(tmp_path / "c_scores.parquet")
    assert sorted(set(scores["TILE"])) == ["A", "Bä"]  # the score table keeps the real name
    meta = pq.read_schema(tmp_path / "c_scores.parquet" / "_common_metadata").metadata
    assert meta[b"STORE"].decode() == str(store.resolve())


# --- #15 --------------------------------------------------------------------------------------

def _folder_bytes(folder: Path) -> dict[str, bytes]:
    """Every file under a folder (a score table), by relative path: what "untouched" compares."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_fault_15_outputs_are_committed_as_a_pair(tmp_path, cli_run, monkeypatch, caplog):
    """b9282e6: a failure (disk full, SIGKILL) during the merge left a new score table beside the old
    catalogue, and hidden temporaries behind."""
    import lensengine.catalogs.catalog as catalog

    store = tiny_store(tmp_path / "s.zarr")
    out, scores = tmp_path / "c.fits", tmp_path / "c_scores.parquet"
    assert cli_run(store, out, "--threshold", "0").exit_code == 0
    before = (out.read_bytes(), _folder_bytes(scores))

    def disk_full(table, path):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(catalog, "write_table", disk_full)
        result = cli_run(store, out, "--threshold", "0.9", "--restart")
    assert result.exit_code == 1, result.output
    assert "No space left on device" in result.output
    assert (out.read_bytes(), _folder_bytes(scores)) == before  # the old pair, untouched
    assert not [n for n in _hidden(tmp_path) if ".tmp-" in n]

    # a process killed while writing leaves temporaries: the next start removes them
    dead = _dead_pid()
    for name in (f".c.fits.tmp-{dead}", f"..c.fits.tmp-{dead}.tmp-{dead}", f".c_scores.parquet.tmp-{dead}"):
        (tmp_path / name).write_bytes(b"left by a killed run")
    # ... and a kill between the two renames is completed (rolled forward) by the next start
    real_replace = os.replace

    def killed_before_the_catalogue(src, dst):
        if Path(dst) == out:
            raise OSError(errno.EIO, "simulated kill between the two renames")
        return real_replace(src, dst)

    with monkeypatch.context() as m:
        m.setattr(os, "replace", killed_before_the_catalogue)
        result = cli_run(store, out, "--threshold", "0.9", "--resume")
    assert result.exit_code == 1, result.output
    header_before = fits.getheader(out, 1)["THRESH"]
    assert header_before == 0.0 and (tmp_path / "c.fits.parts" / "commit.json").is_file()
    with caplog.at_level("WARNING"):
        result = cli_run(store, out, "--threshold", "0.9")
    assert result.exit_code == 0, result.output
    assert "completed the outputs of a run that was interrupted" in caplog.text
    assert fits.getheader(out, 1)["THRESH"] == 0.9
    assert pq.read_schema(scores / "_common_metadata").metadata[b"THRESH"] == b"0.9"
    assert _hidden(tmp_path) == []


# --- #16 --------------------------------------------------------------------------------------

def test_fault_16_ctrl_c_exits_130_cleanly_with_a_resume_hint(tmp_path, cli_run, tiny_model_dir):
    """b9282e6: Ctrl-C gave exit 1, leaked-semaphore warnings and no hint to --resume."""
    store = tiny_store(tmp_path / "s.zarr", n_per_tile=64)
    out = tmp_path / "c.fits"
    parts = tmp_path / "c.fits.parts"
    proc = popen(lensengine_cmd("-q", "run", "--tiles", str(store), "--models", str(tiny_model_dir), "--out",
                                str(out), "--workers", "1", "--batch-size", "1"))
    try:
        _wait_while_running(proc, lambda: bool(list(parts.rglob("part-*.parquet"))))
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole process group
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, stderr
    assert "interrupted — resume with --resume" in stderr
    assert "leaked" not in stderr and "Traceback" not in stderr, stderr
    done = len(list(parts.rglob("part-*.parquet")))
    assert 1 <= done < 8 and not out.exists()
    assert not list(parts.glob("scratch-*"))  # the local cluster's scratch space went with it
    result = cli_run(store, out, "--resume", "--batch-size", "1")
    assert result.exit_code == 0, result.output
    assert f"({done} resumed)" in result.output
    _assert_every_row_once(_scores(tmp_path / "c_scores.parquet"), n_per_tile=64)


def test_fault_16_after_ctrl_c_dask_and_tornado_log_nothing_until_the_cluster_is_down():
    """CI, stop 32: a Ctrl-C that lands before ``distributed.utils.sync`` has its future made Tornado
    print a NameError traceback (a Dask bug), and the scheduler logged the cancelled keys as errors."""
    import io
    import logging

    from lensengine.engine.run import _quiet_dask_after_interrupt

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    names = ("tornado.application", "distributed.scheduler", "distributed.client")
    loggers = [logging.getLogger(n) for n in names]
    for logger in loggers:
        logger.addHandler(handler)
    own = logging.getLogger("lensengine.test")
    own.addHandler(handler)
    outside = signal.getsignal(signal.SIGINT)
    try:
        with _quiet_dask_after_interrupt():
            handler_in_run = signal.getsignal(signal.SIGINT)
            assert handler_in_run is not outside
            logging.getLogger("tornado.application").error("before Ctrl-C")
            with pytest.raises(KeyboardInterrupt):
                handler_in_run(signal.SIGINT, None)
            for logger in loggers:
                logger.error("after Ctrl-C, from %s", logger.name)
            own.error("ours still speaks")
        assert signal.getsignal(signal.SIGINT) is outside
        logging.getLogger("distributed.scheduler").error("after the run")
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
        own.removeHandler(handler)
    assert stream.getvalue().splitlines() == ["before Ctrl-C", "ours still speaks", "after the run"]


# --- #17 --------------------------------------------------------------------------------------

def test_fault_17_a_failure_after_work_started_exits_1_naming_it(tmp_path, cli_run, monkeypatch):
    """b9282e6: any ValueError after the work (e.g. in the merge) exited 2, the code for bad usage."""
    import lensengine.catalogs.catalog as catalog

    store = tiny_store(tmp_path / "s.zarr")

    def refuse(*args, **kwargs):
        raise ValueError("the table refused a batch")

    monkeypatch.setattr(catalog, "candidate_table", refuse)  # the merge builds the catalogue with it
    result = cli_run(store, tmp_path / "c.fits")
    assert result.exit_code == 1, result.output
    assert "merging the parts" in result.output and "the table refused a batch" in result.output


# --- #18 --------------------------------------------------------------------------------------

def test_fault_18_local_dashboard_on_loopback_and_optional(tmp_path, tiny_model_dir):
    """b9282e6: the local cluster's dashboard listened on 0.0.0.0, always on."""
    from lensengine.engine.run import RunOptions, _client, _close

    opts = RunOptions(store=tmp_path, out=tmp_path / "c.fits", scores=tmp_path / "s.parquet", models=[],
                      workers=1, dashboard=True)
    client, cluster = _client(opts, tmp_path, None)
    try:
        server = cluster.scheduler.http_server
        hosts = {s.getsockname()[0] for s in server._sockets.values()}
        assert hosts == {"127.0.0.1"}
        assert client.dashboard_link.startswith("http://127.0.0.1:")
        assert {w["host"] for w in client.scheduler_info()["workers"].values()} == {"127.0.0.1"}
    finally:
        _close(client, cluster)

    opts.dashboard = False
    client, cluster = _client(opts, tmp_path, None)
    try:
        server = cluster.scheduler.http_server
        (host, port), = {s.getsockname()[:2] for s in server._sockets.values()}
        assert host == "127.0.0.1"
        for page in ("status", "info/main/workers.html", "json/counts.json"):
            with pytest.raises(urllib.error.HTTPError, match="404"):
                urllib.request.urlopen(f"http://127.0.0.1:{port}/{page}", timeout=10)
    finally:
        _close(client, cluster)


# --- #19 --------------------------------------------------------------------------------------

def test_fault_19_tls_to_a_remote_scheduler(tmp_path, cli_run):
    """b9282e6: --scheduler spoke plaintext only; there was no TLS option."""
    pytest.importorskip("cryptography")
    from distributed import LocalCluster
    from distributed.security import Security

    sec = Security.temporary()
    pem = {}
    for key, name in (("tls_ca_file", "ca.pem"), ("tls_client_cert", "cert.pem"), ("tls_client_key", "key.pem")):
        pem[key] = tmp_path / name
        pem[key].write_text(getattr(sec, key))
    store = tiny_store(tmp_path / "s.zarr", tiles=("A",))
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, protocol="tls://", host="127.0.0.1",
                      security=sec, dashboard_address="127.0.0.1:0",
                      scheduler_kwargs={"dashboard": False}) as cluster:
        address = cluster.scheduler_address
        assert address.startswith("tls://")
        result = cli_run(store, tmp_path / "plain.fits", scheduler_address=address)
        assert result.exit_code == 2 and "--tls-ca-file" in result.output  # refused before work, not a hang
        result = cli_run(store, tmp_path / "c.fits", "--tls-ca-file", str(pem["tls_ca_file"]), "--tls-cert",
                         str(pem["tls_client_cert"]), "--tls-key", str(pem["tls_client_key"]),
                         scheduler_address=address)
        assert result.exit_code == 0, result.output
        security_yaml = tmp_path / "security.yaml"
        security_yaml.write_text("".join(f"{k}: {v}\n" for k, v in pem.items()))
        result = cli_run(store, tmp_path / "y.fits", "--security", str(security_yaml), scheduler_address=address)
        assert result.exit_code == 0, result.output
    assert len(_scores(tmp_path / "c_scores.parquet")["ROW"]) == 32


# --- #20 --------------------------------------------------------------------------------------

def test_fault_20_score_table_has_the_provenance_and_every_file_is_hashed(tmp_path, cli_run, tiny_model_dir):
    """b9282e6: the Parquet score table had no provenance; the .pt weights of --precision bf16 and the
    OU-T-SNE file were hashed nowhere."""
    store = tiny_store(tmp_path / "s.zarr")
    out = tmp_path / "c.fits"
    assert cli_run(store, out, "--threshold", "0").exit_code == 0
    header = fits.getheader(out, 1)
    common = tmp_path / "c_scores.parquet" / "_common_metadata"
    meta = {k.decode(): v.decode() for k, v in pq.read_schema(common).metadata.items()}
    for key in ("SOFTWARE", "STORE", "CMDLINE", "MODEL1", "SHA1", "NMODELS", "THRESH", "ENSEMBLE", "PRECISN",
                "RUNID", "NCUTOUT", "NSCORED", "NFLAGGED", "NUNREAD", "NCAND", "DATE-RUN"):
        assert key in meta, key
        assert str(header[key]) == meta[key], key
    onnx_sha = hashlib.sha256((tiny_model_dir / "OU_J.onnx").read_bytes()).hexdigest()
    assert meta["SHA1"] == onnx_sha

    # the files a bf16 run and an OU-T-SNE ensemble use are fingerprinted and recorded
    from types import SimpleNamespace

    from lensengine.catalogs.store import SurveyStore
    from lensengine.engine.registry import resolve_models
    from lensengine.engine.run import RunOptions, _fingerprint, plan_run

    models = tmp_path / "models"
    models.mkdir()
    for name in ("OU_J.onnx",):
        (models / name).write_bytes((tiny_model_dir / name).read_bytes())
    (models / "OU_J.pt").write_bytes(b"torch weights stand-in")
    ensemble_file = tmp_path / "ou_tsne.npz"
    ensemble_file.write_bytes(b"ensemble stand-in")
    opts = RunOptions(store=store, out=out, scores=tmp_path / "x.parquet", models=resolve_models(models),
                      precision="bf16")
    plan = plan_run(opts)
    plan.store, plan.ensemble = SurveyStore.open(store), SimpleNamespace(name="OU-T-SNE", path=ensemble_file)
    _fingerprint(opts, plan)
    run_id = plan.run_id
    sha = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
    assert plan.provenance_hashes["PTSHA1"][0] == sha(models / "OU_J.pt")
    assert plan.provenance_hashes["ENSSHA"][0] == sha(ensemble_file)
    assert plan.manifest["models"]["OU-J"] == {"onnx": sha(models / "OU_J.onnx"), "pt": sha(models / "OU_J.pt")}
    (models / "OU_J.pt").write_bytes(b"other weights")
    _fingerprint(opts, plan)
    assert plan.run_id != run_id  # changed weights: a resume is refused


# --- #21 --------------------------------------------------------------------------------------

def test_fault_21_scores_equal_to_out_is_refused(tmp_path, cli_run):
    """b9282e6: the score table was silently overwritten by the catalogue."""
    store = tiny_store(tmp_path / "s.zarr", tiles=("A",))
    out = tmp_path / "c.fits"
    out.write_bytes(b"an earlier file")
    result = cli_run(store, out, "--scores", str(tmp_path / "." / "c.fits"))
    assert result.exit_code == 2, result.output
    assert "--scores and --out are the same file" in result.output
    assert out.read_bytes() == b"an earlier file"


# --- #22 --------------------------------------------------------------------------------------

def test_fault_22_quiet_is_quiet_and_a_clean_shutdown_prints_nothing(tmp_path, tiny_model_dir):
    """b9282e6: ``-q`` left ~25 ``INFO distributed...`` lines; a clean --workers 2 run could print a
    heartbeat ERROR traceback."""
    store = tiny_store(tmp_path / "s.zarr")
    proc = popen(lensengine_cmd("-q", "run", "--tiles", str(store), "--models", str(tiny_model_dir), "--out",
                                str(tmp_path / "c.fits"), "--workers", "2", "--threshold", "0"))
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    assert stderr.strip() == "", stderr
    assert "64 candidates" in stdout


# --- the command-line modules ----------------------------------------------------------------

def test_cli_modules_import_no_circle():
    """b9282e6: engine/cli.py, commands.py and run_cli.py imported each other in a circle."""
    for name in ("commands.py", "run_cli.py"):
        tree = ast.parse((REPO / "engine" / name).read_text())
        imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        imported |= {a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names}
        assert "lensengine.engine.cli" not in imported, name
