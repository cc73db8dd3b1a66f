"""The real-galaxy loader reads ../shared/real/galaxies in place (skips when it is absent)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from lensengine.training.real_galaxies import (
    RealGalaxy,
    background,
    clean_stamp,
    load_real_galaxies,
)


@pytest.fixture(scope="module")
def galaxies(real_dir):
    root = real_dir / "galaxies"
    if not root.is_dir():
        pytest.skip(f"{root} is absent")
    return load_real_galaxies(root)


def _by_name(galaxies, name):
    hits = [g for g in galaxies if g.name == name]
    assert len(hits) == 1, f"{name}: {len(hits)} matches"
    return hits[0]


def test_every_folder_is_read_with_its_count(galaxies):
    folders = {}
    for g in galaxies:
        folders[g.name.split("/")[0]] = folders.get(g.name.split("/")[0], 0) + 1
    # 100 + 10 COSMOS, 2 COSMOS + 2 COSMOS-Web, 5 AEGIS + 1 COSMOS test galaxy, COSJ100020
    assert folders == {"cosmos_hst_100": 100, "cosmos_hst_10_bright": 10, "cosmos_hst2_jwst2": 4,
                       "aegis_hst5": 6, "jwst_etg_cosj100020": 1}
    assert len({g.name for g in galaxies}) == len(galaxies)


def test_stamps_are_background_subtracted_with_a_measured_rms(galaxies):
    for g in galaxies:
        assert g.image.dtype == np.float64 and g.image.ndim == 2
        level, rms = background(g.image)
        assert abs(level) < 0.2 * g.noise_sigma, g.name
        assert rms == pytest.approx(g.noise_sigma, rel=1e-6)
        assert g.pixel_scale == 0.03
        assert not g.image.flags.writeable  # the cache cannot be altered by a caller


def test_catalogue_values_reach_the_galaxy(galaxies):
    g = _by_name(galaxies, "cosmos_hst_100/0")
    assert g.band == "F814W"
    assert g.mag == pytest.approx(24.43833733, abs=1e-5)
    assert g.z == pytest.approx(0.8165, abs=1e-4)
    assert g.psf is not None and g.psf.sum() == pytest.approx(1.0)
    # The 10-bright PSF file is not shipped: no PSF rather than an error.
    assert _by_name(galaxies, "cosmos_hst_10_bright/141190").psf is None


def test_duplicated_catalogue_hdu_is_resolved_by_stamp_flux(galaxies):
    # real_galaxy_catalog_23.5.fits names HDU 2 for both rows; stamp_flux picks HDU 1 for 97475.
    a = _by_name(galaxies, "cosmos_hst2_jwst2/97475")
    b = _by_name(galaxies, "cosmos_hst2_jwst2/169753")
    assert a.image.shape == (145, 146) and b.image.shape == (153, 154)


def _centroid(image, half=30):
    cy, cx = np.array(image.shape) // 2
    box = np.clip(image[cy - half:cy + half, cx - half:cx + half], 0, None)
    yy, xx = np.mgrid[:2 * half, :2 * half]
    return np.array([(yy * box).sum(), (xx * box).sum()]) / box.sum()


def test_multiband_galaxies_share_one_grid(galaxies):
    aegis = _by_name(galaxies, "aegis_hst5/14886")
    assert aegis.band == "F814W" and set(aegis.extra_bands) == {"F606W"}
    assert aegis.extra_bands["F606W"].shape == aegis.image.shape
    etg = _by_name(galaxies, "jwst_etg_cosj100020/COSJ100020+015344")
    assert etg.band == "F115W" and etg.z == pytest.approx(0.342)
    assert set(etg.extra_bands) == {"F150W", "F277W", "F444W"}
    for band, img in etg.extra_bands.items():
        assert img.shape == etg.image.shape, band
    # The 0.06" bands resampled through their WCS land where the native 0.03"
    # F150W has the galaxy (within half a 0.03" pixel).  (F115W itself sits
    # 0.07" off in the delivered data; see the module docstring.)
    ref = _centroid(etg.extra_bands["F150W"])
    for band in ("F277W", "F444W"):
        assert np.hypot(*(_centroid(etg.extra_bands[band]) - ref)) < 0.5, band
    web = _by_name(galaxies, "cosmos_hst2_jwst2/COSMOSWeb_6701")
    assert web.z == pytest.approx(0.1501, abs=1e-4)


def test_clean_stamp_isolates_the_central_galaxy():
    rng = np.random.default_rng(3)
    n = 80
    yy, xx = np.mgrid[:n, :n]
    centre = 50 * np.exp(-((yy - 40) ** 2 + (xx - 40) ** 2) / (2 * 4.0 ** 2))
    neighbour = 50 * np.exp(-((yy - 12) ** 2 + (xx - 65) ** 2) / (2 * 2.0 ** 2))
    image = centre + neighbour + rng.normal(0, 1.0, (n, n))
    g = RealGalaxy(name="synthetic/1", image=image, pixel_scale=0.03, band="F814W", psf=None,
                   noise_sigma=1.0, mag=None, z=None, extra_bands={})
    out = clean_stamp(g)
    assert out.sum() == pytest.approx(1.0)
    assert (out >= 0).all()
    assert out[12, 65] == 0.0  # the neighbour is masked
    assert out[40, 40] > 0
    assert (out[:, :5] == 0).all()  # the noise in the corners is gone
    # Almost all of the central galaxy's flux is kept.
    kept = out[np.hypot(yy - 40, xx - 40) < 12].sum()
    assert kept > 0.97  # the neighbour alone would take 20 %


def test_clean_stamp_of_real_galaxies(galaxies):
    for name in ("cosmos_hst_10_bright/141190", "jwst_etg_cosj100020/COSJ100020+015344"):
        g = _by_name(galaxies, name)
        out = clean_stamp(g)
        assert out.sum() == pytest.approx(1.0) and out.min() >= 0
        # Most of the stamp is set to zero (sky, neighbours), the galaxy is kept.
        assert 0.01 < (out > 0).mean() < 0.8


def test_missing_root_raises_naming_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_real_galaxies(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="unknown real-galaxy folder"):
        load_real_galaxies(tmp_path, folders=["bogus"])


def test_folders_select_a_subset(galaxies, real_dir):
    etg = load_real_galaxies(real_dir / "galaxies", folders=["jwst_etg_cosj100020"])
    assert [g.name for g in etg] == ["jwst_etg_cosj100020/COSJ100020+015344"]
    assert dataclasses.is_dataclass(etg[0])
