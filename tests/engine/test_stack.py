"""The stacked ensemble (engine/stack.py): its formula against hand-computed values, a fit that recovers known
weights, the mean stand-in for incomplete rows, how a run finds it, and `lensengine stack fit` + `lensengine
run --ensemble ou_stack.json` end to end (P_ENSEMBLE is the stack of the row's seven scores)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from lensengine.catalogs.flags import Flag
from lensengine.engine.cli import _register_plugin_commands, cli
from lensengine.engine.ensemble import MeanEnsemble, StackEnsemble, load_ensemble
from lensengine.engine.specs import MODEL_NAMES
from lensengine.engine.stack import STACK_FILE, Stack

from .conftest import make_store  # noqa: F401  (importlib mode: package-relative import)

COEF = np.array([0.2, 0.1, 0.1, -0.1, -0.1, 0.8, 0.15])


def _stack_file(path: Path, coef=COEF, intercept=0.5, models=MODEL_NAMES) -> Path:
    return Stack(tuple(models), np.asarray(coef, float), intercept).save(path)


def test_score_is_the_logistic_of_the_weighted_log_odds_by_hand():
    stack = Stack(MODEL_NAMES, COEF, 0.5)
    row = [0.9, 0.5, 0.2, 0.7, 0.1, 0.99, 0.6]
    z = 0.5 + sum(w * math.log(p / (1 - p)) for w, p in zip(COEF, row))
    assert stack.decision(np.array([row]))[0] == pytest.approx(z, rel=1e-12)
    assert stack.predict(np.array([row]))[0] == pytest.approx(1 / (1 + math.exp(-z)), rel=1e-12)
    # saturated networks add a bounded log-odds: P is clipped to [1e-6, 1 - 1e-6]
    edge = [0.0, 1.0, 0.5, 0.5, 0.5, 1.0, 0.0]
    clip = math.log((1 - 1e-6) / 1e-6)
    z_edge = 0.5 + COEF[0] * -clip + COEF[1] * clip + COEF[5] * clip + COEF[6] * -clip
    assert stack.decision(np.array([edge]))[0] == pytest.approx(z_edge, rel=1e-9)
    with pytest.raises(ValueError, match="7 scores per row"):
        stack.decision(np.zeros((2, 6)))


def test_fit_recovers_known_weights():
    rng = np.random.default_rng(20)
    P = rng.uniform(0.02, 0.98, size=(40_000, 7))
    z = -0.3 + np.log(P / (1 - P)) @ COEF
    y = (rng.uniform(size=len(P)) < 1 / (1 + np.exp(-z))).astype(int)
    stack = Stack.fit(P, y, MODEL_NAMES, C=100.0)
    assert np.allclose(stack.coef, COEF, atol=0.05) and stack.intercept == pytest.approx(-0.3, abs=0.05)
    assert stack.meta["n_fit"] == len(P) and stack.meta["n_lenses"] == int(y.sum())
    with pytest.raises(ValueError, match="both 0"):
        Stack.fit(P[:10], np.ones(10), MODEL_NAMES)
    with pytest.raises(ValueError, match="finite"):
        Stack.fit(np.full((4, 7), np.nan), [0, 1, 0, 1], MODEL_NAMES)


def test_balance_makes_the_weights_independent_of_the_lens_fraction():
    """Three times the negatives: the balanced fit keeps its weights and intercept, the plain fit moves its
    intercept by about log(3)."""
    rng = np.random.default_rng(21)
    P = rng.uniform(0.02, 0.98, size=(6_000, 7))
    z = -0.3 + np.log(P / (1 - P)) @ COEF
    y = (rng.uniform(size=len(P)) < 1 / (1 + np.exp(-z))).astype(int)
    more = np.r_[P, np.repeat(P[y == 0], 2, axis=0)], np.r_[y, np.zeros(2 * int((y == 0).sum()), int)]
    once, thrice = Stack.fit(P, y, MODEL_NAMES, C=1e4, balance=True), Stack.fit(*more, MODEL_NAMES, C=1e4, balance=True)
    assert np.allclose(once.coef, thrice.coef, atol=1e-3) and once.intercept == pytest.approx(thrice.intercept, abs=1e-3)
    assert once.meta["balanced"] is True
    plain, plain3 = Stack.fit(P, y, MODEL_NAMES, C=1e4), Stack.fit(*more, MODEL_NAMES, C=1e4)
    assert plain.intercept - plain3.intercept == pytest.approx(np.log(3), abs=0.05)
    assert plain.meta["balanced"] is False


def test_fit_command_pools_tables(tmp_path, seven_models):
    """Two --scores tables (lenses and non-lenses apart) fit exactly what their concatenation fits; both are
    named in the file."""
    rng = np.random.default_rng(6)
    P = rng.uniform(0.01, 0.99, size=(600, 7))
    y = (np.log(P[:, 4] / (1 - P[:, 4])) + rng.normal(0, 1, 600) > 1).astype(np.int8)
    paths = []
    for name, sel in (("lenses", y == 1), ("negatives", y == 0)):
        paths.append(tmp_path / f"{name}.parquet")
        pq.write_table(pa.table({**{"P_" + m.replace("-", "_"): P[sel, i] for i, m in enumerate(MODEL_NAMES)},
                                 "TRUTH_LABEL": y[sel]}), paths[-1])
    _register_plugin_commands()
    out = tmp_path / "pooled.json"
    args = ["stack", "fit", "--scores", str(paths[0]), "--scores", str(paths[1]), "--models", str(seven_models)]
    res = CliRunner().invoke(cli, [*args, "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["objects"] == 600 and json.loads(res.output)["lenses"] == int(y.sum())
    fitted = Stack.load(out)
    order = np.r_[np.flatnonzero(y == 1), np.flatnonzero(y == 0)]
    assert np.allclose(fitted.coef, Stack.fit(P[order], y[order], MODEL_NAMES, balance=True).coef)
    assert fitted.meta["fitted_on"] == [str(p) for p in paths]
    assert fitted.coef[4] == max(fitted.coef)
    res = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "plain.json"), "--no-balance"])
    assert res.exit_code == 0, res.output
    assert Stack.load(tmp_path / "plain.json").meta["balanced"] is False
    res = CliRunner().invoke(cli, ["stack", "fit", "--scores", str(paths[1]), "--models", str(seven_models),
                                   "--out", str(tmp_path / "x.json")])
    assert res.exit_code == 2 and "negatives.parquet" in res.output and "both 0" in res.output


def test_file_round_trip_and_refusals(tmp_path):
    path = _stack_file(tmp_path / "s.json")
    back = Stack.load(path)
    assert back.models == MODEL_NAMES and np.array_equal(back.coef, COEF) and back.intercept == 0.5
    (tmp_path / "bad.json").write_text(json.dumps({"kind": "something else", "models": [], "coef": [],
                                                    "intercept": 0}))
    with pytest.raises(ValueError, match="not a stacked-ensemble file"):
        Stack.load(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="not a stacked-ensemble file"):
        Stack.load(tmp_path / "missing.json")
    with pytest.raises(ValueError, match="fitted for models"):
        StackEnsemble(_stack_file(tmp_path / "three.json", COEF[:3], 0.0, MODEL_NAMES[:3]))


def test_incomplete_rows_get_the_mean_and_are_flagged(tmp_path):
    ens = StackEnsemble(_stack_file(tmp_path / "s.json"))
    probs = np.array([[0.9, 0.5, 0.2, 0.7, 0.1, 0.99, 0.6],
                      [0.9, 0.5, 0.2, 0.7, 0.1, np.nan, 0.6],
                      [np.nan] * 7], np.float32)
    score, extra, flags = ens.score(probs)
    assert extra == {} and score.dtype == np.float32
    assert score[0] == pytest.approx(Stack(MODEL_NAMES, COEF, 0.5).predict(probs[:1].astype(float))[0], rel=1e-6)
    assert score[1] == pytest.approx(np.nanmean(probs[1]), rel=1e-6)
    assert flags[1] & Flag.PARTIAL_SCORES and not flags[0] & Flag.PARTIAL_SCORES
    assert np.isnan(score[2])


def test_a_run_finds_the_stack_beside_the_models_unless_told_otherwise(tmp_path, caplog):
    _stack_file(tmp_path / STACK_FILE)
    assert isinstance(load_ensemble(list(MODEL_NAMES), tmp_path), StackEnsemble)
    assert isinstance(load_ensemble(list(MODEL_NAMES), tmp_path, "mean"), MeanEnsemble)
    assert isinstance(load_ensemble(list(MODEL_NAMES), None, tmp_path / STACK_FILE), StackEnsemble)
    assert isinstance(load_ensemble(list(MODEL_NAMES[:3]), tmp_path), MeanEnsemble)  # not all seven: the mean
    assert "needs the seven models" in caplog.text
    assert isinstance(load_ensemble(list(MODEL_NAMES), tmp_path / "elsewhere"), MeanEnsemble)


def test_fit_command_then_run_with_the_stack(tmp_path, seven_models):
    """`stack fit` on a labelled table, then a real run whose P_ENSEMBLE is that stack of its seven P columns."""
    rng = np.random.default_rng(5)
    P = rng.uniform(0.01, 0.99, size=(400, 7))
    y = (np.log(P[:, 5] / (1 - P[:, 5])) + rng.normal(0, 1, 400) > 0).astype(np.int8)
    table = pa.table({**{"P_" + m.replace("-", "_"): P[:, i] for i, m in enumerate(MODEL_NAMES)},
                      "TRUTH_LABEL": y})
    pq.write_table(table, tmp_path / "val_scores.parquet")
    out = tmp_path / "ou_stack.json"
    _register_plugin_commands()
    res = CliRunner().invoke(cli, ["stack", "fit", "--scores", str(tmp_path / "val_scores.parquet"), "--out",
                                   str(out), "--models", str(seven_models), "--json"])
    assert res.exit_code == 0, res.output
    fitted = Stack.load(out)
    assert np.allclose(fitted.coef, Stack.fit(P, y, MODEL_NAMES, balance=True).coef)
    assert fitted.meta["balanced"] is True and fitted.meta["fitted_on"] == str(tmp_path / "val_scores.parquet")
    assert fitted.coef[5] == max(fitted.coef)  # the label was made from OU-VIS
    assert set(fitted.meta["models_sha256"]) == set(MODEL_NAMES)

    store = tmp_path / "s.zarr"
    make_store(store, tiles=("T0",), n_per_tile=24, chunk_size=12, bad=False)
    res = CliRunner().invoke(cli, ["run", "--tiles", str(store), "--models", str(seven_models), "--ensemble",
                                   str(out), "--out", str(tmp_path / "c.fits"), "--workers", "1",
                                   "--no-dashboard", "-q", "--threshold", "0.0"])
    assert res.exit_code == 0, res.output
    rows = pq.read_table(tmp_path / "c_scores.parquet").to_pydict()
    probs = np.column_stack([rows["P_" + m.replace("-", "_")] for m in MODEL_NAMES]).astype(np.float32)
    assert np.isfinite(probs).all()
    expected = fitted.predict(probs.astype(np.float64)).astype(np.float32)
    assert np.allclose(rows["P_ENSEMBLE"], expected, rtol=1e-6, atol=1e-7)
    from astropy.io import fits

    header = fits.getheader(tmp_path / "c.fits", 1)
    assert header["ENSEMBLE"] == "stack" and header["ENSFILE"] == "ou_stack.json"
