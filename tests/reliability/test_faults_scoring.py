"""Issue 12's fault matrix, the scoring rows: #1, #10, #11, #12, #13, #23, #24.

Each test states the fault it covers; each failed on b9282e6 (the reason is in
its docstring) and passes now.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pluggy
import pytest

from lensengine.catalogs.flags import BAD_MASK, Flag

from ._models import TRUTH, corrupt_chunk, fit_ensemble, make_store, onnx_model, seven_models

pytest.importorskip("onnx")


def _task(store: Path, index: int, models, ensemble=None, batch_size: int = 4):
    from lensengine.engine.scoring import ChunkTask

    return ChunkTask(str(store.resolve()), "T0", index, 8 * index, 8 * index + 8, tuple(models), "cpu", 1,
                     batch_size, ensemble)


@pytest.fixture(scope="module")
def seven(tmp_path_factory):
    from lensengine.engine.registry import resolve_models

    directory = seven_models(tmp_path_factory.mktemp("seven"))
    return resolve_models(directory), fit_ensemble(directory / "ou_tsne.npz")


# --- #1 ------------------------------------------------------------------------------------

def test_fault_01_unreadable_chunk_rows_carry_every_column(tmp_path, seven):
    """#1: with OU-T-SNE, an unreadable chunk's rows lacked P_OU_TSNE/TSNE_* and the merge failed.

    b9282e6 has no row schema and built unreadable rows without the ensemble's columns.
    """
    import pyarrow as pa

    from lensengine.engine.scoring import score_chunk

    models, ensemble = seven
    store = make_store(tmp_path / "s.zarr")
    corrupt_chunk(store, "T0", 1)
    good = score_chunk(_task(store, 0, models, str(ensemble)))
    bad = score_chunk(_task(store, 1, models, str(ensemble)))
    assert set(bad) == set(good)
    expected = (["OBJECT_ID", "TILE", "CHUNK", "ROW", "RA", "DEC"] + [f"P_{m.name.replace('-', '_')}" for m in models]
                + ["P_ENSEMBLE", "P_OU_TSNE", "TSNE_CELL", "TSNE_X", "TSNE_Y", "FLAGS", "FLAG_TEXT", "ERROR",
                   "TRUTH_LABEL", "TRUTH_THETA_E", "TRUTH_KIND"])
    assert list(good) == list(bad) == expected
    from lensengine.engine.scoring import row_schema

    schema = row_schema(models, str(ensemble), TRUTH)
    assert schema.names == expected
    assert (bad["FLAGS"] == np.uint32(Flag.UNREADABLE)).all() and all("chunk 1" in e for e in bad["ERROR"])
    assert np.isnan(bad["P_OU_TSNE"]).all() and (bad["TSNE_CELL"] == -1).all()
    assert np.isfinite(good["P_OU_TSNE"][[0, 2]]).all()
    # both chunks' rows go into one table with the schema fixed up front (what the score-table writer does)
    table = pa.concat_tables([pa.table({k: (v.tolist() if v.dtype == object else v) for k, v in rows.items()},
                                       schema=schema) for rows in (good, bad)])
    assert table.num_rows == 16 and table.schema == schema


# --- #10 -----------------------------------------------------------------------------------

def test_fault_10_extreme_finite_pixels_are_scaled_not_flagged(rng):
    """#10: ±3e38 pixels were flagged CONSTANT_BAND (float32 span overflow); float64 1e300 became inf, NONFINITE."""
    from lensengine.engine.preprocess import Preprocessor
    from lensengine.engine.specs import MODEL_SPECS

    specs = [MODEL_SPECS["OU-66"], MODEL_SPECS["OU-200"]]
    prep = Preprocessor(specs)
    vis = rng.normal(size=(2, 200, 200)).astype(np.float32)
    nisp = {b: rng.normal(size=(2, 66, 66)).astype(np.float32) for b in "YJH"}
    reference = prep({"VIS": vis, **nisp})
    extreme = {"VIS": np.where(vis > 0, np.float32(3e38), np.float32(-3e38)),
               **{b: v.astype(np.float64) * 1e300 for b, v in nisp.items()}}
    got = prep(extreme)
    assert got.flags.tolist() == [0, 0]
    for spec in specs:
        assert got.usable[spec.name].all()
        x = got.inputs[spec.name]
        assert np.isfinite(x).all() and x.min() == 0.0 and x.max() == 1.0
    # min-max is blind to scale: 1e300 * NISP gives the NISP input of the plain data
    np.testing.assert_allclose(got.inputs["OU-66"][:, :3], reference.inputs["OU-66"][:, :3], atol=1e-6)
    # the ±3e38 VIS band keeps its two-valued pattern instead of collapsing to a constant
    sign = (vis > 0)
    np.testing.assert_array_equal(got.inputs["OU-200"][:, 3] > 0.5, sign)


# --- #11 -----------------------------------------------------------------------------------

def test_fault_11_nan_or_out_of_range_outputs_are_flagged_never_scores(tmp_path):
    """#11: a model answering NaN gave a NaN ensemble with FLAGS 0; one answering 5.0 was taken as a probability."""
    from lensengine.engine.models import load_entry
    from lensengine.engine.scoring import score_chunk

    store = make_store(tmp_path / "s.zarr")
    nan_model = load_entry(onnx_model(tmp_path / "m" / "nan.onnx", "NAN-J", ("J",), 66, scale=float("nan")))
    five_model = load_entry(onnx_model(tmp_path / "m" / "five.onnx", "FIVE-Y", ("Y",), 66, offset=5.0))
    good_model = load_entry(onnx_model(tmp_path / "m" / "ok.onnx", "OK-H", ("H",), 66))

    alone = score_chunk(_task(store, 0, [nan_model]))
    assert np.isnan(alone["P_NAN_J"]).all() and np.isnan(alone["P_ENSEMBLE"]).all()
    assert ((alone["FLAGS"] & np.uint32(BAD_MASK)) != 0).all()  # no silent NaN
    assert ((alone["FLAGS"] & np.uint32(Flag.BAD_MODEL_OUTPUT)) != 0).all()
    assert all("BAD_MODEL_OUTPUT" in t for t in alone["FLAG_TEXT"])

    rows = score_chunk(_task(store, 0, [nan_model, five_model, good_model]))
    assert np.isnan(rows["P_FIVE_Y"]).all()  # 5.0 is not a probability: withheld
    assert np.isfinite(rows["P_OK_H"]).all()
    np.testing.assert_array_equal(rows["P_ENSEMBLE"], rows["P_OK_H"])  # the ensemble uses the good model only
    assert ((rows["FLAGS"] & np.uint32(Flag.BAD_MODEL_OUTPUT | Flag.PARTIAL_SCORES)) ==
            np.uint32(Flag.BAD_MODEL_OUTPUT | Flag.PARTIAL_SCORES)).all()
    for r in (alone, rows):
        silent = ~np.isfinite(r["P_ENSEMBLE"]) & ((r["FLAGS"] & np.uint32(BAD_MASK)) == 0)
        assert not silent.any()
        for key in r:
            if key.startswith("P_"):
                values = r[key][np.isfinite(r[key])]
                assert ((values >= 0) & (values <= 1)).all(), key


# --- #12 -----------------------------------------------------------------------------------

@pytest.mark.parametrize("meta,what", [({"bands": "J,Y"}, "lensengine.bands"), ({"stamp": "abc"}, "lensengine.stamp"),
                                       ({"bands": '["J", "Q"]'}, "lensengine.bands")])
def test_fault_12_bad_metadata_error_names_the_file(tmp_path, meta, what):
    """#12: metadata bands not JSON or stamp "abc" raised a bare JSON/int error that did not name the file."""
    from lensengine.engine.models import ContractError, load_entry

    path = onnx_model(tmp_path / "bad.onnx", "BAD", ("J",), 66, meta=meta)
    with pytest.raises(ContractError, match=re.escape(str(path))) as err:
        load_entry(path)
    assert what in str(err.value)


# --- #13 -----------------------------------------------------------------------------------

def test_fault_13a_fixed_batch_axis_refused_at_load(tmp_path):
    """#13: a fixed batch axis passed planning and failed on the workers (ORT INVALID_ARGUMENT)."""
    from lensengine.engine.models import ContractError, load_entry
    from lensengine.engine.registry import resolve_models

    path = onnx_model(tmp_path / "m" / "fixed.onnx", "FIXED", ("J",), 66, batch=1)
    with pytest.raises(ContractError, match=re.escape(str(path)) + ".*batch axis must be dynamic"):
        load_entry(path)
    with pytest.raises(ContractError, match="batch axis"):  # the command's model resolution refuses it too
        resolve_models(tmp_path / "m")


@pytest.mark.parametrize("stamp,architecture", [(66, "Acme-Net"), (64, ""), (48, "OU-200")])
def test_fault_13b_any_architecture_and_stamp_score(tmp_path, stamp, architecture):
    """#13: an unknown architecture (KeyError) or a stamp other than 66/200 (StopIteration) failed on the workers.

    The stamp now comes from the model itself; even a misleading architecture name does not override it.
    """
    from lensengine.engine.models import load_entry
    from lensengine.engine.scoring import score_chunk

    store = make_store(tmp_path / "s.zarr")
    entry = load_entry(onnx_model(tmp_path / "m.onnx", "ACME", ("J", "VIS"), stamp, architecture=architecture))
    assert entry.as_spec().stamp == stamp
    rows = score_chunk(_task(store, 0, [entry]))
    ok = np.arange(8) != 1  # row 1 has a NaN VIS pixel
    assert np.isfinite(rows["P_ACME"][ok]).all() and np.isnan(rows["P_ACME"][1])
    assert rows["FLAGS"][1] & Flag.NONFINITE and (rows["FLAGS"][ok] == 0).all()


# --- #23 -----------------------------------------------------------------------------------

class _SessionSpy:
    def __init__(self):
        self.names = []

    @pluggy.HookimplMarker("lensengine")
    def prepare_session(self, model_name, providers):
        self.names.append(model_name)


def test_fault_23_prepare_session_sees_the_model_name(tmp_path):
    """#23: the first session (built by the run's provider query, without a name) was cached and reused,
    so the prepare_session hook never saw the model's name."""
    from lensengine.engine.sessions import clear_sessions, get_session, session_provider
    from lensengine.plugins.manager import get_plugin_manager

    spy = _SessionSpy()
    path = str(onnx_model(tmp_path / "m.onnx", "SPY-J", ("J",), 66))
    pm = get_plugin_manager()
    pm.register(spy, name="session-spy")
    try:
        clear_sessions()
        get_session(path, "cpu", 1)  # a caller that does not name the model
        get_session(path, "cpu", 1, "SPY-J")
        assert spy.names == ["", "SPY-J"]
        assert session_provider(path, "cpu", 1, "SPY-J") == "CPUExecutionProvider"  # the run's provider query
        assert spy.names == ["", "SPY-J"]  # ... reuses the named session
    finally:
        pm.unregister(name="session-spy")
        clear_sessions()


# --- #24 -----------------------------------------------------------------------------------

def test_fault_24_register_reports_is_called(tmp_path):
    """#24: register_reports was documented but nothing called it; `lensengine report` runs the reports now."""
    from click.testing import CliRunner

    from lensengine.engine.cli import _register_plugin_commands, cli
    from lensengine.plugins.manager import get_plugin_manager

    calls = []

    def count_rows(scores_path, out_dir):
        calls.append((Path(scores_path), Path(out_dir)))
        out = Path(out_dir) / "count.txt"
        out.write_text("3\n")
        return [out]

    class Reports:
        @pluggy.HookimplMarker("lensengine")
        def register_reports(self):
            return {"count": count_rows}

    scores = tmp_path / "scores.parquet"
    scores.write_bytes(b"not read by this report")
    pm = get_plugin_manager()
    pm.register(Reports(), name="report-spy")
    try:
        _register_plugin_commands()
        result = CliRunner().invoke(cli, ["report", str(scores), "--out", str(tmp_path / "rep")])
        unknown = CliRunner().invoke(cli, ["report", str(scores), "--out", str(tmp_path / "rep"), "--name", "nope"])
    finally:
        pm.unregister(name="report-spy")
    assert result.exit_code == 0, result.output
    assert calls == [(scores, tmp_path / "rep")]
    assert (tmp_path / "rep" / "count.txt").read_text() == "3\n" and "count:" in result.output
    assert unknown.exit_code == 2 and "nope" in unknown.output
