"""One scoring core, one row schema, one model contract, layered folders (issue 12).

* ``lensengine evaluate`` and ``lensengine recall-test`` give exactly the scores of ``lensengine run`` for the
  same store and models;
* a third-party plugin model with its own stamp (64 px, 2 bands) scores through all three;
* the folders are layers: catalogs imports no engine, engine imports no training and no plugin internals,
  and the CLI modules import each other in no circle.
"""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

import numpy as np
import pluggy
import pytest
from click.testing import CliRunner

from ._models import make_store, onnx_model

REPO = Path(__file__).resolve().parents[2]
pytest.importorskip("onnx")


class _AcmePlugin:
    """A third party's plugin: one model with its own stamp (64 px) and bands (J, VIS)."""

    def __init__(self, path: Path):
        self.path = path

    @pluggy.HookimplMarker("lensengine")
    def register_models(self):
        from lensengine.engine.models import load_entry

        return [load_entry(self.path)]


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    """One `lensengine run` over a small store with the third-party model and a shipped network (OU-J)."""
    from lensengine.engine.cli import _register_plugin_commands, cli
    from lensengine.engine.models import default_models_dir
    from lensengine.plugins.manager import get_plugin_manager

    if not (default_models_dir() / "OU_J.onnx").is_file():
        pytest.skip("the shipped default models are absent")
    root = tmp_path_factory.mktemp("core")
    store = make_store(root / "survey.zarr", n=24, chunk_size=8)
    acme = onnx_model(root / "acme" / "ACME_64.onnx", "ACME-64", ("J", "VIS"), 64, scale=1.7, offset=-0.4)
    pm = get_plugin_manager()
    pm.register(_AcmePlugin(acme), name="acme-plugin")
    try:
        _register_plugin_commands()
        out = root / "cands.fits"
        result = CliRunner().invoke(cli, ["-q", "run", "--tiles", str(store), "--model", "ACME-64", "--model", "OU-J",
                                          "--out", str(out), "--threshold", "0", "--workers", "1",
                                          "--batch-size", "5", "--no-dashboard",
                                          # evaluate and recall-test run ONNX Runtime fp32; run's default may
                                          # take a faster runner calibrated on this CPU (within 0.01)
                                          "--precision", "fp32"], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        recall = CliRunner().invoke(cli, ["recall-test", "--model", "ACME-64", "--model", "OU-J", "--arcs",
                                          str(store), "--rings", str(store), "--json"], catch_exceptions=False)
        assert recall.exit_code == 0, recall.output
        from lensengine.engine.registry import resolve_models

        entries = resolve_models(None, ["ACME-64", "OU-J"])
    finally:
        pm.unregister(name="acme-plugin")
    import pyarrow.parquet as pq

    scores = pq.read_table(root / "cands_scores.parquet").to_pydict()
    return {"root": root, "store": store, "entries": entries, "acme": acme,
            "run": {k: np.asarray(v) for k, v in scores.items()}, "recall_json": json.loads(recall.output)}


def _same(a, b) -> None:
    """Bit-identical float32 scores, NaN where NaN."""
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    assert a.shape == b.shape
    np.testing.assert_array_equal(a.view(np.uint32), b.view(np.uint32))


def test_run_scores_the_third_party_model(ran):
    run = ran["run"]
    assert list(run["ROW"]) == list(range(24))
    ok = np.arange(24) != 1  # row 1 has a NaN VIS pixel: the J+VIS model is withheld there, OU-J still scores
    assert np.isfinite(run["P_ACME_64"][ok]).all() and np.isnan(run["P_ACME_64"][1])
    assert np.isfinite(run["P_OU_J"]).all()
    assert run["P_ACME_64"][ok].std() > 0  # a real score per cutout, not a constant
    assert ((run["P_ACME_64"][ok] >= 0) & (run["P_ACME_64"][ok] <= 1)).all()


def test_evaluate_gives_exactly_runs_scores(ran):
    from lensengine.training.evaluate import ModelSource, score_store

    source = ModelSource(None, ran["acme"].parent, list(ran["entries"]))
    got = score_store([source], ran["store"], batch_size=5)
    run = ran["run"]
    keep = np.isin(run["TRUTH_LABEL"], (0, 1))
    assert got.labels.size == keep.sum() == 24
    _same(got.scores["ACME-64"], run["P_ACME_64"][keep])
    _same(got.scores["OU-J"], run["P_OU_J"][keep])
    np.testing.assert_array_equal(got.labels, run["TRUTH_LABEL"][keep])
    np.testing.assert_array_equal(got.truth["theta_e"], run["TRUTH_THETA_E"][keep])


def test_recall_test_gives_exactly_runs_scores(ran):
    from lensengine.plugins import _recall_score as S
    from lensengine.plugins import _recall_tables as T

    got = S.score_store(ran["store"], ran["entries"], batch_size=5)
    run = ran["run"]
    np.testing.assert_array_equal(got.object_id, run["OBJECT_ID"])
    _same(got.scores["ACME-64"], run["P_ACME_64"])
    _same(got.scores["OU-J"], run["P_OU_J"])
    # the recall-test command (its own batch size) reports the recall of run's scores on the same store
    lenses = run["TRUTH_LABEL"] == 1
    for name, column in (("ACME-64", "P_ACME_64"), ("OU-J", "P_OU_J")):
        assert ran["recall_json"]["compound-arcs"][name] == pytest.approx(T.recall(run[column], lenses))


def test_evaluate_command_scores_a_third_party_model_directory(ran, tmp_path):
    """`lensengine evaluate --models DIR` with the 64-px two-band model alone (no plugin needed)."""
    from lensengine.engine.cli import _register_plugin_commands, cli

    models = tmp_path / "acme"
    models.mkdir()
    shutil.copy(ran["acme"], models / "ACME_64.onnx")
    _register_plugin_commands()
    result = CliRunner().invoke(cli, ["evaluate", "--models", str(models), "--data", str(ran["store"]), "--json"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.output)["ACME-64"]
    assert metrics["n"] == 23  # 24 labelled cutouts, one the model cannot score (NaN VIS)


def test_row_schema_follows_the_models_and_the_ensemble(tmp_path):
    from lensengine.engine.models import load_entry
    from lensengine.engine.scoring import row_schema

    a = load_entry(onnx_model(tmp_path / "a.onnx", "ACME-64", ("J", "VIS"), 64))
    b = load_entry(onnx_model(tmp_path / "b.onnx", "OU-J", ("J",), 66))
    schema = row_schema([a, b], None, {"label": "int8", "kind": "str"})
    assert schema.names == ["OBJECT_ID", "TILE", "CHUNK", "ROW", "RA", "DEC", "P_ACME_64", "P_OU_J", "P_ENSEMBLE",
                            "FLAGS", "FLAG_TEXT", "ERROR", "TRUTH_LABEL", "TRUTH_KIND"]
    assert [str(schema.field(n).type) for n in ("P_ACME_64", "FLAGS", "TRUTH_LABEL", "TRUTH_KIND")] == \
        ["float", "uint32", "int8", "string"]
    with_tsne = row_schema([a, b], "ou_tsne.npz", {})
    assert with_tsne.names[8:14] == ["P_ENSEMBLE", "P_OU_TSNE", "TSNE_CELL", "TSNE_X", "TSNE_Y", "FLAGS"]
    c = load_entry(onnx_model(tmp_path / "c.onnx", "OU J", ("J",), 66))  # maps to P_OU_J as well
    with pytest.raises(ValueError, match="P_OU_J"):
        row_schema([b, c], None, {})


def test_resampling_to_any_stamp():
    """Shipped 66/200 matrices unchanged; other stamps: exact area means (shrinking), bilinear (enlarging)."""
    from importlib import resources

    from lensengine.engine.preprocess import resize_matrix

    for n_in, n_out in ((200, 66), (66, 200)):
        with resources.files("lensengine.engine").joinpath("data", f"resize_{n_in}_{n_out}.npy").open("rb") as fh:
            np.testing.assert_array_equal(resize_matrix(n_in, n_out), np.load(fh))
    area = resize_matrix(200, 50)  # each output pixel is the mean of a 4-pixel run
    np.testing.assert_allclose(area, np.kron(np.eye(50), np.full((1, 4), 0.25)), atol=1e-15)
    uneven = resize_matrix(66, 64)
    np.testing.assert_allclose(uneven.sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(uneven.sum(axis=0), 64 / 66, atol=1e-12)  # every input pixel counts by its area
    up = resize_matrix(66, 100)
    np.testing.assert_allclose(up.sum(axis=1), 1.0, atol=1e-12)
    assert (up >= 0).all() and ((up > 0).sum(axis=1) <= 2).all()  # bilinear: two neighbours at most
    skimage = pytest.importorskip("skimage.transform")
    np.testing.assert_allclose(up, skimage.resize(np.eye(66), (100, 66)), atol=1e-12)


# --- layers ---------------------------------------------------------------------------------

def _imports(path: Path) -> set[str]:
    """Every lensengine module a file imports (at any depth of the file: lazy imports count too)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lensengine"):
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("lensengine"))
    return out


def test_imports_only_go_down():
    problems = []
    for path in sorted((REPO / "catalogs").glob("*.py")):
        problems += [f"catalogs/{path.name} imports {m}" for m in _imports(path)
                     if m.startswith(("lensengine.engine", "lensengine.plugins", "lensengine.training"))]
    for path in sorted((REPO / "engine").glob("*.py")):
        for m in _imports(path):
            private_plugin = m.startswith("lensengine.plugins.") and m.split(".")[2].startswith("_")
            if m.startswith("lensengine.training") or private_plugin:
                problems.append(f"engine/{path.name} imports {m}")
    assert not problems, problems


def test_no_import_circle_between_engine_modules():
    """engine/cli.py, commands.py and run_cli.py (and every other engine module) import in no circle."""
    graph = {p.stem: {m.split(".")[2] for m in _imports(p) if m.startswith("lensengine.engine.")}
             for p in (REPO / "engine").glob("*.py")}
    graph = {k: {v for v in deps if v in graph and v != k} for k, deps in graph.items()}
    seen, stack, cycles = set(), [], []

    def visit(node):
        if node in stack:
            cycles.append(stack[stack.index(node):] + [node])
            return
        if node in seen:
            return
        seen.add(node)
        stack.append(node)
        for dep in sorted(graph[node]):
            visit(dep)
        stack.pop()

    for node in sorted(graph):
        visit(node)
    assert not cycles, cycles
