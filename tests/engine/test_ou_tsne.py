"""OU-T-SNE: grid fill, fit/predict on known answers, persistence, outside flags, fast path."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone

from lensengine.engine._tsne_synth import synthetic_scores
from lensengine.engine.ou_tsne import OUTSNE, fill_empty_cells

pytest.importorskip("openTSNE")

FAST = dict(n_iter=150, random_state=0)  # a few hundred points fit in ~1 s


def two_clusters(n: int, seed: int):
    """Lenses near P = 0.9 for all seven models, non-lenses near 0.1: an answer known in advance."""
    rng = np.random.default_rng(seed)
    y = (np.arange(n) % 2).astype(np.int8)
    centre = np.where(y[:, None] == 1, 0.9, 0.1)
    return np.clip(centre + rng.normal(0, 0.03, (n, 7)), 0, 1), y


@pytest.fixture(scope="module")
def clusters_model():
    X, y = two_clusters(240, 0)
    return OUTSNE(grid_size=20, **FAST).fit(X, y)


@pytest.fixture(scope="module")
def synth_model():
    X, y = synthetic_scores(400, 0, noise=0.7)
    return OUTSNE(grid_size=25, **FAST).fit(X, y)


# --- the neighbour fill -----------------------------------------------------------

def test_fill_single_empty_cell_is_mean_of_its_eight_neighbours():
    values = np.arange(9, dtype=float).reshape(3, 3)
    defined = np.ones((3, 3), bool)
    defined[1, 1] = False
    filled, passes = fill_empty_cells(values, defined)
    assert filled[1, 1] == pytest.approx((0 + 1 + 2 + 3 + 5 + 6 + 7 + 8) / 8)
    assert passes[1, 1] == 1 and (passes[defined] == 0).all()
    np.testing.assert_array_equal(filled[defined], values[defined])


def test_fill_uses_only_defined_neighbours_and_iterates():
    values = np.zeros((1, 4))
    values[0, 0] = 1.0
    defined = np.array([[True, False, False, False]])
    filled, passes = fill_empty_cells(values, defined)
    np.testing.assert_array_equal(filled, [[1, 1, 1, 1]])
    np.testing.assert_array_equal(passes, [[0, 1, 2, 3]])


def test_fill_is_synchronous_known_answer():
    # corners (0,0)=1 and (2,2)=0 defined; pass 1 fills the cells touching a corner, pass 2 the
    # two far corners from pass-1 values only
    values = np.zeros((3, 3))
    values[0, 0] = 1.0
    defined = np.zeros((3, 3), bool)
    defined[0, 0] = defined[2, 2] = True
    filled, passes = fill_empty_cells(values, defined)
    expected = np.array([[1.0, 1.0, 0.5],
                         [1.0, 0.5, 0.0],
                         [0.5, 0.0, 0.0]])
    np.testing.assert_allclose(filled, expected)
    np.testing.assert_array_equal(passes, [[0, 1, 2], [1, 1, 1], [2, 1, 0]])


def test_fill_with_nothing_defined_uses_fallback():
    filled, passes = fill_empty_cells(np.zeros((2, 2)), np.zeros((2, 2), bool), fallback=0.3)
    np.testing.assert_array_equal(filled, np.full((2, 2), 0.3))
    assert (passes == -1).all()


# --- fit / predict ------------------------------------------------------------------

def test_two_clusters_known_answer(clusters_model):
    Xt, yt = two_clusters(100, 1)
    for exact in (False, True):
        m = clusters_model.set_params(exact_transform=exact)
        s = m.score_lens(Xt)
        assert s.shape == (100,)
        assert (s[yt == 1] > 0.9).all() and (s[yt == 0] < 0.1).all()
        np.testing.assert_array_equal(m.predict(Xt), yt)
        proba = m.predict_proba(Xt)
        assert proba.shape == (100, 2)
        np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    clusters_model.set_params(exact_transform=False)
    assert clusters_model.transform(Xt).shape == (100, 2)


def test_fitted_state_and_grid(clusters_model):
    m = clusters_model
    assert m.grid_.shape == (20, 20) and np.isfinite(m.grid_).all()
    assert ((m.grid_ >= 0) & (m.grid_ <= 1)).all()
    assert m.counts_.sum() == 240 and m.lens_counts_.sum() == 120
    cells = m.defined_
    np.testing.assert_allclose(m.grid_[cells], m.lens_counts_[cells] / m.counts_[cells])
    assert m.prior_ == pytest.approx(0.5)


def test_prior_weight_shrinks_towards_the_lens_fraction(clusters_model):
    m = clone(clusters_model).set_params(prior_weight=2.0)
    m.__dict__.update({k: v for k, v in clusters_model.__dict__.items() if k.endswith("_")})
    m._build_grid()
    d = m.defined_
    np.testing.assert_allclose(m.grid_[d], (m.lens_counts_[d] + 2.0 * m.prior_) / (m.counts_[d] + 2.0))


def test_synthetic_accuracy_both_paths(synth_model):
    Xt, yt = synthetic_scores(300, 1, noise=0.7)
    for exact in (False, True):
        acc = (synth_model.set_params(exact_transform=exact).predict(Xt) == yt).mean()
        assert acc > 0.85, (exact, acc)
    synth_model.set_params(exact_transform=False)


def test_fast_path_agrees_with_exact(synth_model):
    Xt, _ = synthetic_scores(300, 2, noise=0.7)
    fast = synth_model.set_params(exact_transform=False).score_lens(Xt)
    exact = synth_model.set_params(exact_transform=True).score_lens(Xt)
    synth_model.set_params(exact_transform=False)
    assert ((fast >= 0.5) == (exact >= 0.5)).mean() >= 0.95
    assert (np.abs(fast - exact) < 0.25).mean() >= 0.9


def test_deterministic_given_random_state():
    X, y = synthetic_scores(200, 3, noise=0.7)
    a = OUTSNE(grid_size=10, **FAST).fit(X, y)
    b = OUTSNE(grid_size=10, **FAST).fit(X, y)
    np.testing.assert_array_equal(a.embedding_, b.embedding_)
    np.testing.assert_array_equal(a.grid_, b.grid_)


def test_save_load_round_trip(tmp_path, synth_model):
    Xt, _ = synthetic_scores(150, 4, noise=0.7)
    path = synth_model.save(tmp_path / "ou_tsne.npz")
    loaded = OUTSNE.load(path)
    assert loaded.get_params() == synth_model.get_params()
    for exact in (False, True):
        a, oa = synth_model.set_params(exact_transform=exact).score_lens(Xt, return_outside=True)
        b, ob = loaded.set_params(exact_transform=exact).score_lens(Xt, return_outside=True)
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(oa, ob)
    synth_model.set_params(exact_transform=False)
    np.testing.assert_array_equal(loaded.grid_, synth_model.grid_)
    assert not list(tmp_path.glob("*.tmp"))


def test_load_refuses_other_files(tmp_path):
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    with pytest.raises(ValueError, match="not an OU-T-SNE model"):
        OUTSNE.load(tmp_path / "other.npz")


def test_points_outside_the_grid_are_flagged(clusters_model):
    m = clusters_model
    # exact path: coordinates beyond the box are flagged and clipped to the edge cell
    ix, iy, outside = m._cells(np.array([[m.bounds_[1] + 5.0, 0.0], [0.0, 0.0], [m.bounds_[0], m.bounds_[2]]]))
    np.testing.assert_array_equal(outside, [True, False, False])
    assert ix[0] == m.grid_size - 1 and ix[2] == 0 and iy[2] == 0
    # fast path: a score vector far from every training vector is flagged
    far = np.array([[0.5] * 7, [0.9] * 7])
    s, out = m.score_lens(far, return_outside=True)
    np.testing.assert_array_equal(out, [True, False])
    prior = clone(m).set_params(outside="prior")
    prior.__dict__.update({k: v for k, v in m.__dict__.items() if k.endswith("_")})
    assert prior.score_lens(far)[0] == pytest.approx(m.prior_)
    # exact path: a far vector lands somewhere; whatever the mask says, scores stay in [0, 1]
    s, out = m.set_params(exact_transform=True).score_lens(far, return_outside=True)
    m.set_params(exact_transform=False)
    assert out.dtype == bool and ((s >= 0) & (s <= 1)).all()


def test_smoothing_changes_values_not_support():
    X, y = synthetic_scores(200, 5, noise=0.7)
    plain = OUTSNE(grid_size=15, **FAST).fit(X, y)
    smooth = OUTSNE(grid_size=15, smoothing=1.0, **FAST).fit(X, y)
    np.testing.assert_array_equal(plain.defined_, smooth.defined_)
    assert not np.array_equal(plain.grid_, smooth.grid_)
    assert ((smooth.grid_ >= 0) & (smooth.grid_ <= 1)).all()


# --- scikit-learn conventions and input checks -----------------------------------------

def test_sklearn_conventions(clusters_model):
    from sklearn.exceptions import NotFittedError

    params = clusters_model.get_params()
    assert params["grid_size"] == 20 and params["random_state"] == 0
    c = clone(clusters_model)
    assert c.get_params() == params and not hasattr(c, "grid_")
    with pytest.raises(NotFittedError):
        c.predict(np.zeros((2, 7)))
    assert OUTSNE().get_params()["grid_size"] == 100


def test_bad_input_is_refused(clusters_model):
    with pytest.raises(ValueError, match=r"\(n, 7\)"):
        clusters_model.score_lens(np.zeros((3, 6)))
    bad = np.zeros((3, 7))
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        clusters_model.score_lens(bad)
    with pytest.raises(ValueError, match="0 \\(non-lens\\) and 1"):
        OUTSNE().fit(np.zeros((10, 7)), np.full(10, 2))
    with pytest.raises(ValueError, match="outside"):
        OUTSNE(outside="nearest").fit(*two_clusters(20, 0))


def test_missing_scores_give_nan_when_asked(clusters_model):
    Xt, _ = two_clusters(6, 9)
    Xt[2, 4] = np.nan
    s, out = clusters_model.score_lens(Xt, return_outside=True, missing="nan")
    assert np.isnan(s[2]) and not out[2]
    keep = np.arange(6) != 2
    np.testing.assert_array_equal(s[keep], clusters_model.score_lens(Xt[keep]))
    assert (clusters_model.locate(Xt, missing="nan").cells[2] == -1).all()


def test_pickle_is_small_and_works(clusters_model):
    import pickle

    Xt, _ = two_clusters(20, 7)
    clusters_model.set_params(exact_transform=True).score_lens(Xt)  # builds the openTSNE index
    clusters_model.set_params(exact_transform=False)
    blob = pickle.dumps(clusters_model)
    again = pickle.loads(blob)
    np.testing.assert_array_equal(again.score_lens(Xt), clusters_model.score_lens(Xt))
    assert "_tsne" not in again.__dict__


def test_plot_writes_png(tmp_path, clusters_model):
    pytest.importorskip("matplotlib")
    out = clusters_model.plot(tmp_path / "fig.png", title="test")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- command line (the built-in plugin) --------------------------------------------------

def test_cli_fit_plot_inspect(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq
    from click.testing import CliRunner

    from lensengine.plugins.tsne import score_columns, tsne_group

    X, y = two_clusters(200, 8)
    X[3, 2] = np.nan
    cols = {c: X[:, j].astype(np.float32) for j, c in enumerate(score_columns())}
    cols.update(OBJECT_ID=np.arange(200, dtype=np.int64), TRUTH_LABEL=y)
    pq.write_table(pa.table(cols), tmp_path / "scores.parquet")
    runner = CliRunner()
    res = runner.invoke(tsne_group, ["fit", "--scores", str(tmp_path / "scores.parquet"), "--out",
                                     str(tmp_path / "m.npz"), "--grid-size", "12", "--perplexity", "20"])
    assert res.exit_code == 0, res.output
    assert "skipping 1 of 200 rows" in res.output and (tmp_path / "m.npz").is_file()
    model = OUTSNE.load(tmp_path / "m.npz")
    assert model.grid_size == 12 and model.counts_.sum() == 199
    x0, x1, y0, y1 = model.bounds_
    res = runner.invoke(tsne_group, ["inspect", str(tmp_path / "m.npz"), "--scores", str(tmp_path / "scores.parquet"),
                                     "--region", f"{x0},{x1},{y0},{y1}", "--limit", "5",
                                     "--csv", str(tmp_path / "r.csv")])
    assert res.exit_code == 0, res.output
    assert "199 of 199 objects" in res.output and "OBJECT_ID" in res.output
    assert len((tmp_path / "r.csv").read_text().splitlines()) == 200
    res = runner.invoke(tsne_group, ["inspect", str(tmp_path / "m.npz"), "--scores", str(tmp_path / "scores.parquet"),
                                     "--region", "1,0,0,1"])
    assert res.exit_code == 2
    if pytest.importorskip("matplotlib"):
        res = runner.invoke(tsne_group, ["plot", str(tmp_path / "m.npz"), "--out", str(tmp_path / "f.png")])
        assert res.exit_code == 0, res.output


def test_cli_refuses_table_without_scores(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq
    from click.testing import CliRunner

    from lensengine.plugins.tsne import tsne_group

    pq.write_table(pa.table({"P_OU_J": np.zeros(3)}), tmp_path / "s.parquet")
    res = CliRunner().invoke(tsne_group, ["fit", "--scores", str(tmp_path / "s.parquet"), "--out",
                                          str(tmp_path / "m.npz")])
    assert res.exit_code == 2 and "lacks column(s)" in res.output
