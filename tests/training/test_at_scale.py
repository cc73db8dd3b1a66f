"""Tests of the time-boxed job for a GPU lease (lensengine.training.at_scale) and the simulator's time budget."""

from __future__ import annotations

import json
import subprocess
import tarfile

import numpy as np
import pytest

pytest.importorskip("lenstronomy")
pytest.importorskip("skypy")
pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

from click.testing import CliRunner  # noqa: E402

from lensengine.catalogs.store import SurveyStore  # noqa: E402
from lensengine.engine.cli import _register_plugin_commands, cli  # noqa: E402
from lensengine.training import at_scale  # noqa: E402
from lensengine.training.simulate import TILE, simulate_batch, simulate_store  # noqa: E402


def test_a_spent_time_budget_leaves_the_first_block_of_the_whole_store(tmp_path):
    path = simulate_store(tmp_path / "t.zarr", "training-mix", 96, 7, lens_fraction=0.5, block=32, progress=False,
                          max_seconds=0)
    store = SurveyStore.open(path)
    assert store.n_cutouts(TILE) == 32  # the first block is always waited for, nothing after it
    whole = simulate_batch("training-mix", 32, 7, 0, lens_fraction=0.5)
    got = store.read(TILE, 0, 32)
    np.testing.assert_array_equal(got.vis, whole.vis)
    np.testing.assert_array_equal(got.nisp, whole.nisp)
    prov = store.attrs["provenance"]
    assert (prov["n"], prov["n_asked"]) == (32, 96) and "ran out after 32 cutouts" in prov["stopped"]


def test_simulate_max_time_reports_what_it_wrote(tmp_path):
    _register_plugin_commands()
    out = tmp_path / "s.zarr"
    res = CliRunner().invoke(cli, ["simulate", "--kind", "sky-negatives", "-n", "64", "--seed", "3", "--out", str(out),
                                   "--max-time", "0.0001", "--json"])
    assert res.exit_code == 0, res.output
    printed = json.loads(res.output)
    assert (printed["n"], printed["n_asked"]) == (32, 64)
    assert SurveyStore.open(out).n_cutouts(TILE) == 32
    full = CliRunner().invoke(cli, ["simulate", "--kind", "sky-negatives", "-n", "32", "--seed", "3", "--out",
                                    str(tmp_path / "f.zarr")])
    assert full.exit_code == 0 and "wrote 32 cutouts to" in full.output and "asked" not in full.output


def test_plan_keeps_a_margin_and_gives_the_rest_to_simulation_and_training():
    p = at_scale.plan(8.5, 0.45, 2)
    assert p["total"] == 510.0 and p["stop_training"] == 470.0
    assert p["simulate"] + p["train"] == pytest.approx(510.0 - 75.0)
    assert p["simulate"] == pytest.approx(0.45 * 435.0)


def _score(onnx_path, x):
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def test_the_dry_run_simulates_trains_exports_and_archives(tmp_path):
    summary = at_scale.run(tmp_path / "out", models=("OU-66",), workers=1, dry_run=True)
    stores = summary["stores"]
    assert stores["val"]["seed"] == at_scale.VAL_SEED and stores["val"]["n"] == 64
    assert stores["train"]["seed"] == at_scale.TRAIN_SEED and stores["train"]["n"] == 32  # a zero budget: one block
    run = summary["training"]["OU-66"]
    assert run["returncode"] == 0, run.get("stderr")
    assert [int(r["epoch"]) for r in run["epochs"]] == [1]
    assert "--init-from" in run["command"] and "--min-arc-snr 15" in run["command"]
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["models"] == ["OU-66"]
    with tarfile.open(tmp_path / "out" / "at_scale.tar.gz") as tar:
        assert sorted(tar.getnames()) == ["OU-66/OU_66.onnx", "OU-66/best.pt", "OU-66/log.csv"]
        tar.extractall(tmp_path / "back", filter="data")
    # the network came back as an ONNX file that scores; a run stopped at the deadline is exported the same way
    x = np.random.default_rng(0).normal(size=(2, 4, 66, 66)).astype(np.float32)
    shipped = _score(tmp_path / "back" / "OU-66" / "OU_66.onnx", x)
    run_dir = tmp_path / "out" / "work" / "runs" / "OU-66"
    (run_dir / "OU_66.onnx").unlink()
    again = at_scale.export_kept(run_dir)
    np.testing.assert_allclose(_score(again, x), shipped, rtol=0, atol=1e-6)
    (run_dir / "best.pt").unlink()
    assert at_scale.export_kept(run_dir) is None


def test_the_dry_run_trains_stack_aware_on_the_shipped_networks_scores(tmp_path):
    summary = at_scale.run(tmp_path / "out", models=("OU-66",), workers=1, dry_run=True, stack_weight=0.5)
    scored = summary["partner_scores"]
    assert "error" not in scored and summary["stack_weight"] == 0.5
    from lensengine.catalogs.catalog import score_arrow

    table = score_arrow(scored["table"])
    assert table.num_rows == summary["stores"]["train"]["n"]
    assert np.isfinite(table["P_OU_VIS"].to_numpy()).all()  # the member OU-66's stack loss leans on most
    run = summary["training"]["OU-66"]
    assert run["returncode"] == 0, run.get("stderr")
    assert f"--stack-scores {scored['table']} --stack-weight 0.5 --stack-val-scores {scored['val_table']}" \
        in run["command"]
    assert score_arrow(scored["val_table"]).num_rows == summary["stores"]["val"]["n"]
    config = json.loads((tmp_path / "out" / "work" / "runs" / "OU-66" / "config.json").read_text())
    assert config["stack_scores"] == scored["table"] and config["stack_weight"] == 0.5
    assert config["stack_val_scores"] == scored["val_table"]
    # the validation store's scoring fails alone: training stays stack-aware, its epochs ranked by its own figure
    from lensengine.engine.models import default_models_dir

    stores = {"train": summary["stores"]["train"], "val": {"store": str(tmp_path / "missing.zarr"), "n": 8}}
    half = at_scale.partner_scores(stores, tmp_path / "again", models_dir=default_models_dir(), workers=1)
    assert score_arrow(half["table"]).num_rows == stores["train"]["n"] and "missing.zarr" in half["val_error"]
    assert "val_table" not in half


def test_partner_scoring_that_fails_or_runs_over_leaves_training_without_the_stack(tmp_path):
    from lensengine.engine.models import default_models_dir

    stores = {"train": {"store": str(tmp_path / "missing.zarr"), "n": 8}, "val": {"store": "never scored", "n": 8}}
    failed = at_scale.partner_scores(stores, tmp_path, models_dir=default_models_dir(), workers=1, timeout_s=120)
    assert "table" not in failed and "missing.zarr" in failed["error"]
    late = at_scale.partner_scores(stores, tmp_path, models_dir=default_models_dir(), workers=1, timeout_s=0.01)
    assert "table" not in late and late["error"] == "timed out after 0 s"
    cmds = at_scale.train_commands(("OU-66",), stores={"train": {"store": "t"}, "val": {"store": "v"}}, init=tmp_path,
                                   runs=tmp_path, minutes=None, epochs=1, device="cpu", loader_workers=1, threads=1)
    assert "--stack-scores" not in cmds["OU-66"]


def test_pack_gathers_wheels_galaxies_and_the_device_script(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "demo-1.0-py3-none-any.whl").write_bytes(b"x" * 10)
    galaxies = tmp_path / "galaxies"
    (galaxies / "cosmos").mkdir(parents=True)
    (galaxies / "cosmos" / "a.fits").write_bytes(b"y" * 20)
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    (repo / "tracked.txt").write_bytes(b"z" * 30)
    (repo / ".gitignore").write_text("/.lease/\n")
    report = at_scale.pack(repo / ".lease", galaxies=galaxies, repo=repo, wheels_from=wheels)
    assert report["wheels"] == ["demo-1.0-py3-none-any.whl"] and report["fits"]
    assert (repo / ".lease" / "shared" / "real" / "galaxies" / "cosmos" / "a.fits").is_file()
    script = (repo / ".lease" / "run.sh").read_text()
    assert "lensengine.training.at_scale run" in script and "LENSENGINE_SHARED" in script
    # what a call sends besides the carried folder: the files git does not ignore
    assert report["tree_bytes"] == 30 + len("/.lease/\n")
    assert report["carried_bytes"] == 10 + 20 + len(script)
