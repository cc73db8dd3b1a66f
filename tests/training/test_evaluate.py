"""Evaluation: scores through ONNX Runtime, several model directories, reports and --json."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from lensengine.engine.preprocess import Preprocessor  # noqa: E402
from lensengine.engine.specs import get_spec  # noqa: E402


def _toy():
    spec = importlib.util.spec_from_file_location("_toy_train", Path(__file__).with_name("test_train.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from lensengine.training.export import export_onnx
    from lensengine.training.networks import build_model

    root = tmp_path_factory.mktemp("eval")
    store = _toy().make_store(root / "test.zarr", n=48, chunk=16, bad=2)
    nets = {}
    for label, seed in (("ours", 1), ("pub", 2)):
        for name in (("OU-J", "OU-VIS") if label == "ours" else ("OU-J",)):
            torch.manual_seed(seed)
            net = build_model(name).eval()
            export_onnx(net, get_spec(name), root / label / f"{get_spec(name).file_stem}.onnx", source=label)
            nets[(label, name)] = net
    return root, store, nets


def _torch_scores(store, net, name):
    from lensengine.catalogs.store import SurveyStore
    from lensengine.training.networks import PLensModel

    s = SurveyStore.open(store)
    ys, ps = [], []
    for tile in s.tiles:
        for i in range(len(s.chunk_slices(tile))):
            b = s.read_chunk(tile, i)
            keep = (b.flags & 0x30) == 0
            prep = Preprocessor([get_spec(name)])({k: (None if v is None else v[keep]) for k, v in b.bands().items()})
            ok = prep.usable[name]
            with torch.no_grad():
                p = PLensModel(net)(torch.from_numpy(prep.inputs[name][ok])).numpy()
            ys.append(b.truth["label"][keep][ok])
            ps.append(p)
    return np.concatenate(ys), np.concatenate(ps)


def test_evaluate_two_dirs_matches_torch_and_writes_report(setup, tmp_path):
    from lensengine.training.evaluate import evaluate, summary_json
    from lensengine.training.metrics import binary_metrics

    root, store, nets = setup
    report = evaluate([root / "ours", f"published={root / 'pub'}"], store, tmp_path / "rep",
                      ensembles={None: lambda d: (d["OU-J"] + d["OU-VIS"]) / 2})
    assert set(report["models"]) == {"OU-J", "OU-VIS", "OU-T-SNE", "published:OU-J"}
    assert report["skipped"] == 2 and report["n_labelled"] == 46
    # OU-VIS cannot score the 2 cutouts with NaN VIS; OU-J (NISP only) scores them
    assert report["models"]["OU-VIS"]["n_unscored"] == 2 and report["models"]["OU-J"]["n_unscored"] == 0
    for key, (label, name) in {"OU-VIS": ("ours", "OU-VIS"), "published:OU-J": ("pub", "OU-J")}.items():
        y, p = _torch_scores(store, nets[(label, name)], name)
        expected = binary_metrics(y, p)
        got = report["models"][key]["metrics"]
        assert got["n"] == expected["n"]
        for m in ("precision", "recall", "accuracy", "auroc", "tpr0", "tpr10"):
            if expected[m] == expected[m]:  # not NaN
                assert got[m] == pytest.approx(expected[m], abs=1e-6), (key, m)
    rb = report["models"]["OU-J"]["recall_by"]
    assert {"theta_e", "arc_snr", "source_colour", "kind"} <= set(rb)
    assert sum(b["n"] for b in rb["source_colour"]) == report["models"]["OU-J"]["metrics"]["n_lens"]
    for f in ("report.json", "report.md", "roc.png"):
        assert (tmp_path / "rep" / f).is_file()
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "published:OU-J" in md and "Recall by `theta_e`" in md
    assert json.loads((tmp_path / "rep" / "report.json").read_text())["n_lens"] == report["n_lens"]
    summary = summary_json(report)
    assert set(summary["OU-J"]) == {"n", "auroc", "f1", "fbeta", "precision", "recall", "accuracy", "tpr0", "tpr10",
                                    "n_lens", "n_neg", "tpr_fpr1", "tpr_fpr01", "tpr_fpr001", "purity_1e3", "ci",
                                    "reasons", "negatives"}


def test_cli_evaluate_json(setup):
    from click.testing import CliRunner

    from lensengine.engine.cli import _register_plugin_commands, cli

    root, store, _ = setup
    _register_plugin_commands()
    res = CliRunner().invoke(cli, ["evaluate", "--models", str(root / "ours"), "--models", f"pub={root / 'pub'}",
                                   "--data", str(store), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert set(out) == {"OU-J", "OU-VIS", "pub:OU-J"}
    assert out["OU-J"]["n"] == 46
    res = CliRunner().invoke(cli, ["evaluate", "--models", str(root / "ours"), "--models", str(root / "ours"),
                                   "--models", str(root / "ours"), "--data", str(store)])
    assert res.exit_code == 2 and "occur twice" in res.output


def test_operating_points_per_negative_set_and_checks(setup, tmp_path):
    from lensengine.training.evaluate import evaluate, summary_json
    from lensengine.training.metrics import operating_metrics, tpr_at_fp

    root, store, nets = setup
    y, p = _torch_scores(store, nets[("ours", "OU-VIS")], "OU-VIS")
    # min_false_positives=0 lets the 24-odd toy negatives give a figure: k = 0 at FPR 1 %, i.e. TPR0
    report = evaluate([root / "ours"], None, tmp_path / "rep", lenses=store,
                      negatives={"hard": store}, checks={"again": store}, bootstrap=50, seed=3,
                      min_false_positives=0, ensembles={})
    assert report["primary_negatives"] == "hard"
    op = report["models"]["OU-VIS"]["operating"]["hard"]
    assert op["n_lens"] == int((y == 1).sum()) and op["n_neg"] == int((y == 0).sum())
    assert op["tpr_fpr1"] == pytest.approx(tpr_at_fp(y, p, 0), abs=1e-6)
    expected = operating_metrics(p[y == 1], p[y == 0], bootstrap=50, seed=3, min_false_positives=0)
    for key in ("tpr_fpr1", "tpr_fpr01", "purity_1e3"):
        want = expected[key]
        if want is not None and math.isnan(want):  # 0/0 purity: null in JSON
            assert op[key] is None, key
        else:
            assert op[key] == pytest.approx(want, abs=1e-6), key
    assert op["ci"]["tpr_fpr1"]["95"] == pytest.approx(expected["ci"]["tpr_fpr1"]["95"], abs=1e-6)
    # the check store: cutouts above the FPR 1 % threshold of 'hard' (its highest negative)
    chk = report["models"]["OU-VIS"]["checks"]["again"]
    t = p[y == 0].max()
    assert chk["above"]["tpr_fpr1"] == int(np.sum(p > t))
    assert chk["max_p"] == pytest.approx(p.max(), abs=1e-6)
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "## Operating points" in md and "Negatives `hard`" in md and "Check `again`" in md
    # the default rule: 10 false positives needed, so every figure is null with its reason;
    # a mixed store alone gives the negative set "data"
    report = evaluate([root / "ours"], store, None, bootstrap=0, ensembles={})
    s = summary_json(report)["OU-J"]
    assert s["tpr_fpr1"] is None and "needs at least 1000" in s["reasons"]["tpr_fpr1"]
    assert set(s["negatives"]) == {"data"} and report["primary_negatives"] == "data"


def test_cli_evaluate_negatives_and_usage(setup):
    from click.testing import CliRunner

    from lensengine.engine.cli import _register_plugin_commands, cli

    root, store, _ = setup
    _register_plugin_commands()
    res = CliRunner().invoke(cli, ["evaluate", "--models", str(root / "pub"), "--lenses", str(store),
                                   "--negatives", f"sky={store}", "--bootstrap", "20", "--min-fp", "0", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)["OU-J"]
    assert out["tpr_fpr1"] is not None and "95" in out["ci"]["tpr_fpr1"]
    assert set(out["negatives"]) == {"sky"}
    res = CliRunner().invoke(cli, ["evaluate", "--models", str(root / "pub"), "--lenses", str(store)])
    assert res.exit_code == 2 and "--negatives" in res.output
    res = CliRunner().invoke(cli, ["evaluate", "--models", str(root / "pub"), "--data", str(store),
                                   "--negatives", f"a={store}", "--negatives", f"a={store}"])
    assert res.exit_code == 2 and "given twice" in res.output
