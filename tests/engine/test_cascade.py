"""`lensengine run --cascade`: every cutout kept, the full run's scores wherever both score, skipped rows flagged,
the ensemble never fed a missing score, and the gate (bound or validated) chosen as documented."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from lensengine.catalogs.flags import Flag
from lensengine.engine.cascade import Cascade, mean_bound, plan_cascade, validated_gate
from lensengine.engine.ensemble import MeanEnsemble
from lensengine.engine.models import discover_models
from lensengine.engine.scoring import ChunkTask, score_batch, score_chunk, make_runner

from .conftest import make_store  # noqa: F401  (importlib mode: package-relative import)

CHEAP, EXPENSIVE = ("OU-J", "OU-JYH"), ("OU-VIS",)


@pytest.fixture(scope="module")
def small_store(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cascade") / "s.zarr"
    make_store(path, tiles=("T0",), n_per_tile=32, chunk_size=32)  # rows 1-3 are bad cutouts (see make_store)
    return path


def _task(store, models, cascade=None, batch_size=8):
    return ChunkTask(str(store), "T0", 0, 0, 32, tuple(models), "cpu", 1, batch_size, None, "fp32", cascade)


def _median_gate(full) -> Cascade:
    cheap = np.column_stack([full[f"P_{n.replace('-', '_')}"] for n in CHEAP]).astype(np.float64)
    mean = cheap.mean(axis=1)
    return Cascade(CHEAP, EXPENSIVE, float(np.nanmedian(mean)), "validated", 0.5)


def test_cascade_keeps_every_row_and_the_full_scores_where_both_score(small_store, tiny_models):
    models = discover_models(tiny_models)
    full = score_chunk(_task(small_store, models))
    cascade = _median_gate(full)
    part = score_chunk(_task(small_store, models, cascade))

    # no cutout dropped: the same rows, IDs and columns
    assert list(part) == list(full)
    np.testing.assert_array_equal(part["ROW"], full["ROW"])
    np.testing.assert_array_equal(part["OBJECT_ID"], full["OBJECT_ID"])
    skipped = (part["FLAGS"] & np.uint32(Flag.CASCADE_SKIPPED)) != 0
    assert 5 <= skipped.sum() <= 27  # the median gate skips about half
    # the cheap networks score every cutout exactly as the full run does
    for name in ("P_OU_J", "P_OU_JYH"):
        np.testing.assert_array_equal(part[name], full[name])
    # rows sent on: every score, the ensemble and the flags are the full run's, to the bit
    on = ~skipped
    for name in ("P_OU_VIS", "P_ENSEMBLE"):
        np.testing.assert_array_equal(part[name][on], full[name][on])
    np.testing.assert_array_equal(part["FLAGS"][on], full["FLAGS"][on])
    # skipped rows: the expensive score and the ensemble unknown, never a partial mean; flag text says why
    assert np.isnan(part["P_OU_VIS"][skipped]).all() and np.isnan(part["P_ENSEMBLE"][skipped]).all()
    assert not (part["FLAGS"][skipped] & np.uint32(Flag.PARTIAL_SCORES)).any()
    assert all("CASCADE_SKIPPED" in t for t in part["FLAG_TEXT"][skipped])
    # a cutout whose cheap scores are incomplete (constant J in row 2) always goes on
    assert not skipped[2] and np.isfinite(part["P_OU_VIS"][2])


def test_ensemble_is_never_fed_a_skipped_row(small_store, tiny_models):
    from lensengine.catalogs.store import SurveyStore

    from lensengine.engine.ensemble import Column

    class Recording:
        """An ensemble with a declared column that records what it is asked to score."""

        name = "recording"
        columns = (Column("X_SEEN", "int32"),)

        def __init__(self):
            self.seen = []

        def score(self, probs):
            self.seen.append(probs.copy())
            return probs.max(axis=1), {"X_SEEN": np.arange(len(probs))}, np.zeros(len(probs), np.uint32)

    models = discover_models(tiny_models)
    batch = SurveyStore.open(small_store).read("T0", 0, 32)
    runners = {m.name: make_runner(m, "fp32", "cpu", 1) for m in models}
    ens = Recording()
    base = score_batch(batch, models, None, runners=runners, batch_size=8)
    mean = np.column_stack([base["P_OU_J"], base["P_OU_JYH"]]).astype(np.float64).mean(axis=1)
    gate = Cascade(CHEAP, EXPENSIVE, float(np.nanquantile(mean, 0.7)), "validated", 0.5)
    out = score_batch(batch, models, ens, runners=runners, batch_size=8, cascade=gate)
    skipped = (out["FLAGS"] & np.uint32(Flag.CASCADE_SKIPPED)) != 0
    seen = np.concatenate(ens.seen)
    assert len(seen) == (~skipped).sum() and skipped.any()
    # OU-VIS is column 2: every row the ensemble saw had it scored unless its band was bad
    vis_bad = (out["FLAGS"] & np.uint32(Flag.NONFINITE)) != 0
    assert np.isfinite(seen[:, 2]).sum() == (~skipped & ~vis_bad).sum()
    # the declared column is blank (-1) on skipped rows, filled elsewhere
    assert (out["X_SEEN"][skipped] == -1).all() and (out["X_SEEN"][~skipped] >= 0).all()


def test_prefetch_changes_nothing(small_store, tiny_models):
    from lensengine.catalogs.store import SurveyStore

    models = discover_models(tiny_models)
    batch = SurveyStore.open(small_store).read("T0", 0, 32)
    runners = {m.name: make_runner(m, "fp32", "cpu", 1) for m in models}
    a = score_batch(batch, models, MeanEnsemble(), runners=runners, batch_size=8, prefetch=True)
    b = score_batch(batch, models, MeanEnsemble(), runners=runners, batch_size=8, prefetch=False)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])


def test_mean_bound_loses_no_candidate():
    rng = np.random.default_rng(3)
    # scores piled near the gate and the extremes, where rounding could bite
    p = np.concatenate([rng.uniform(0, 1, (20000, 7)), rng.choice([0.0, 1.0, 0.5, 0.3], (5000, 7))]).astype(np.float32)
    mean7, _, _ = MeanEnsemble().score(p)
    for t in (0.3, 0.5, 0.77, 0.9):
        gate = mean_bound(t, 5, 2) - 1e-5
        c = Cascade(tuple("abcde"), ("f", "g"), gate, "bound", t)
        passes = c.passes(p[:, :5])
        assert passes[mean7 >= t].all(), t  # every candidate of the full run goes on
        assert (~passes).sum() > 0, t       # and the gate does skip something
    assert mean_bound(0.5, 5, 2) == pytest.approx(0.3)
    # a missing cheap score means the gate cannot judge: the cutout goes on
    c = Cascade(("a", "b"), ("c",), 0.9, "bound", 0.9)
    assert c.passes(np.array([[np.nan, 0.0], [0.0, 0.0]], np.float32)).tolist() == [True, False]


def test_plan_cascade_rules(tmp_path, tiny_models):
    models = discover_models(tiny_models)

    class TSNE:
        name = "OU-T-SNE"
        path = None

    # mean: the bound, split by stamp when no file is given
    c = plan_cascade(models, MeanEnsemble(), 0.5)
    assert (c.cheap, c.expensive, c.rule) == (CHEAP, EXPENSIVE, "bound")
    assert c.gate == pytest.approx((3 * 0.5 - 1) / 2, abs=1e-4)
    # OU-T-SNE needs validated gates
    with pytest.raises(ValueError, match="validation"):
        plan_cascade(models, TSNE(), 0.5)
    gates = {"cheap": list(CHEAP), "expensive": list(EXPENSIVE),
             "ensembles": {"OU-T-SNE": {"gates": [{"threshold": 0.5, "gate": 0.41}, {"threshold": 0.8, "gate": 0.6}]}}}
    (tmp_path / "cascade.json").write_text(json.dumps(gates))
    c = plan_cascade(models, TSNE(), 0.9, tmp_path)
    assert (c.gate, c.threshold, c.rule) == (0.6, 0.8, "validated")
    assert plan_cascade(models, TSNE(), 0.7, tmp_path).gate == 0.41
    with pytest.raises(ValueError, match="no OU-T-SNE gate validated at or below threshold 0.3"):
        plan_cascade(models, TSNE(), 0.3, tmp_path)
    (tmp_path / "cascade.json").write_text(json.dumps({**gates, "expensive": []}))
    with pytest.raises(ValueError, match="every model must be cheap or expensive"):
        plan_cascade(models, MeanEnsemble(), 0.5, tmp_path)
    # a validated gate keeps every validation lens found at the threshold, less the margin
    g = validated_gate(np.array([0.2, 0.5, 0.7, 0.9, 0.1]), np.array([0.4, 0.6, 0.9, 0.95, 0.99]),
                       np.array([1, 1, 1, 0, 0]), 0.5, margin=0.05)
    assert g["gate"] == pytest.approx(0.45) and g["lenses_found"] == 2 and g["nonlens_pass_fraction"] == 0.5


@pytest.mark.slow
def test_run_cascade_cli_keeps_the_catalogue(tmp_path, small_store, tiny_models):
    """The bound gate: the cascade's candidate catalogue is the full run's, every cutout is in the score table."""
    import pyarrow.parquet as pq
    from astropy.io import fits

    from lensengine.engine.cli import cli
    from lensengine.engine.scoring import score_store

    models = discover_models(tiny_models)
    full = next(score_store(small_store, models, None, device="cpu", threads=1, batch_size=32))
    # the threshold whose bound gate, (3 t - 1) / 2 for two cheap and one expensive model, is the median cheap mean
    cheap_mean = np.nanmedian((full["P_OU_J"].astype(np.float64) + full["P_OU_JYH"]) / 2)
    threshold = round((2 * cheap_mean + 1) / 3, 4)
    out = tmp_path / "c.fits"
    result = CliRunner().invoke(cli, ["-q", "run", "--tiles", str(small_store), "--models", str(tiny_models),
                                      "--out", str(out), "--scores", str(tmp_path / "s"), "--threshold",
                                      str(threshold), "--cascade", "--no-dashboard"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    from lensengine.catalogs.catalog import score_table_files

    table = pq.read_table([str(p) for p in score_table_files(tmp_path / "s")]).to_pydict()
    assert sorted(table["ROW"]) == list(range(32))
    flags = np.asarray(table["FLAGS"], np.uint32)
    skipped = (flags & np.uint32(Flag.CASCADE_SKIPPED)) != 0
    assert 5 <= skipped.sum() <= 27
    ens = np.asarray(table["P_ENSEMBLE"], np.float32)
    assert np.isnan(ens[skipped]).all()
    full_cands = set(np.asarray(full["OBJECT_ID"])[np.asarray(full["P_ENSEMBLE"]) >= threshold].tolist())
    with fits.open(out) as hdul:
        assert set(hdul[1].data["OBJECT_ID"].tolist()) == full_cands
        assert hdul[1].header["CASCADE"] is True and hdul[1].header["CASCRULE"] == "bound"
