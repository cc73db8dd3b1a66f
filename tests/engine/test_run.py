"""`lensengine run`: exactly-once scoring, bad input, resume, catalogue, contract errors (local cluster)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from click.testing import CliRunner

from lensengine.catalogs.flags import Flag
from lensengine.engine.cli import cli

from .conftest import make_store  # noqa: F401  (importlib mode: package-relative import)

pytestmark = pytest.mark.slow


def _run_cli(args):
    result = CliRunner().invoke(cli, ["-q", "run", *args], catch_exceptions=False)
    return result


def _read_scores(path: Path) -> Table:
    import pyarrow.parquet as pq

    return Table(pq.read_table(path).to_pydict())


def test_every_cutout_once_bad_input_flagged(store_with_bad_cutouts, tiny_models, tmp_path):
    out = tmp_path / "cands.fits"
    result = _run_cli(["--tiles", str(store_with_bad_cutouts), "--models", str(tiny_models), "--out", str(out),
                       "--threshold", "0.0", "--workers", "1"])
    assert result.exit_code == 0, result.output
    scores = _read_scores(tmp_path / "cands_scores.parquet")
    keys = list(zip(scores["TILE"], scores["ROW"]))
    assert len(keys) == len(set(keys)) == 96
    assert sorted(keys) == sorted([(t, r) for t in ("T0", "T1") for r in range(48)])

    t0 = {int(r): row for r, row in zip(scores["ROW"], scores) if row["TILE"] == "T0"}
    # NaN pixel in VIS: OU-VIS withheld, the NISP-only models still score it
    assert t0[1]["FLAGS"] & Flag.NONFINITE and np.isnan(t0[1]["P_OU_VIS"]) and np.isfinite(t0[1]["P_OU_J"])
    # constant J band: OU-J and OU-JYH withheld
    assert t0[2]["FLAGS"] & Flag.CONSTANT_BAND and np.isnan(t0[2]["P_OU_J"]) and np.isnan(t0[2]["P_OU_JYH"])
    assert np.isfinite(t0[2]["P_OU_VIS"]) and t0[2]["FLAGS"] & Flag.PARTIAL_SCORES
    # missing H band: reported as missing, not as bad pixels
    assert t0[3]["FLAGS"] & Flag.MISSING_BAND and not t0[3]["FLAGS"] & Flag.NONFINITE
    assert np.isnan(t0[3]["P_OU_JYH"]) and np.isfinite(t0[3]["P_OU_J"])
    assert t0[0]["FLAG_TEXT"] == "OK" and np.isfinite([t0[0][c] for c in ("P_OU_J", "P_OU_JYH", "P_OU_VIS")]).all()
    # the corrupt chunk (T1 rows 16..31) is flagged unreadable, its IDs kept, the rest of T1 scored
    t1 = scores[scores["TILE"] == "T1"]
    unreadable = (t1["FLAGS"] & Flag.UNREADABLE) != 0
    assert sorted(t1["ROW"][unreadable]) == list(range(16, 32))
    assert sorted(t1["OBJECT_ID"][unreadable]) == list(range(1016, 1032))
    assert np.isnan(t1["P_ENSEMBLE"][unreadable]).all() and np.isfinite(t1["P_ENSEMBLE"][~unreadable]).all()
    assert all("chunk 1" in e for e in t1["ERROR"][unreadable])
    # truth columns travel into the score table
    assert list(t0[5]["TRUTH_LABEL"] for _ in [0]) == [1]

    # the catalogue: every scored cutout is a candidate at threshold 0, ranked, with units and provenance
    with fits.open(out) as hdul:
        header = hdul[1].header
        assert header["NCUTOUT"] == 96 and header["NUNREAD"] == 16
        assert header["NSCORED"] == 96 - 16
        assert header["MODEL1"] == "OU-J" and len(header["SHA1"]) == 64
        assert header["THRESH"] == 0.0 and "lensengine" in header["SOFTWARE"]
    from astropy.table import QTable

    cat = QTable.read(out)
    assert len(cat) == 80 and str(cat["RA"].unit) == "deg"
    assert list(cat["RANK"]) == list(range(1, 81))
    assert np.all(np.diff(np.asarray(cat["P_ENSEMBLE"])) <= 0)
    assert "ensemble" in result.output or "candidates" in result.output


def test_contract_mismatch_exits_2_before_work(tmp_path, tiny_models):
    path = tmp_path / "vis_only.zarr"
    make_store(path, tiles=("T0",), n_per_tile=16, bands=("VIS",), bad=False)
    out = tmp_path / "c.fits"
    result = CliRunner().invoke(cli, ["run", "--tiles", str(path), "--models", str(tiny_models), "--out", str(out)])
    assert result.exit_code == 2
    assert "OU-J" in result.output and "provides ['VIS']" in result.output and "missing ['J']" in result.output
    assert not out.exists() and not (tmp_path / "c.fits.parts").exists()


def test_not_a_store_exits_2(tmp_path, tiny_models):
    result = CliRunner().invoke(cli, ["run", "--tiles", str(tmp_path / "nope.zarr"), "--models", str(tiny_models)])
    assert result.exit_code == 2 and "not a lensengine survey store" in result.output


def _cli_cmd(*args):
    return [sys.executable, "-m", "lensengine.engine", "-q", "run", *args]


def test_interrupted_run_resumes_to_the_same_result(tmp_path, tiny_models):
    store = tmp_path / "s.zarr"
    make_store(store, tiles=("A", "B"), n_per_tile=64, chunk_size=16, bad=False)
    common = ["--tiles", str(store), "--models", str(tiny_models), "--threshold", "0.3", "--workers", "1"]

    full = tmp_path / "full.fits"
    subprocess.run(_cli_cmd(*common, "--out", str(full)), check=True, timeout=600)

    part = tmp_path / "part.fits"
    proc = subprocess.Popen(_cli_cmd(*common, "--out", str(part), "--batch-size", "128"),
                            start_new_session=True)
    parts = tmp_path / "part.fits.parts"
    deadline = time.time() + 300
    while time.time() < deadline and len(list(parts.rglob("part-*.parquet"))) < 2:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the client and its local cluster, mid-run
    proc.wait()
    done = len(list(parts.rglob("part-*.parquet")))
    assert 2 <= done < 8, f"kill landed after {done} of 8 chunks"
    assert not part.exists()

    resumed = subprocess.run(_cli_cmd(*common, "--out", str(part), "--batch-size", "128", "--resume"),
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert f"({done} resumed)" in resumed.stdout

    a, b = _read_scores(tmp_path / "full_scores.parquet"), _read_scores(tmp_path / "part_scores.parquet")
    assert a.colnames == b.colnames and len(a) == len(b) == 128
    for name in a.colnames:
        if name.startswith("P_"):
            np.testing.assert_array_equal(np.asarray(a[name]), np.asarray(b[name]))
        else:
            assert list(a[name]) == list(b[name]), name
    ca, cb = Table.read(full), Table.read(part)
    assert list(ca["OBJECT_ID"]) == list(cb["OBJECT_ID"]) and len(ca) > 0


def test_resume_refuses_a_different_run(tmp_path, tiny_models):
    store = tmp_path / "s.zarr"
    make_store(store, tiles=("A",), n_per_tile=16, chunk_size=16, bad=False)
    parts = tmp_path / "c.fits.parts"
    parts.mkdir()
    (parts / "run.json").write_text('{"store": "elsewhere"}')
    result = CliRunner().invoke(cli, ["run", "--tiles", str(store), "--models", str(tiny_models),
                                      "--out", str(tmp_path / "c.fits"), "--resume"])
    assert result.exit_code == 2 and "cannot resume" in result.output


def test_bf16_path_agrees_with_fp32(tmp_path, tiny_models):
    pytest.importorskip("torch")
    store = tmp_path / "s.zarr"
    make_store(store, tiles=("A",), n_per_tile=32, chunk_size=16, bad=False)
    for precision in ("fp32", "bf16"):
        result = _run_cli(["--tiles", str(store), "--models", str(tiny_models), "--out",
                           str(tmp_path / f"{precision}.fits"), "--precision", precision])
        assert result.exit_code == 0, result.output
    a = _read_scores(tmp_path / "fp32_scores.parquet")
    b = _read_scores(tmp_path / "bf16_scores.parquet")
    for col in ("P_OU_J", "P_OU_JYH", "P_OU_VIS", "P_ENSEMBLE"):
        diff = np.abs(np.asarray(a[col]) - np.asarray(b[col]))
        assert diff.max() < 0.01, (col, diff.max())
    assert fits.getheader(tmp_path / "bf16.fits", 1)["PRECISN"] == "bf16"


def test_ou_tsne_ensemble_columns(tmp_path, seven_models):
    from lensengine.engine.ou_tsne import OUTSNE

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    P = np.clip(rng.normal(0.3 + 0.4 * y[:, None], 0.1, (300, 7)), 0, 1)
    model_dir = tmp_path / "models"
    model_dir.mkdir()
    for f in seven_models.glob("*"):
        (model_dir / f.name).symlink_to(f)
    OUTSNE(grid_size=20, perplexity=10, random_state=0).fit(P, y).save(model_dir / "ou_tsne.npz")
    store = tmp_path / "s.zarr"
    make_store(store, tiles=("A",), n_per_tile=16, chunk_size=16)  # includes a NaN-VIS cutout (row 1)
    result = _run_cli(["--tiles", str(store), "--models", str(model_dir), "--out", str(tmp_path / "c.fits"),
                       "--threshold", "0"])
    assert result.exit_code == 0, result.output
    assert "OU-T-SNE ensemble" in result.output
    s = _read_scores(tmp_path / "c_scores.parquet")
    complete = np.isfinite(np.stack([s[c] for c in s.colnames if c.startswith("P_OU_") and c != "P_OU_TSNE"])).all(0)
    assert not complete[1] and complete[0]
    # OU-T-SNE scores the complete rows and is the ensemble score there; the mean stands in elsewhere
    np.testing.assert_array_equal(np.asarray(s["P_ENSEMBLE"])[complete], np.asarray(s["P_OU_TSNE"])[complete])
    assert np.isnan(s["P_OU_TSNE"][1]) and np.isfinite(s["P_ENSEMBLE"][1]) and s["TSNE_CELL"][1] == -1
    assert (np.asarray(s["TSNE_CELL"])[complete] >= 0).all()
    assert fits.getheader(tmp_path / "c.fits", 1)["ENSEMBLE"] == "OU-T-SNE"


def test_explain_top_writes_maps_for_the_best_candidates(tmp_path, tiny_models):
    pytest.importorskip("torch")
    store = tmp_path / "s.zarr"
    make_store(store, tiles=("A",), n_per_tile=16, chunk_size=16, bad=False)
    out = tmp_path / "c.fits"
    result = _run_cli(["--tiles", str(store), "--models", str(tiny_models), "--out", str(out), "--threshold", "0",
                       "--explain-top", "1", "--explain-model", "OU-J"])
    assert result.exit_code == 0, result.output
    from lensengine.catalogs.catalog import read_catalog

    cat = read_catalog(out)
    assert len(cat) == 16 and cat.meta["EXPLMOD"][0] == "OU-J"
    explained = [str(e) for e in cat["EXPLAIN"]]
    assert explained[0] and not any(explained[1:])
    for entry in explained[:1]:
        files = entry.split(";")
        assert {Path(f).name.split("_", 1)[1] for f in files} == {"occlusion.png", "gradcam.png"}
        assert all((tmp_path / f).is_file() for f in files)
    # provenance survives the rewrite
    assert fits.getheader(out, 1)["NCUTOUT"] == 16


def test_workers_and_batch_size_default_to_the_cpu_or_the_gpu_measurements(monkeypatch, capsys):
    """Not given, --workers and --batch-size are 1 and 32 on the CPU; for the networks on a GPU, 256 and
    min(8, cores / 2) workers (the stop-38 H200 runs and the preprocessing's cost by sub-batch size); given
    values are kept, and with --scheduler no local workers are sized."""
    import os

    from lensengine.engine import run_cli, sessions

    monkeypatch.setattr(sessions, "gpu_available", lambda: False)
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert run_cli.sized_for("cpu", None, None, None) == (1, 32)
    assert run_cli.sized_for("auto", None, None, None) == (1, 32)  # no GPU here: the CPU's
    assert run_cli.sized_for("cuda", None, None, None, quiet=False) == (8, 256)
    assert "--workers 8 --batch-size 256" in capsys.readouterr().err
    assert run_cli.sized_for("tensorrt", None, 3, None) == (3, 256)
    assert run_cli.sized_for("cuda", None, None, 64) == (8, 64)
    assert run_cli.sized_for("cuda", "tcp://10.0.0.5:8786", None, None) == (1, 256)
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    assert run_cli.sized_for("cuda", None, None, None) == (3, 256)
    # auto on a machine with a GPU that ONNX Runtime can use sizes for the GPU
    from lensengine.engine import scoring

    monkeypatch.setattr(sessions, "gpu_available", lambda: True)
    monkeypatch.setattr(scoring, "_gpu_here", lambda: True)
    assert run_cli.sized_for("auto", None, None, None) == (3, 256)
    assert run_cli.sized_for("auto", "tcp://10.0.0.5:8786", None, None) == (1, 32)  # the workers are elsewhere


def test_device_cuda_without_a_usable_gpu_is_refused_before_any_work(tmp_path, store_with_bad_cutouts, tiny_models):
    """--device cuda on a machine whose ONNX Runtime cannot use a GPU: exit 2 with the reason, before a cluster
    starts or anything is written (with --scheduler the workers may have GPUs, so nothing is decided here)."""
    from lensengine.engine.sessions import choose_providers

    try:
        choose_providers("cuda")
        pytest.skip("a usable GPU is present here")
    except RuntimeError:
        pass
    out = tmp_path / "c.fits"
    result = _run_cli(["--tiles", str(store_with_bad_cutouts), "--models", str(tiny_models), "--out", str(out),
                       "--device", "cuda"])
    assert result.exit_code == 2, result.output
    assert "--device cuda asked for a GPU but none is usable here" in result.output
    assert not out.exists() and not list(tmp_path.glob("c_scores*"))
