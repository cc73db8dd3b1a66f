"""Real imaging degraded to Euclid: flux conservation, target noise, determinism, and the stores."""

from __future__ import annotations

import numpy as np
import pytest

from lensengine.engine.specs import BANDS
from lensengine.training import realcheck as rc
from lensengine.training._sim_physics import INSTRUMENT
from lensengine.training.real_galaxies import RealGalaxy


def _gaussian(n=120, sigma_px=6.0, flux=500.0):
    yy, xx = np.mgrid[:n, :n] - (n - 1) / 2
    g = np.exp(-(xx ** 2 + yy ** 2) / (2 * sigma_px ** 2))
    return flux * g / g.sum()


@pytest.mark.parametrize("band", BANDS)
def test_degradation_conserves_flux(band):
    image = _gaussian()
    for offset in ((0.0, 0.0), (0.037, -0.021)):
        out = rc.degrade(image, 0.03, band, native_fwhm=0.095, offset=offset)
        n, _ = rc.FIELD[band]
        assert out.shape == (n, n)
        assert out.sum() == pytest.approx(image.sum(), rel=0.01)
    # and the light lands where it should: the centroid at the field centre + offset
    out = rc.degrade(image, 0.03, band, native_fwhm=0.095, offset=(0.3, 0.0))
    n, scale = rc.FIELD[band]
    xs = (np.arange(n) - (n - 1) / 2) * scale
    assert (out.sum(axis=0) * xs).sum() / out.sum() == pytest.approx(0.3, abs=0.01)


def test_degradation_reaches_the_euclid_psf_width():
    # a point-like native source (native FWHM 0.095") comes out with about the VIS FWHM (0.16")
    image = np.zeros((101, 101))
    image[50, 50] = 1.0
    out = rc.degrade(image, 0.03, "VIS", native_fwhm=0.0)
    prof = out.sum(axis=0)
    xs = (np.arange(200) - 99.5) * 0.1
    sigma = np.sqrt((prof * xs ** 2).sum() / prof.sum())
    assert 0.05 < sigma < 0.2  # Moffat wings make the rms wider than FWHM/2.355 = 0.068"


def _galaxy(image, sigma=0.0, name="synthetic/1"):
    return RealGalaxy(name=name, image=image, pixel_scale=0.03, band="F814W", psf=None, noise_sigma=sigma,
                      mag=None, z=0.5, extra_bands={})


def test_blank_sky_reaches_the_instrument_noise():
    cut = rc.render(rc.euclid_bands(_galaxy(_gaussian(60, 3.0, 20.0))), seed=5, index=0, truth={})
    vis = cut.vis.astype(np.float64)
    corners = np.concatenate([vis[:50, :50].ravel(), vis[:50, -50:].ravel(), vis[-50:, :50].ravel(),
                              vis[-50:, -50:].ravel()])
    assert np.std(corners) == pytest.approx(INSTRUMENT.noise_floor("VIS"), rel=0.05)
    for k, band in enumerate(BANDS[1:]):
        nisp = cut.nisp[k].astype(np.float64)
        blank = np.concatenate([nisp[:20].ravel(), nisp[-20:].ravel()])
        assert np.std(blank) == pytest.approx(INSTRUMENT.noise_floor(band), rel=0.05), band


def test_native_noise_is_topped_up_not_doubled():
    # a stamp of pure white noise whose degraded σ is ~60 % of the VIS target: inside the stamp the
    # total must still be the target (a plain sum would give ~1.17 times it)
    target = INSTRUMENT.noise_floor("VIS")
    gain = rc.native_noise_gain("VIS", 0.03, rc.NATIVE_FWHM["F814W"])
    to_vis = 10 ** (-0.4 * (rc.ZP_F814W - INSTRUMENT.zero_point["VIS"]))
    sigma_native = 0.6 * target / gain / to_vis
    noise = np.random.default_rng(1).normal(0, sigma_native, (300, 300))
    g = _galaxy(noise, sigma_native)
    inp = rc.euclid_bands(g)
    assert inp.noise_corr["VIS"] == pytest.approx(1.0, abs=0.1)  # white noise: no correlation
    cut = rc.render(inp, seed=2, index=0, truth={})
    centre = cut.vis[70:130, 70:130].astype(np.float64)  # inside the (untapered part of the) 9" stamp
    assert np.std(centre) == pytest.approx(target, rel=0.05)


def test_render_is_deterministic_per_seed():
    g = _galaxy(_gaussian(60, 3.0, 20.0))
    a = rc.render(rc.euclid_bands(g), seed=3, index=7, truth={})
    b = rc.render(rc.euclid_bands(g), seed=3, index=7, truth={})
    c = rc.render(rc.euclid_bands(g), seed=4, index=7, truth={})
    assert np.array_equal(a.vis, b.vis) and np.array_equal(a.nisp, b.nisp) and a.truth == b.truth
    assert not np.array_equal(a.vis, c.vis)


def test_taper_fades_the_edges_only():
    img = np.ones((50, 40))
    t = rc.taper(img)
    assert t[25, 20] == 1.0 and t[0, 0] < 0.01 and t[25, 0] < 0.1
    assert np.allclose(t, t[::-1, ::-1])


def test_correlation_factor_sees_correlated_noise():
    rng = np.random.default_rng(0)
    white = rng.standard_normal((200, 200))
    assert rc.correlation_factor(white, 3.3) == pytest.approx(1.0, abs=0.1)
    smooth = white + np.roll(white, 1, 0) + np.roll(white, 1, 1) + np.roll(np.roll(white, 1, 0), 1, 1)
    assert rc.correlation_factor(smooth, 3.3) > 1.4


def test_stores_from_shared_real_imaging(real_dir, tmp_path):
    from lensengine.catalogs.store import SurveyStore

    if not (real_dir / "hst_sdssj0946" / "data.fits").is_file() or not (real_dir / "galaxies").is_dir():
        pytest.skip(f"J0946 or the real galaxies are absent from {real_dir}")
    paths = rc.write_realcheck(tmp_path / "rc", seed=0, real_root=real_dir / "galaxies",
                               j0946_root=real_dir / "hst_sdssj0946", roles=("check",))
    j = SurveyStore.open(paths["j0946"])
    assert j.total_cutouts() == 1
    b = j.read_chunk(j.tiles[0], 0)
    assert b.vis.shape == (1, 200, 200) and b.nisp.shape == (1, 3, 66, 66)
    assert b.truth["label"][0] == 1 and b.truth["is_lens"][0] == 1 and b.truth["kind"][0] == "real-lens"
    # J0946 is bright (F814W ~ 17): its centre stands far above the noise in every band
    assert b.vis[0, 95:105, 95:105].max() > 50 * INSTRUMENT.noise_floor("VIS")
    r = SurveyStore.open(paths["real"])
    rb = r.read_chunk(r.tiles[0], 0)
    names = list(rb.truth["name"])
    assert "jwst_etg_cosj100020/COSJ100020+015344" in names
    assert set(rb.truth["role"]) == {"check"}
    assert (rb.truth["label"] == 0).all() and (rb.truth["is_lens"] == 0).all()
    assert set(rb.truth["kind"]) == {"real-galaxy"}
    assert rb.vis.shape[1:] == (200, 200) and np.isfinite(rb.vis).all() and np.isfinite(rb.nisp).all()
    etg = names.index("jwst_etg_cosj100020/COSJ100020+015344")
    assert rb.truth["nisp_from"][etg] == "JWST F115W/F150W"
    assert 18 < rb.truth["mag_VIS"][etg] < 22
    assert paths["manifest"].is_file()
