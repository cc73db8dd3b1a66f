"""The recall-test plugin: hooks, Table 6 / JSON output, regression gate, selection function, known lenses."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from lensengine.plugins import _recall_tables as T

TRUTH = {"label": "int8", "theta_e": "float32", "arc_snr": "float32", "mag_source_VIS": "float32",
         "mag_source_H": "float32", "source_colour": "str"}


def _cli():
    from lensengine.engine.cli import _register_plugin_commands, cli

    _register_plugin_commands()
    return cli


def _tiny_store(path, n, seed, kind):
    """A small store: half painted lenses (bright ring around a blob), half noise; truth columns filled."""
    from lensengine.catalogs.store import CutoutBatch, SurveyStore

    rng = np.random.default_rng(seed)
    vis = rng.normal(0, 0.05, (n, 200, 200)).astype(np.float32)
    nisp = rng.normal(0, 0.05, (n, 3, 66, 66)).astype(np.float32)
    for size, arr in ((200, vis), (66, nisp)):
        c = (size - 1) / 2
        y, x = (np.mgrid[:size, :size] - c) * (20.0 / size)
        ring = np.exp(-0.5 * ((np.hypot(x, y) - 2.0) / 0.3) ** 2) + np.exp(-np.hypot(x, y / 0.7) / 0.5)
        arr[: n // 2] += ring if arr.ndim == 3 else ring[None]
    truth = {"label": np.ones(n, np.int8), "theta_e": rng.uniform(0.5, 3, n).astype(np.float32),
             "arc_snr": rng.uniform(10, 200, n).astype(np.float32),
             "mag_source_VIS": rng.uniform(21, 25, n).astype(np.float32),
             "mag_source_H": rng.uniform(20, 25, n).astype(np.float32),
             "source_colour": np.array(["blue", "red"] * (n // 2) + ["blue"] * (n % 2))}
    store = SurveyStore.create(path, survey=f"test-{kind}", chunk_size=4, truth_columns=TRUTH)
    store.append("t", CutoutBatch(object_id=np.arange(n, dtype=np.int64), ra=np.zeros(n), dec=np.zeros(n),
                                  vis=vis, nisp=nisp, flags=np.zeros(n, np.uint32), truth=truth))
    return path


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    pytest.importorskip("lensengine.catalogs.store")
    d = tmp_path_factory.mktemp("recall")
    return _tiny_store(d / "arcs.zarr", 6, 1, "arcs"), _tiny_store(d / "rings.zarr", 5, 2, "rings")


def test_registered_through_hooks():
    from lensengine.plugins.manager import get_plugin_manager

    pm = get_plugin_manager()
    plugin = pm.get_plugin("lensengine.plugins.recall")
    assert "register_commands" in {h.name for h in pm.get_hookcallers(plugin)}
    result = CliRunner().invoke(_cli(), ["recall-test", "--help"])
    assert result.exit_code == 0, result.output
    for option in ("--arcs", "--rings", "--min-recall", "--json", "--fits", "-n"):
        assert option in result.output


def test_recall_and_tables():
    p = np.array([0.9, 0.2, np.nan, 0.5, 0.7])
    lenses = np.array([True, True, True, True, False])
    assert T.recall(p, lenses) == pytest.approx(2 / 4)  # NaN counts as missed
    assert np.isnan(T.recall(p, np.zeros(5, bool)))
    assert (T.PAPER_TABLE6["OU-200"]["compound_arcs"], T.PAPER_TABLE6["OU-200"]["double_rings"]) == (0.7505, 0.5567)
    assert T.PAPER_TABLE7["SDSS J0946+1006"] == (0.6873, 0.8228)
    rows = T.selection_function(np.array([1.0, 2, 3, 4, 5, 6]), {"A": np.array([0, 0, 0, 1, 1, 1.0])},
                                np.ones(6, bool), n_bins=2)
    assert [r["A"] for r in rows] == [0.0, 1.0] and sum(r["n"] for r in rows) == 6
    rows = T.selection_function(np.array(["red", "blue", "red"]), {"A": np.array([0.1, 0.9, 0.8])}, np.ones(3, bool))
    assert {r["bin"]: r["A"] for r in rows} == {"blue": 1.0, "red": 0.5}


def test_recall_command_json_matches_direct_scoring(stores, published_onnx_dir, published_weights_dir, tmp_path):
    torch = pytest.importorskip("torch")
    from lensengine.catalogs.store import SurveyStore
    from lensengine.engine.preprocess import Preprocessor
    from lensengine.engine.specs import MODEL_NAMES, get_spec
    from lensengine.training.export import load_published

    arcs, rings = stores
    out = tmp_path / "out"
    result = CliRunner().invoke(_cli(), ["recall-test", "--models", str(published_onnx_dir), "--arcs", str(arcs),
                                         "--rings", str(rings), "--json", "--out", str(out)])
    assert result.exit_code == 0, result.output
    got = json.loads(result.output)
    assert set(got) == {"compound-arcs", "double-rings", "n"}
    assert got["n"] == {"compound-arcs": 6, "double-rings": 5}
    assert set(got["compound-arcs"]) == set(MODEL_NAMES)
    # the same recall from the torch networks on the same preprocessing
    batch = SurveyStore.open(arcs).read("t", 0, 6)
    for name in ("OU-66", "OU-200"):
        x = torch.from_numpy(Preprocessor([get_spec(name)])(batch.bands()).inputs[name])
        with torch.no_grad():
            p = torch.softmax(load_published(published_weights_dir, name)(x), 1)[:, 1].numpy()
        assert got["compound-arcs"][name] == pytest.approx(float(np.mean(p >= 0.5)))
    assert (out / "recall.json").is_file() and (out / "selection_function.csv").is_file()
    assert (out / "selection_compound-arcs.png").is_file()
    header = (out / "selection_function.csv").read_text().splitlines()[0]
    assert header.startswith("set,variable,bin,lo,hi,n,")
    saved = json.loads((out / "recall.json").read_text())
    assert set(saved["selection"]["compound-arcs"]) == {"theta_e", "arc_snr", "mag_source_VIS", "source_colour",
                                                        "colour_VIS-H"}
    # human-readable table: paper rows beside ours
    result = CliRunner().invoke(_cli(), ["recall-test", "--models", str(published_onnx_dir), "--model", "OU-66",
                                         "--model", "OU-200", "--arcs", str(arcs), "--rings", str(rings)])
    assert result.exit_code == 0, result.output
    assert "compound-arcs (paper)" in result.output and "0.7505" in result.output and "0.4742" in result.output


def test_regression_gate(stores, published_onnx_dir):
    arcs, rings = stores
    args = ["recall-test", "--models", str(published_onnx_dir), "--model", "OU-VIS", "--model", "OU-J",
            "--arcs", str(arcs), "--rings", str(rings), "--json"]
    ok = CliRunner().invoke(_cli(), args + ["--min-recall", "0"])
    assert ok.exit_code == 0, ok.output
    recalls = json.loads(ok.output)
    worst = min(v for k in T.SETS for v in recalls[k].values())
    assert worst < 1.0  # half of the tiny sets are noise
    bad = CliRunner().invoke(_cli(), args + ["--min-recall", str(min(1.0, worst + 0.01))])
    assert bad.exit_code == 1


def test_known_compound_lens_j0946(published_onnx_dir, real_dir, tmp_path):
    pytest.importorskip("lensengine.catalogs.ingest")
    fits = real_dir / "hst_sdssj0946" / "data.fits"
    if not fits.is_file():
        pytest.skip(f"{fits} not found")
    result = CliRunner().invoke(_cli(), ["recall-test", "--models", str(published_onnx_dir), "--model", "OU-66",
                                         "--model", "OU-200", "--fits", str(fits), "--workdir", str(tmp_path),
                                         "--json"])
    assert result.exit_code == 0, result.output
    known = json.loads(result.output)["known"]
    assert list(known) == ["SDSS J0946+1006"]
    assert set(known["SDSS J0946+1006"]) == {"OU-66", "OU-200"}
    assert all(0 <= v <= 1 for v in known["SDSS J0946+1006"].values())
