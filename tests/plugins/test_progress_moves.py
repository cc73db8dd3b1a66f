"""Progress that moves (issue 16): recall-test per sub-batch, explain per object with the time left, the
training bar without ``loss nan``; and explain's fast defaults, with the slow methods announced.

A 200-cutout store used to sit at 0/200 for the whole recall test (one step per 1 024-cutout chunk),
``explain`` printed nothing for minutes, and each epoch's bar opened on ``loss nan``.
"""

from __future__ import annotations

import io
import logging

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from click.testing import CliRunner  # noqa: E402


def _store(path, n: int, chunk_size: int, seed: int = 0):
    from lensengine.catalogs.store import CutoutBatch, SurveyStore

    rng = np.random.default_rng(seed)
    store = SurveyStore.create(path, survey="progress test", chunk_size=chunk_size, truth_columns={"label": "int8"})
    store.append("T0", CutoutBatch(object_id=np.arange(n) + 100, ra=rng.uniform(150, 151, n),
                                   dec=rng.uniform(2, 3, n), vis=rng.gamma(2.0, 3.0, (n, 200, 200)).astype(np.float32),
                                   nisp=rng.gamma(2.0, 40.0, (n, 3, 66, 66)).astype(np.float32),
                                   flags=np.zeros(n, np.uint32), truth={"label": (np.arange(n) % 2).astype(np.int8)}))
    return path


def test_recall_scoring_reports_every_sub_batch_with_the_same_scores(tmp_path):
    from lensengine.engine.registry import resolve_models
    from lensengine.plugins._recall_score import score_store

    path = _store(tmp_path / "s.zarr", 45, chunk_size=32)
    entries = resolve_models(None, ["OU-J"])
    steps: list[int] = []
    with_bar = score_store(path, entries, batch_size=16, progress=steps.append)
    assert steps == [16, 16, 13]  # chunk 0: 32 rows in sub-batches of 16; chunk 1: 13 rows
    plain = score_store(path, entries, batch_size=16)
    np.testing.assert_array_equal(with_bar.scores["OU-J"], plain.scores["OU-J"])
    np.testing.assert_array_equal(with_bar.object_id, np.arange(45) + 100)


def test_explain_logs_each_object_with_the_time_left(tmp_path, caplog):
    from lensengine.plugins import _interpret_run as R
    from lensengine.training.networks import build_model

    torch.manual_seed(0)
    net = build_model("OU-66").eval()
    rng = np.random.default_rng(0)
    bands = {"VIS": rng.random((3, 200, 200), dtype=np.float32),
             **{b: rng.random((3, 66, 66), dtype=np.float32) for b in ("Y", "J", "H")}}
    with caplog.at_level(logging.INFO, logger="lensengine.plugins._interpret_run"):
        out = R.explain_cutouts("OU-66", net, bands, ["kav"], tmp_path, object_ids=[7, 8, 9], progress=True)
    assert sorted(out) == [7, 8, 9]
    done = [r.getMessage() for r in caplog.records if " done (" in r.getMessage()]
    assert [m.split(" done (")[1].split(",")[0] for m in done] == ["1/3", "2/3", "3/3"]
    assert all("left)" in m for m in done)


def test_explain_defaults_are_the_fast_methods_and_slow_ones_are_announced(tmp_path):
    from lensengine.engine.cli import _register_plugin_commands, cli
    from lensengine.plugins import _interpret_run as R

    assert set(R.DEFAULT_METHODS) == {"occlusion", "gradcam", "kav"}
    assert not set(R.DEFAULT_METHODS) & set(R.SLOW_METHODS)
    path = _store(tmp_path / "s.zarr", 3, chunk_size=3)
    _register_plugin_commands()
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["explain", "--model", "OU-66", "--tiles", str(path), "--ids", "101",
                                      "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    maps = sorted(p.name for p in (out / "OU_66").glob("*.png"))
    assert maps == ["101_gradcam.png", "101_kav.png", "101_occlusion.png"]
    grid = np.load(out / "OU_66" / "101_occlusion.npz")["grid"]
    assert grid.shape == (11, 11)  # the quick grid (6 px squares), not the paper's 66 x 66
    help_text = " ".join(CliRunner().invoke(cli, ["explain", "--help"]).output.split())
    assert "deepdream (1000 updates per object, about 4.5 min per object" in help_text
    result = CliRunner().invoke(cli, ["explain", "--model", "OU-66", "--tiles", str(path), "--ids", "101",
                                      "--method", "deepdream", "--steps", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "OU-66: deepdream will take about" in result.output


def test_estimate_counts_the_updates_of_the_slow_methods():
    from lensengine.engine.specs import get_spec
    from lensengine.plugins import _interpret_run as R
    from lensengine.training.networks import build_model

    net = build_model("OU-66").eval()
    spec = get_spec("OU-66")
    assert R.estimate_seconds(net, spec, {"occlusion", "gradcam", "kav"}, 5) == {}
    est = R.estimate_seconds(net, spec, {"deepdream", "cgi"}, 2, R.ExplainOptions(steps=100))
    assert set(est) == {"deepdream", "cgi"} and est["deepdream"] > 0
    assert est["deepdream"] == pytest.approx(2 * est["cgi"])  # both time the same update: 2 x 100 vs 100


def test_training_bar_shows_no_loss_before_the_first_batch():
    from rich.console import Console

    from lensengine.training.train import _progress

    bar = _progress(True)
    task = bar.add_task("OU-66 epoch 1/1", total=4, loss="")
    console = Console(record=True, width=120, file=io.StringIO())

    def shown() -> str:
        console.print(bar.make_tasks_table(bar.tasks))
        return console.export_text()

    assert "nan" not in shown().lower()
    bar.update(task, advance=1, loss="loss 0.6931")
    assert "loss 0.6931" in shown()
