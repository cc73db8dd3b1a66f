"""Tests of the Euclid-like simulator (lensengine.training.simulate): a handful of systems each."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("lenstronomy")
pytest.importorskip("skypy")

from lensengine.engine.specs import BANDS  # noqa: E402
from lensengine.training import _sim_physics as phys  # noqa: E402
from lensengine.training.simulate import (  # noqa: E402
    LABEL_RULE, TRUTH_COLUMNS, cutout_seed, render_cutout, simulate_batch, simulate_store,
)

CONTRACT_TRUTH = ["label", "theta_e", "z_lens", "z_lens2", "z_source", *[f"mag_source_{b}" for b in BANDS],
                  *[f"mag_lens_{b}" for b in BANDS], "source_colour", "n_images", "arc_snr", "kind", "seed"]


@pytest.fixture(scope="module")
def mixed():
    return simulate_batch("mixed", 4, seed=11, lens_fraction=0.5)


@pytest.fixture(scope="module")
def lenses():
    return simulate_batch("lenses", 3, seed=12)


def test_deterministic_and_independent_of_blocking(mixed):
    again = simulate_batch("mixed", 2, seed=11, start_index=2, lens_fraction=0.5)
    np.testing.assert_array_equal(again.vis, mixed.vis[2:])
    np.testing.assert_array_equal(again.nisp, mixed.nisp[2:])
    for name in TRUTH_COLUMNS:
        np.testing.assert_array_equal(again.truth[name], mixed.truth[name][2:])
    other = simulate_batch("mixed", 1, seed=12, lens_fraction=0.5)
    assert not np.array_equal(other.vis[0], mixed.vis[0])


def test_a_cutout_regenerates_from_its_stored_seed(mixed):
    seed = int(mixed.truth["seed"][3])
    assert seed == cutout_seed(11, 3)
    vis, nisp, truth = render_cutout("mixed", seed, lens_fraction=0.5)
    np.testing.assert_array_equal(vis, mixed.vis[3])
    np.testing.assert_array_equal(nisp, mixed.nisp[3])
    assert truth["kind"] == mixed.truth["kind"][3]


def test_shapes_dtypes_units(mixed):
    n = len(mixed)
    assert mixed.vis.shape == (n, 200, 200) and mixed.vis.dtype == np.float32
    assert mixed.nisp.shape == (n, 3, 66, 66) and mixed.nisp.dtype == np.float32
    assert np.isfinite(mixed.vis).all() and np.isfinite(mixed.nisp).all()
    assert mixed.object_id.dtype == np.int64 and mixed.flags.dtype == np.uint32 and not mixed.flags.any()
    assert set(mixed.bands()) == set(BANDS)
    # e-/s, sky subtracted: the background is zero-mean with the predicted noise in every band
    for i, band in enumerate(BANDS):
        img = mixed.vis if band == "VIS" else mixed.nisp[:, i - 1]
        noise = phys.INSTRUMENT.noise_floor(band)
        # the lower half of the pixel distribution is noise (galaxy light only adds): median - 16th percentile = σ
        lo, med = np.percentile(img, [15.87, 50], axis=(1, 2))
        # (galaxy light also adds Poisson noise: at least the sky + read-noise floor, not much more)
        ratio = (med - lo) / noise
        assert np.all((ratio > 0.9) & (ratio < 1.4)), (band, med - lo, noise)
        assert np.all(np.abs(np.median(img, axis=(1, 2))) < noise)  # faint galaxy light lifts NISP a little


def test_truth_columns(mixed):
    assert set(CONTRACT_TRUTH) <= set(TRUTH_COLUMNS)
    for name, dtype in TRUTH_COLUMNS.items():
        col = mixed.truth[name]
        assert col.shape == (len(mixed),), name
        if dtype != "str":
            assert col.dtype == np.dtype(dtype), name
    assert set(np.unique(mixed.truth["label"])) <= {0, 1}


def test_lenses_have_detectable_lensed_flux(lenses):
    t = lenses.truth
    assert (t["label"] == 1).all()
    assert (t["arc_pixels"] >= LABEL_RULE.min_pixels).all() and (t["arc_snr"] >= LABEL_RULE.min_snr).all()
    assert (t["magnification"] >= LABEL_RULE.min_magnification).all()
    assert (t["n_images"] >= 1).all() and (t["theta_e"] > 0).all()
    assert (t["z_source"] > t["z_lens"]).all() and np.isnan(t["z_lens2"]).all()
    assert set(t["source_colour"]) <= {"starburst", "blue", "red"}


def test_non_lenses_have_no_lensed_flux():
    b = simulate_batch("non-lenses", 3, seed=13)
    t = b.truth
    assert (t["label"] == 0).all() and (t["arc_pixels"] == 0).all() and (t["arc_snr"] == 0).all()
    assert (t["theta_e"] == 0).all() and np.isnan(t["z_source"]).all()
    assert not set(t["kind"]) & {"lens", "compound-arc", "double-ring"}


@pytest.mark.parametrize("kind", ["compound-arcs", "double-rings"])
def test_compound_systems_have_two_deflector_redshifts(kind):
    b = simulate_batch(kind, 2, seed=14)
    t = b.truth
    assert (t["kind"] == kind.rstrip("s")).all()
    assert np.isfinite(t["z_lens2"]).all() and (t["z_lens2"] > t["z_lens"]).all()
    assert (t["z_source"] > t["z_lens2"]).all()
    assert np.isfinite(t["theta_e2"]).all() and (t["theta_e2"] > 0).all()


def test_theta_e_against_astropy():
    from astropy import units as u
    from astropy.constants import c
    from astropy.cosmology import FlatLambdaCDM

    cosmo = FlatLambdaCDM(H0=70, Om0=0.3)
    sigma, zl, zs = 250.0, 0.4, 1.7
    d_ls = cosmo.angular_diameter_distance(zl, zs)
    d_s = cosmo.angular_diameter_distance(zs)
    expected = (4 * np.pi * (sigma * u.km / u.s / c) ** 2 * d_ls / d_s).decompose().value * u.rad.to(u.arcsec)
    assert phys.theta_e_sis(sigma, zl, zs) == pytest.approx(expected, rel=1e-4)
    # lenstronomy's reference convention: the Einstein radius for a source at Z_REF
    d_lr = cosmo.angular_diameter_distance(zl, phys.Z_REF)
    d_r = cosmo.angular_diameter_distance(phys.Z_REF)
    expected_ref = (4 * np.pi * (sigma * u.km / u.s / c) ** 2 * d_lr / d_r).decompose().value * u.rad.to(u.arcsec)
    assert phys.theta_e_reference(expected, zl, zs) == pytest.approx(expected_ref, rel=1e-4)


def test_multiplane_conversion_puts_the_einstein_ring_at_the_physical_radius():
    """A singular isothermal sphere traced with lenstronomy's multi-plane maps θ_E(z_l, z_s) onto β = 0."""
    from lensengine.training._sim_scenes import _multi_plane

    sigma, zl, zs = 260.0, 0.5, 2.2
    theta_e = float(phys.theta_e_sis(sigma, zl, zs))
    kw = [{"theta_E": float(phys.theta_e_reference(theta_e, zl, zs)), "e1": 0.0, "e2": 0.0,
           "center_x": 0.0, "center_y": 0.0}]
    beta_x, beta_y = _multi_plane(["SIE"], [zl], zs).ray_shooting(np.array([theta_e, 0.0]), np.array([0.0, theta_e]),
                                                                  kw)
    np.testing.assert_allclose(beta_x, 0.0, atol=2e-3 * theta_e)
    np.testing.assert_allclose(beta_y, 0.0, atol=2e-3 * theta_e)


def test_source_colour_classes_differ():
    sed = phys.sed_table()
    rng = np.random.default_rng(0)
    blue = np.median([sed.colours(sed.sample_coefficients(rng, "starburst"), 1.5)[3] for _ in range(50)])
    red = np.median([sed.colours(sed.sample_coefficients(rng, "red"), 1.5)[3] for _ in range(50)])
    assert red < blue - 1.0  # H - VIS: red sources are much brighter in H


def test_bad_options():
    with pytest.raises(ValueError, match="kind"):
        simulate_batch("quasars", 1, seed=0)
    with pytest.raises(ValueError, match="source_colour"):
        simulate_batch("lenses", 1, seed=0, source_colour="green")


def test_store_round_trip(tmp_path, mixed):
    from lensengine.catalogs.store import SurveyStore

    path = simulate_store(tmp_path / "sim.zarr", "mixed", 4, seed=11, lens_fraction=0.5, progress=False,
                          chunk_size=2, block=3)
    store = SurveyStore.open(path)
    got = store.read("sim", 0, store.n_cutouts("sim"))
    np.testing.assert_array_equal(got.vis, mixed.vis)
    np.testing.assert_array_equal(got.nisp, mixed.nisp)
    np.testing.assert_array_equal(got.truth["label"], mixed.truth["label"])
    np.testing.assert_array_equal(got.truth["kind"], mixed.truth["kind"])


def test_cli_simulate(tmp_path):
    from click.testing import CliRunner

    from lensengine.engine.cli import _register_plugin_commands, cli

    _register_plugin_commands()
    out = tmp_path / "cli.zarr"
    res = CliRunner().invoke(cli, ["-q", "simulate", "--kind", "double-rings", "-n", "1", "--seed", "3", "--out",
                                   str(out), "--report"])
    assert res.exit_code == 0, res.output
    assert "1 cutouts" in res.output and out.exists()
    res = CliRunner().invoke(cli, ["simulate", "--kind", "lenses", "-n", "1", "--seed", "3", "--out", str(out)])
    assert res.exit_code == 2


@pytest.mark.slow
def test_dask_workers_give_the_same_store(tmp_path, mixed):
    from lensengine.catalogs.store import SurveyStore

    path = simulate_store(tmp_path / "dask.zarr", "mixed", 4, seed=11, lens_fraction=0.5, progress=False,
                          workers=2, block=1)
    store = SurveyStore.open(path)
    got = store.read("sim", 0, 4)
    np.testing.assert_array_equal(got.vis, mixed.vis)


def test_example_store_is_made_once_and_cached(tmp_path, monkeypatch):
    from lensengine.catalogs.store import SurveyStore
    from lensengine.training import simulate

    monkeypatch.setattr(simulate, "EXAMPLE_N", 3)
    path = simulate.example_store(tmp_path / "example.zarr")
    store = SurveyStore.open(path)
    assert store.total_cutouts() == 3 and store.attrs["provenance"]["kind"] == "mixed"
    stamp = (path / "zarr.json").stat().st_mtime_ns
    assert simulate.example_store(tmp_path / "example.zarr") == path
    assert (path / "zarr.json").stat().st_mtime_ns == stamp  # cached, not rebuilt
