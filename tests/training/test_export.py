"""ONNX export: equality with torch from raw bands through preprocessing, metadata, contracts."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

from click.testing import CliRunner  # noqa: E402

from lensengine.engine.models import ContractError, check_bands_available, load_entry  # noqa: E402
from lensengine.engine.preprocess import Preprocessor  # noqa: E402
from lensengine.engine.specs import MODEL_NAMES, MODEL_SPECS  # noqa: E402
from lensengine.training.export import export_onnx, load_published, load_torch_model, weights_sha256  # noqa: E402
from lensengine.training.networks import build_model, p_lens  # noqa: E402


def _raw_bands(rng, n):
    """Raw survey-like bands: positive sky + sources, physical scale, different per band."""
    out = {}
    for band, size, scale in (("VIS", 200, 3.0), ("Y", 66, 40.0), ("J", 66, 55.0), ("H", 66, 60.0)):
        img = rng.gamma(2.0, scale, size=(n, size, size)).astype(np.float32)
        c = size // 2
        img[:, c - 3 : c + 3, c - 3 : c + 3] += 50 * scale
        out[band] = img
    return out


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_onnx_equals_torch_from_raw_bands(name, published_onnx_dir, published_weights_dir, rng):
    spec = MODEL_SPECS[name]
    entry = load_entry(published_onnx_dir / f"{spec.file_stem}.onnx")
    sess = ort.InferenceSession(str(entry.path), providers=["CPUExecutionProvider"])
    net = load_published(published_weights_dir, name)
    for n in (1, 37):
        x = Preprocessor([spec])(_raw_bands(rng, n)).inputs[name]
        got = sess.run(["p_lens"], {"cutout": x})[0]
        with torch.no_grad():
            want = p_lens(net(torch.from_numpy(x))).numpy()
        assert got.shape == (n,)
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_metadata_describes_the_model(published_onnx_dir, published_weights_dir):
    entry = load_entry(published_onnx_dir / "OU_200.onnx")
    assert entry.name == "OU-200" and entry.bands == ("J", "Y", "H", "VIS") and entry.stamp == 200
    meta = entry.metadata
    assert meta["architecture"] == "OU-200" and meta["pixel_scale"] == "0.1"
    assert "min-max" in meta["normalisation"] and meta["source"].startswith("published")
    assert meta["sha256"] == weights_sha256(load_published(published_weights_dir, "OU-200"))
    # the torch weights are kept next to the ONNX file and reload to the same hash
    assert weights_sha256(load_torch_model(entry.path)) == meta["sha256"]


def test_export_of_our_own_network_records_config_and_metrics(tmp_path):
    torch.manual_seed(3)
    net = build_model("OU-JYH")
    path = export_onnx(net, MODEL_SPECS["OU-JYH"], tmp_path / "m.onnx", source="trained here",
                       training_config={"epochs": 2, "lr": 3e-4}, metrics={"auroc": 0.5})
    entry = load_entry(path)
    assert json.loads(entry.metadata["training_config"]) == {"epochs": 2, "lr": 3e-4}
    assert json.loads(entry.metadata["metrics"]) == {"auroc": 0.5}
    with pytest.raises(ValueError, match="expects OU-66 with bands"):
        export_onnx(net, MODEL_SPECS["OU-66"], tmp_path / "x.onnx", source="trained here")


def test_contract_mismatch_names_both_sides(published_onnx_dir):
    entry = load_entry(published_onnx_dir / "OU_66.onnx")
    with pytest.raises(ContractError, match=r"reads bands \['J', 'Y', 'H', 'VIS'\].*store s\.zarr provides \['VIS'\].*missing"):
        check_bands_available(entry, ("VIS",), "store s.zarr")


def test_a_non_lensengine_onnx_is_refused(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    path = tmp_path / "other.onnx"
    onnx.save(helper.make_model(graph, ir_version=8, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    with pytest.raises(ContractError, match="expected one input 'cutout'"):
        load_entry(path)


def test_cli_import_published(tmp_path, published_weights_dir):
    from lensengine.engine.cli import _register_plugin_commands, cli

    _register_plugin_commands()  # the plugin commands, whichever test ran first
    out = tmp_path / "pub"
    result = CliRunner().invoke(cli, ["models", "import-published", str(published_weights_dir), "--out", str(out),
                                      "--model", "OU-J", "--model", "OU-VIS"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.glob("*.onnx")) == ["OU_J.onnx", "OU_VIS.onnx"]
    listing = CliRunner().invoke(cli, ["models", "list", "--models", str(out), "--json"])
    assert listing.exit_code == 0, listing.output
    assert [m["name"] for m in json.loads(listing.output)] == ["OU-J", "OU-VIS"]


def _dihedral(x, k, flip):
    """One of the eight flips and rotations of (N, C, S, S) stamps, in numpy."""
    y = np.rot90(x, k, axes=(2, 3))
    return np.ascontiguousarray(y[..., ::-1] if flip else y)


def test_tta_model_is_the_mean_log_odds_of_the_eight_views_and_ignores_orientation(tmp_path, rng):
    """`lensengine models tta`: P equals the logistic of the plain model's mean log-odds over the eight views
    (scored one by one in numpy), a rotated or mirrored cutout scores the same, the contract and weights stay."""
    from lensengine.engine.cli import _register_plugin_commands, cli

    torch.manual_seed(11)
    net = build_model("OU-66")
    plain = export_onnx(net, MODEL_SPECS["OU-66"], tmp_path / "OU_66.onnx", source="test", metrics={"auroc": 0.5})
    _register_plugin_commands()
    res = CliRunner().invoke(cli, ["models", "tta", str(plain), "--out", str(tmp_path / "tta" / "OU_66.onnx")])
    assert res.exit_code == 0, res.output
    entry, base = load_entry(tmp_path / "tta" / "OU_66.onnx"), load_entry(plain)
    assert (entry.name, entry.bands, entry.stamp) == (base.name, base.bands, base.stamp)
    assert entry.metadata["tta"].startswith("dihedral8") and "tta" not in base.metadata
    assert entry.metadata["sha256"] == base.metadata["sha256"] and json.loads(entry.metadata["metrics"]) == {"auroc": 0.5}
    assert entry.metadata["source"].startswith("test;")

    x = Preprocessor([MODEL_SPECS["OU-66"]])(_raw_bands(rng, 5)).inputs["OU-66"]
    tta = ort.InferenceSession(str(entry.path), providers=["CPUExecutionProvider"])
    one = ort.InferenceSession(str(plain), providers=["CPUExecutionProvider"])
    views = [one.run(["p_lens"], {"cutout": _dihedral(x, k, f)})[0].astype(np.float64)
             for k in range(4) for f in (False, True)]
    z = np.mean([np.log(p) - np.log1p(-p) for p in views], axis=0)
    got = tta.run(["p_lens"], {"cutout": x})[0]
    np.testing.assert_allclose(got, 1 / (1 + np.exp(-z)), atol=2e-6, rtol=0)
    assert np.ptp(np.stack(views), axis=0).max() > 1e-4  # the plain network does see the orientation
    for k, f in ((1, False), (2, True), (3, True)):
        np.testing.assert_allclose(tta.run(["p_lens"], {"cutout": _dihedral(x, k, f)})[0], got, atol=2e-6, rtol=0)

    again = CliRunner().invoke(cli, ["models", "tta", str(entry.path), "--out", str(tmp_path / "x.onnx")])
    assert again.exit_code == 2 and "already test-time augmented" in again.output
    same = CliRunner().invoke(cli, ["models", "tta", str(plain), "--out", str(plain)])
    assert same.exit_code == 2 and "another file" in same.output


def test_torch_runner_scores_a_tta_model_with_its_eight_views(tmp_path, rng):
    """The bf16 torch runner reads the bare network's .pt; for a test-time-augmented model it must still average
    the eight views, so its scores follow the TTA ONNX model, not the plain one."""
    from lensengine.engine.scoring import make_runner
    from lensengine.training.export import export_tta

    torch.manual_seed(12)
    plain = export_onnx(build_model("OU-66"), MODEL_SPECS["OU-66"], tmp_path / "OU_66.onnx", source="test")
    tta = load_entry(export_tta(plain, tmp_path / "tta" / "OU_66.onnx"))
    x = Preprocessor([MODEL_SPECS["OU-66"]])(_raw_bands(rng, 6)).inputs["OU-66"]
    want = ort.InferenceSession(str(tta.path), providers=["CPUExecutionProvider"]).run(["p_lens"], {"cutout": x})[0]
    bare = ort.InferenceSession(str(plain), providers=["CPUExecutionProvider"]).run(["p_lens"], {"cutout": x})[0]
    got = make_runner(tta, "bf16", "cpu", 1)(x)
    assert np.abs(got - want).max() < 0.01 and np.abs(got - want).max() < np.abs(bare - want).max() / 3
