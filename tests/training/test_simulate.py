"""Tests of the Euclid-like simulator (lensengine.training.simulate): a handful of systems each."""

from __future__ import annotations

import logging

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
        # (galaxy light also adds Poisson noise: at least the sky + read-noise floor, not much more; the
        # per-cutout depth varies by ±DEPTH_JITTER_MAG around the nominal floor)
        ratio = (med - lo) / noise
        low = 0.95 * 10 ** (-0.4 * phys.DEPTH_JITTER_MAG)
        assert np.all((ratio > low) & (ratio < 1.4)), (band, med - lo, noise)
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
    res = CliRunner().invoke(cli, ["-q", "simulate", "--kind", "survey-lenses", "-n", "2", "--seed", "3", "--out",
                                   str(tmp_path / "hard.zarr"), "--min-arc-snr", "8"])
    assert res.exit_code == 0, res.output
    from lensengine.catalogs.store import SurveyStore

    store = SurveyStore.open(tmp_path / "hard.zarr")
    assert store.attrs["provenance"]["label_rule"]["min_snr"] == 8.0
    assert (store.read("sim", 0, 2).truth["arc_snr"] >= 8.0).all()


def test_cli_kinds_match_the_simulator():
    from lensengine.training import simulate, simulate_commands

    assert simulate_commands.KINDS == simulate.KINDS


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
    monkeypatch.setattr(simulate, "SIMULATOR_VERSION", simulate.SIMULATOR_VERSION + 1)
    simulate.example_store(tmp_path / "example.zarr")
    assert (path / "zarr.json").stat().st_mtime_ns != stamp  # another simulator version: rebuilt


# --- PSF, depth, survey lenses, negative populations, real stamps ---------------------------------------
from lensengine.training import _sim_render as rend  # noqa: E402
from lensengine.training import _sim_negatives as negatives  # noqa: E402
from lensengine.training import _sim_real as real  # noqa: E402
from lensengine.training import _sim_scenes as scenes  # noqa: E402


@pytest.mark.parametrize("band", BANDS)
@pytest.mark.parametrize("pixel_scale", [0.03, 0.1, 0.3])
def test_psf_kernels_are_unit_sum_centred_and_odd(band, pixel_scale):
    nominal = rend.psf_kernel(band, pixel_scale)
    jittered = rend.psf_kernel(band, pixel_scale, rng=np.random.default_rng(3))
    for k in (nominal, jittered):
        assert k.ndim == 2 and k.shape[0] == k.shape[1] and k.shape[0] % 2 == 1
        assert k.sum() == pytest.approx(1.0, abs=1e-5) and (k >= 0).all()
    c = nominal.shape[0] // 2
    assert nominal[c, c] == nominal.max()
    np.testing.assert_allclose(nominal, nominal[::-1, ::-1], atol=1e-7)  # the nominal PSF is symmetric
    assert not np.allclose(jittered, jittered[::-1, ::-1], atol=1e-4)  # the jittered one is not


def test_vis_psf_has_wings_and_nisp_is_undersampled():
    fine = rend.psf_kernel("VIS", 0.01)
    c = fine.shape[0] // 2
    yy, xx = np.indices(fine.shape)
    r = np.hypot(yy - c, xx - c) * 0.01
    fwhm = phys.INSTRUMENT.psf_fwhm["VIS"]
    assert 0.15 <= fwhm <= 0.18
    # a Gaussian of this FWHM holds ~1e-10 of its flux beyond 3 FWHM; the Moffat wings hold percent
    assert fine[r > 3 * fwhm].sum() > 0.02
    for band in BANDS[1:]:
        k = rend.psf_kernel(band, 0.3)  # integrated over the 0.3" pixels
        assert k.max() > 0.2  # a third of the light or so in one pixel: undersampled
        fine = rend.psf_kernel(band, 0.01)
        half_max = (fine >= fine.max() / 2).sum() * 0.01 ** 2
        assert 0.35 <= 2 * np.sqrt(half_max / np.pi) <= 0.5  # optical FWHM; with the pixel ≈ 0.45-0.5"


@pytest.mark.parametrize("band", BANDS)
def test_depth_matches_euclid_wide(band):
    target = phys.DEPTH_TARGET[band][0]
    assert abs(rend.limiting_magnitude(band) - target) < 0.15


def test_rendered_noise_reaches_the_documented_depth():
    """Measure the depth on simulated blank fields: aperture noise in VIS, pixel noise in NISP."""
    rng = np.random.default_rng(5)
    inst = phys.INSTRUMENT
    blanks = [rend.render(rend.Scene(), rng) for _ in range(24)]
    # VIS, extended: noise of 1.3"-diameter apertures placed on the blank fields, signal fraction of a
    # 0.3"-FWHM Gaussian galaxy convolved with the nominal PSF in the same aperture (0.1" pixels)
    yy, xx = np.indices((13, 13)) - 6
    ap = np.hypot(yy, xx) * 0.1 <= rend.DEPTH_APERTURE / 2
    sums = [b.vis[r:r + 13, c:c + 13][ap].sum() for b in blanks for r in range(5, 180, 20) for c in range(5, 180, 20)]
    ap_noise = float(np.median(np.abs(np.array(sums) - np.median(sums)))) * 1.4826
    sig = 0.3 / 2.3548
    yy2, xx2 = (np.indices((81, 81)) - 40) * 0.1
    gal = np.exp(-0.5 * (xx2 ** 2 + yy2 ** 2) / sig ** 2)
    from scipy.signal import fftconvolve

    img = fftconvolve(gal / gal.sum(), rend.psf_kernel("VIS", 0.1), mode="same")
    frac = img[np.hypot(xx2, yy2) <= rend.DEPTH_APERTURE / 2].sum()
    m_vis = inst.zero_point["VIS"] - 2.5 * np.log10(10 * ap_noise / frac)
    assert abs(m_vis - phys.DEPTH_TARGET["VIS"][0]) < 0.15, m_vis
    # NISP, point sources: PSF-weighted S/N = F sqrt(sum p^2) / sigma for the pixel-integrated PSF (median over
    # sub-pixel centres is within a few hundredths of the centred value)
    for i, band in enumerate(BANDS[1:]):
        sigma = float(np.median([np.std(b.nisp[i]) for b in blanks]))
        p = rend.psf_kernel(band, 0.3)
        m = inst.zero_point[band] - 2.5 * np.log10(5 * sigma / np.sqrt((p ** 2).sum()))
        assert abs(m - phys.DEPTH_TARGET[band][0]) < 0.15, (band, m)


@pytest.fixture(scope="module")
def survey():
    return simulate_batch("survey-lenses", 6, seed=21)


def test_survey_lenses_reach_the_detection_limit_and_record_truth(survey):
    from lensengine.training.simulate import HARD_RULE

    t = survey.truth
    assert (t["label"] == 1).all() and (t["kind"] == "lens").all()
    assert (t["arc_snr"] >= HARD_RULE.min_snr).all() and (t["magnification"] >= HARD_RULE.min_magnification).all()
    easy = (t["arc_snr"] >= LABEL_RULE.min_snr) & (t["arc_pixels"] >= LABEL_RULE.min_pixels) & (
        t["magnification"] >= LABEL_RULE.min_magnification)
    np.testing.assert_array_equal(t["label_easy"], easy.astype(np.int8))
    assert set(t["lens_type"]) <= set(scenes.SURVEY_LENS_TYPES)
    assert (t["n_deflectors"][t["lens_type"] == "group"] >= 2).all()
    assert (t["n_deflectors"][t["lens_type"] != "group"] == 1).all()
    assert np.isfinite(t["source_re"]).all() and (t["theta_e"] > 0).all()


def test_survey_lenses_have_a_hard_tail_and_realistic_einstein_radii():
    t = simulate_batch("survey-lenses", 40, seed=22).truth
    te = t["theta_e"]
    assert 0.5 <= np.median(te) <= 1.0 and ((te >= 0.5) & (te <= 1.5)).mean() >= 0.5
    assert (t["label_easy"] == 0).mean() >= 0.3  # many below the easy rule's arc S/N 25
    assert np.median(t["mag_source_VIS"]) > 24.0  # faint sources


def _realised_mix(kind, n, seed):
    kinds = simulate_batch(kind, n, seed=seed).truth["kind"]
    return {k: int((kinds == k).sum()) for k in set(kinds)}


@pytest.mark.parametrize("kind,mix_name,n", [("sky-negatives", "SKY_NEGATIVE_MIX", 300),
                                             ("hard-negatives", "HARD_NEGATIVE_MIX", 160)])
def test_negative_population_mix_is_as_documented(kind, mix_name, n):
    mix = getattr(negatives, mix_name)
    got = _realised_mix(kind, n, seed=31)
    assert set(got) <= set(mix)
    for name, p in mix.items():
        k = got.get(name, 0)
        assert abs(k - n * p) <= 3 * np.sqrt(n * p * (1 - p)) + 1, (name, k, n * p)


@pytest.mark.parametrize("kind", ["survey-lenses", "sky-negatives", "hard-negatives", "training-mix"])
def test_new_kinds_are_deterministic_per_seed(kind):
    a = simulate_batch(kind, 3, seed=41, lens_fraction=0.5)
    b = simulate_batch(kind, 2, seed=41, start_index=1, lens_fraction=0.5)
    np.testing.assert_array_equal(a.vis[1:], b.vis)
    np.testing.assert_array_equal(a.nisp[1:], b.nisp)
    for name in TRUTH_COLUMNS:
        np.testing.assert_array_equal(a.truth[name][1:], b.truth[name], err_msg=name)


def test_negatives_have_no_lensed_light():
    t = simulate_batch("hard-negatives", 4, seed=42).truth
    assert (t["label"] == 0).all() and (t["arc_snr"] == 0).all() and (t["label_easy"] == 0).all()
    assert not set(t["kind"]) & {"lens", "elliptical"}


def test_real_stamps_are_unit_flux_and_keep_the_check_half_out(real_dir):
    stamps = real.real_stamps()
    if not stamps:
        pytest.skip("real stamps disabled (LENSENGINE_SIM_REAL=0)")
    names = [s.name for s in stamps]
    assert all(real.real_galaxy_role(n) == "sim" for n in names)
    assert not any(n.startswith("jwst_etg_cosj100020") for n in names)
    for st in stamps:
        assert st.image.sum() == pytest.approx(1.0, abs=1e-4) and max(st.image.shape) <= real.STAMP_MAX
    # a stamp evaluated on a fine grid around its centre integrates to one (flux is conserved by the scaling)
    c = (np.arange(-150, 151) * 0.01).astype(np.float32)
    x, y = np.meshgrid(c, c)
    st = stamps[0]
    sb = real.stamp_sb(st, x, y, 0.0, 0.0, 0.3, 0.7, True)
    assert sb.sum() * 0.01 ** 2 == pytest.approx(1.0, rel=0.03)


def test_analytic_fallback_without_real_stamps(monkeypatch):
    monkeypatch.setenv("LENSENGINE_SIM_REAL", "0")
    real.real_stamps.cache_clear()
    try:
        t = simulate_batch("survey-lenses", 2, seed=43).truth
        assert set(t["source_type"]) == {"sersic"}
    finally:
        real.real_stamps.cache_clear()


def test_a_realistic_store_made_without_the_real_stamps_says_so(monkeypatch, tmp_path, caplog):
    """A store whose real galaxies could not be found is flagged loudly: the same seed draws other pixels."""
    from lensengine.catalogs.store import SurveyStore

    monkeypatch.setenv("LENSENGINE_SHARED", str(tmp_path / "no-shared-here"))
    monkeypatch.delenv("LENSENGINE_SIM_REAL", raising=False)
    real.real_stamps.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger="lensengine.training.simulate"):
            path = simulate_store(tmp_path / "sky.zarr", "sky-negatives", 1, seed=45, progress=False)
            warned = [r for r in caplog.records if r.levelno == logging.WARNING and "real galaxy stamps" in r.message]
            assert len(warned) == 1 and "sky.zarr" in warned[0].message and "LENSENGINE_SHARED" in warned[0].message
            provenance = SurveyStore.open(path).attrs["provenance"]
            assert provenance["real_stamps"] == 0
            # the libraries that can move a pixel are recorded: a seed reproduces a store only on the same ones
            import lenstronomy
            assert provenance["versions"]["lenstronomy"] == lenstronomy.__version__
            assert set(provenance["versions"]) >= {"numpy", "scipy", "skypy", "astropy", "scikit-image"}
            caplog.clear()
            simulate_store(tmp_path / "mixed.zarr", "mixed", 1, seed=45, progress=False)  # draws no real stamps
            monkeypatch.setenv("LENSENGINE_SIM_REAL", "0")  # analytic on purpose
            simulate_store(tmp_path / "off.zarr", "sky-negatives", 1, seed=45, progress=False)
            assert not [r for r in caplog.records if "real galaxy stamps" in r.message]
    finally:
        real.real_stamps.cache_clear()


@pytest.mark.slow
def test_dask_workers_give_the_same_store(tmp_path):
    """Two worker processes (each loading its own real stamps) give the store one process gives."""
    from lensengine.catalogs.store import SurveyStore

    one = simulate_batch("training-mix", 4, seed=44, lens_fraction=0.5)
    path = simulate_store(tmp_path / "dask.zarr", "training-mix", 4, seed=44, lens_fraction=0.5, progress=False,
                          workers=2, block=1)
    got = SurveyStore.open(path).read("sim", 0, 4)
    np.testing.assert_array_equal(got.vis, one.vis)
    np.testing.assert_array_equal(got.nisp, one.nisp)


@pytest.mark.slow
def test_quiet_simulate_on_workers_prints_no_dask_chatter(tmp_path):
    """-q means warnings and errors only, also when the simulation runs on a local Dask cluster."""
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-m", "lensengine.engine", "-q", "simulate", "--kind", "lenses", "-n", "2",
                          "--seed", "3", "--workers", "2", "--out", str(tmp_path / "q.zarr")],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    # Dask's INFO lines (scheduler and worker start-up) are the chatter; a loaded machine may still make Dask warn
    # (an unresponsive event loop), and a warning is what -q keeps
    assert "INFO" not in res.stderr, res.stderr


def test_pixel_statistics_measure_a_known_galaxy_and_nothing_on_blank_sky():
    from lensengine.training._sim_report import measure_objects

    rng = np.random.default_rng(8)
    blank = rend.render(rend.Scene(), rng)
    assert measure_objects(blank.vis, blank.nisp) == []
    scene = rend.Scene()
    mags = np.array([21.0, 20.2, 20.0, 19.9])  # VIS - H = 1.1
    scene.add(rend.sersic(rend.GRID_X, rend.GRID_Y, 0.4, 1.0, 1.0, 0.0, 1.0, -2.0), mags)
    out = rend.render(scene, rng)
    objs = measure_objects(out.vis, out.nisp)
    assert len(objs) == 1
    o = objs[0]
    assert abs(o["x"] - 1.0) < 0.1 and abs(o["y"] + 2.0) < 0.1
    assert 21.0 < o["mag_vis"] < 21.3  # the segment misses the faint outskirts
    assert 0.3 < o["r50"] < 0.5 and abs(o["colour_vis_h"] - 1.1) < 0.25 and o["snr"] > 50


def test_ring_galaxies_have_their_own_blue_knotty_rings():
    """Not Einstein-ring look-alikes: the ring is bluer than the nucleus and lumpy (knots), on one redshift."""
    for seed in range(3):
        rng = np.random.default_rng(seed)
        scene, truth = negatives.sample_non_lens(rng, "ring-galaxy", environment="sparse")
        vis, h = scene.total[0], scene.total[3]
        r = np.hypot(rend.GRID_X.reshape(200, 200) - truth.x_lens, rend.GRID_Y.reshape(200, 200) - truth.y_lens)
        inner, outer = r < 0.3, (r > 0.5) & (r < 3.5)
        colour = lambda m: -2.5 * np.log10(vis[m].sum() / h[m].sum())  # noqa: E731  (VIS - H up to a constant)
        assert colour(outer) < colour(inner) - 0.1
        ring_pix = vis[outer]
        bright = ring_pix[ring_pix > np.percentile(ring_pix, 90)]
        assert bright.max() > 5 * np.median(bright)  # compact knots stand out of the smooth ring
        assert truth.kind == "ring-galaxy" and not truth.label_candidate


@pytest.mark.parametrize("with_stamps", [False, True])
def test_star_forming_negatives_are_clumpy_blue_galaxies_of_the_searched_magnitude(monkeypatch, with_stamps):
    """The central galaxy is a real morphology when stamps exist (an analytic disc with knots otherwise), keeps
    the magnitude it was drawn with and has a star-forming colour."""
    from scipy.ndimage import maximum_filter

    from lensengine.training import _sim_real
    from lensengine.training._sim_physics import INSTRUMENT

    img = np.zeros((40, 40))
    img[12:15, 12:15] = 1.0
    img[25:28, 24:27] = 0.6  # two knots: the kind of morphology that mimics a small lens
    stamp = _sim_real._make_stamp("fake/knots", img, 0.03)
    used = []
    monkeypatch.setattr(negatives, "real_stamps", lambda: (stamp,) if with_stamps else ())
    monkeypatch.setattr(negatives, "add_stamp_galaxy",
                        lambda scene, rng, st, g: (used.append(st.name), _sim_real.add_stamp_galaxy(scene, rng, st, g)))
    monkeypatch.setattr(negatives, "add_environment", lambda scene, rng: 0)  # the galaxy alone
    for seed in range(3):
        rng = np.random.default_rng(seed)
        scene, truth = negatives.sample_non_lens(rng, "star-forming", central="sky", environment="sparse")
        assert truth.kind == "star-forming" and not truth.label_candidate and truth.mag_lens[0] <= 22.5
        vis, h = scene.total[0], scene.total[3]
        expected = INSTRUMENT.flux("VIS", truth.mag_lens[0])
        assert 0.7 * expected < vis.sum() <= 1.001 * expected  # the clipped wings are all that is lost
        assert -2.5 * np.log10(vis.sum() / h.sum()) < -2.5 * np.log10(
            INSTRUMENT.flux("VIS", 20.0) / INSTRUMENT.flux("H", 19.0)) + 1.0  # bluer than VIS − H = 1 + 1
        local_max = (vis == maximum_filter(vis, size=3)) & (vis > 0.05 * vis.max())
        assert local_max.sum() >= 2  # knots: a smooth profile has one peak
    assert used == (["fake/knots"] * 3 if with_stamps else [])


def test_knots_smaller_than_a_pixel_keep_their_flux_wherever_they_fall():
    """Star-forming knots (FWHM 0.03-0.12″) are integrated over the 0.1″ pixels: sampled at pixel centres, a
    0.03″ knot between centres would vanish and one on a centre would be several times too bright."""
    rng = np.random.default_rng(5)
    fluxes, peaks = [], []
    for _ in range(50):
        cx, cy = rng.uniform(-1, 1, 2)
        where = rend.window(cx, cy, 0.4)
        sb = rend.pixel_gaussian(where[2], where[3], cx, cy, 0.03)
        fluxes.append(sb.sum() * rend.PIX ** 2)
        peaks.append(sb.max() * rend.PIX ** 2)
    assert np.allclose(fluxes, 1.0, atol=1e-5)
    assert 0.25 <= min(peaks) and max(peaks) <= 1.0  # the knot shares at most 4 pixels, never more than its flux
    scene = rend.Scene()
    mags = np.full(4, 21.0)
    negatives._add_knots(scene, np.random.default_rng(1), [(0.03, 0.02), (-0.55, 0.71), (1.26, -0.04)], mags)
    assert scene.total[0].sum() == pytest.approx(phys.INSTRUMENT.flux("VIS", 21.0), rel=1e-4)


def test_sources_smaller_than_a_pixel_keep_their_flux_at_any_sub_pixel_position():
    """Lensed light is averaged over SUBSAMPLE² positions per pixel: an (unlensed, for a known answer) 0.05″
    source keeps its flux wherever it sits; one sample per pixel (the old rendering) loses or multiplies it."""
    from lensengine.training import _sim_scenes as scenes

    where = rend.window(0.0, 0.0, 1.5)
    expected = phys.INSTRUMENT.flux("VIS", 22.0)

    def fluxes(n_sub):
        sx, sy = rend.subpixel_grid(where[2], where[3], n_sub)
        assert sx.shape == (n_sub ** 2, *where[2].shape)
        assert np.allclose(rend.pixel_average(sx), where[2], atol=1e-6)  # samples centred on their pixel
        out = []
        for off in [(0.0, 0.0), (0.05, 0.05), (0.025, -0.04), (-0.05, 0.0), (0.01, 0.033), (0.045, -0.012)]:
            scene = rend.Scene()
            mags = scenes._add_source(scene, np.random.default_rng(3), sx, sy, 1.5, off[0], off[1], "blue",
                                      where=where, mag_range=(22.0, 22.0), r_e=0.05, max_clumps=0)
            assert mags[0] == pytest.approx(22.0)
            out.append(scene.lensed.sum() / expected)
        return np.array(out)

    f = fluxes(rend.SUBSAMPLE)
    assert f.max() / f.min() < 1.06 and f.min() > 0.85  # the rest: the cusp inside the 0.02″ radius floor
    one = fluxes(1)
    assert one.max() / one.min() > 1.3
