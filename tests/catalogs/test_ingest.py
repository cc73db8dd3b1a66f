"""FITS ingestion: the three layouts, flux-conserving resampling, edge clipping, missing bands, real HST."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS
from click.testing import CliRunner

from lensengine.catalogs._resample import cut_and_resample
from lensengine.catalogs.flags import Flag
from lensengine.catalogs.ingest import ingest_fits
from lensengine.catalogs.store import SurveyStore
from lensengine.catalogs.validate import validate_store

RA0, DEC0 = 150.1, 2.2


def gaussian(n: int, scale: float, sigma_arcsec: float = 0.8, flux: float = 1000.0, offset=(0.0, 0.0)):
    """A Gaussian source of total ``flux`` at the image centre (+ offset in arcsec) plus a little noise."""
    y, x = np.mgrid[:n, :n]
    c = (n - 1) / 2
    s = sigma_arcsec / scale
    g = np.exp(-(((x - c - offset[0] / scale) ** 2 + (y - c - offset[1] / scale) ** 2) / (2 * s * s)))
    return flux * g / g.sum()


def make_wcs(n: int, scale: float, ra=RA0, dec=DEC0) -> fits.Header:
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [ra, dec]
    w.wcs.crpix = [(n + 1) / 2, (n + 1) / 2]
    w.wcs.cdelt = [-scale / 3600, scale / 3600]
    return w.to_header()


@pytest.mark.parametrize("in_scale,out_scale,n_out", [(0.05, 0.1, 200), (0.1, 0.3, 66), (0.3, 0.1, 200),
                                                      (0.13, 0.3, 66)])
def test_resampling_conserves_flux(in_scale, out_scale, n_out):
    n_in = int(round(26 / in_scale))
    image = gaussian(n_in, in_scale, offset=(0.37, -0.52))
    centre = ((n_in - 1) / 2 + 0.3, (n_in - 1) / 2 - 0.2)
    stamp, clipped = cut_and_resample(image, centre, in_scale, out_scale, n_out)
    assert not clipped and stamp.shape == (n_out, n_out)
    assert stamp.sum() == pytest.approx(image.sum(), rel=1e-5)


def test_edge_clipping_fills_without_nan():
    image = np.random.default_rng(3).normal(5.0, 0.1, (100, 100))
    stamp, clipped = cut_and_resample(image, (5.0, 50.0), 0.1, 0.1, 200)
    assert clipped and np.isfinite(stamp).all()
    assert np.median(stamp[:, :10]) == pytest.approx(5.0, abs=0.2)  # filled with a sky-like level


def write_bologna(root, rng):
    """Two challenge cutouts (IDs 100, 101); 101 lacks Y."""
    images = {}
    for cid in ("100", "101"):
        for band, n in (("VIS", 200), ("Y", 66), ("J", 66), ("H", 66)):
            if cid == "101" and band == "Y":
                continue  # a missing band: Y <- J
            d = root / f"EUC_{band}"
            d.mkdir(parents=True, exist_ok=True)
            images[cid, band] = rng.normal(0, 1, (n, n)).astype(np.float32)
            fits.PrimaryHDU(images[cid, band]).writeto(d / f"imageEUC_{band}-{cid}.fits")
    return images


def test_bologna_layout(tmp_path):
    root = tmp_path / "challenge"
    images = write_bologna(root, np.random.default_rng(0))
    result = ingest_fits([root], tmp_path / "b.zarr", chunk_size=32, progress=False)
    assert result.layout == "bologna" and result.n_cutouts == 2
    batch = SurveyStore.open(tmp_path / "b.zarr").read_chunk("fits", 0)
    np.testing.assert_array_equal(batch.object_id, [100, 101])
    np.testing.assert_allclose(batch.vis[0], images["100", "VIS"], atol=1e-5)  # native grid: identity
    np.testing.assert_allclose(batch.nisp[0, 2], images["100", "H"], atol=1e-5)
    assert batch.flags[0] == 0
    assert batch.flags[1] == np.uint32(Flag.BAND_DUPLICATED)
    np.testing.assert_array_equal(batch.nisp[1, 0], batch.nisp[1, 1])  # Y duplicated from J
    assert validate_store(tmp_path / "b.zarr") == []


@pytest.mark.slow
def test_parallel_ingest_matches_serial(tmp_path):
    root = tmp_path / "challenge"
    write_bologna(root, np.random.default_rng(0))
    ingest_fits([root], tmp_path / "s.zarr", progress=False)
    ingest_fits([root], tmp_path / "p.zarr", chunk_size=1, workers=2, progress=False)  # one task per cutout
    serial = SurveyStore.open(tmp_path / "s.zarr").read("fits", 0, 2)
    parallel = SurveyStore.open(tmp_path / "p.zarr").read("fits", 0, 2)
    np.testing.assert_array_equal(parallel.nisp, serial.nisp)
    np.testing.assert_array_equal(parallel.flags, serial.flags)


def test_multi_extension_cutouts(tmp_path):
    vis = gaussian(400, 0.05)  # 20" at 0.05": resampled 2x
    j = gaussian(140, 0.15, sigma_arcsec=1.0)
    hdus = [fits.PrimaryHDU(header=fits.Header({"OBJID": 7})),
            fits.ImageHDU(vis, header=make_wcs(400, 0.05), name="VIS_FLUX"),
            fits.ImageHDU(j, header=make_wcs(140, 0.15), name="NIR_J_FLUX"),
            fits.ImageHDU(j * 2, header=make_wcs(140, 0.15), name="NIR_H_FLUX")]
    fits.HDUList(hdus).writeto(tmp_path / "c7.fits")
    other = [fits.PrimaryHDU(), fits.ImageHDU(vis, header=make_wcs(400, 0.05, ra=150.2), name="F814W")]
    fits.HDUList(other).writeto(tmp_path / "c8.fits")
    result = ingest_fits([tmp_path / "c7.fits", tmp_path / "c8.fits"], tmp_path / "m.zarr", band_map={"VIS": "F814W"},
                         progress=False)
    assert result.layout == "cutouts" and result.n_cutouts == 2
    batch = SurveyStore.open(tmp_path / "m.zarr").read_chunk("fits", 0)
    assert batch.object_id[0] == 7
    assert batch.ra[0] == pytest.approx(RA0, abs=1e-6) and batch.dec[0] == pytest.approx(DEC0, abs=1e-6)
    assert batch.ra[1] == pytest.approx(150.2, abs=1e-6)
    # --band VIS=F814W replaces the default VIS_FLUX name: c7 gets VIS from J (Y absent)
    assert batch.flags[0] == np.uint32(Flag.BAND_DUPLICATED)
    assert batch.vis[1].sum() == pytest.approx(vis.sum(), rel=1e-5)  # flux conserved 0.05" -> 0.1"
    assert batch.nisp[0, 1].sum() == pytest.approx(j[3:-3, 3:-3].sum(), rel=1e-3)  # 19.8" of a 21" image
    np.testing.assert_array_equal(batch.nisp[0, 0], batch.nisp[0, 1])
    np.testing.assert_allclose(batch.nisp[0, 2], 2 * batch.nisp[0, 1], rtol=1e-5)
    with pytest.raises(ValueError, match="no HDU matches any band"):
        ingest_fits([tmp_path / "c8.fits"], tmp_path / "x.zarr", progress=False)


def test_mosaic_with_catalogue(tmp_path, cli_root):
    vis = np.zeros((600, 600))
    vis += gaussian(600, 0.1, offset=(0.0, 0.0))
    fits.PrimaryHDU(vis, header=make_wcs(600, 0.1)).writeto(tmp_path / "mosaic_vis.fits")
    header = make_wcs(200, 0.3)
    header["FILTER"] = "F160W"
    fits.PrimaryHDU(gaussian(200, 0.3, sigma_arcsec=1.2), header=header).writeto(tmp_path / "mosaic_ir.fits")
    # a source at the centre, one 27" from the centre (its stamp runs off the 60" mosaic), one outside
    Table({"id": [11, 12, 13], "ra": [RA0, RA0 - 27 / 3600 / np.cos(np.radians(DEC0)), RA0 + 0.1],
           "dec": [DEC0, DEC0, DEC0]}).write(tmp_path / "sources.csv")
    result = CliRunner().invoke(cli_root, [
        "store", "from-fits", str(tmp_path / "mosaic_vis.fits"), str(tmp_path / "mosaic_ir.fits"),
        "--catalog", str(tmp_path / "sources.csv"), "--band", "H=F160W", "--out", str(tmp_path / "mo.zarr")])
    assert result.exit_code == 0, result.output
    assert "wrote 3 cutouts (mosaic layout)" in result.output
    batch = SurveyStore.open(tmp_path / "mo.zarr").read_chunk("fits", 0)
    np.testing.assert_array_equal(batch.object_id, [11, 12, 13])
    dup, edge = np.uint32(Flag.BAND_DUPLICATED), np.uint32(Flag.EDGE_CLIPPED)
    assert batch.flags[0] == dup and batch.flags[1] == dup | edge and batch.flags[2] == dup | edge
    assert np.isfinite(batch.vis).all() and np.isfinite(batch.nisp).all()
    assert batch.vis[0].sum() == pytest.approx(vis.sum(), rel=1e-4)
    assert np.unravel_index(np.argmax(batch.vis[0]), (200, 200)) in {(99, 99), (99, 100), (100, 99), (100, 100)}
    np.testing.assert_array_equal(batch.nisp[0, 1], batch.nisp[0, 2])  # J <- H (nearest available)
    again = CliRunner().invoke(cli_root, ["store", "from-fits", str(tmp_path / "mosaic_vis.fits"),
                                          "--catalog", str(tmp_path / "sources.csv"),
                                          "--out", str(tmp_path / "mo.zarr")])
    assert again.exit_code == 2 and "--overwrite" in again.output


def test_missing_pixel_scale_is_bad_input(tmp_path, cli_root):
    fits.PrimaryHDU(np.ones((50, 50))).writeto(tmp_path / "nowcs.fits")
    result = CliRunner().invoke(cli_root, ["store", "from-fits", str(tmp_path / "nowcs.fits"), "--band", "VIS=0",
                                           "--out", str(tmp_path / "n.zarr")])
    assert result.exit_code == 2 and "--pixel-scale VIS=ARCSEC" in result.output


def test_hst_sdssj0946_ingests(real_dir, tmp_path, cli_root):
    data = real_dir / "hst_sdssj0946" / "data.fits"
    out = tmp_path / "hst.zarr"
    result = CliRunner().invoke(cli_root, [
        "store", "from-fits", str(data), "--band", "VIS=PRIMARY", "--pixel-scale", "VIS=0.05",
        "--ra", "09:46:56.68", "--dec", "+10:06:52.8", "--survey", "HST-ACS", "--tile", "sdssj0946",
        "--out", str(out)])
    assert result.exit_code == 0, result.output
    batch = SurveyStore.open(out).read_chunk("sdssj0946", 0)
    assert len(batch) == 1
    assert batch.ra[0] == pytest.approx(146.73617, abs=1e-4) and batch.dec[0] == pytest.approx(10.11467, abs=1e-4)
    assert batch.flags[0] == np.uint32(Flag.BAND_DUPLICATED | Flag.EDGE_CLIPPED)  # 14" image in a 20" stamp
    assert np.isfinite(batch.vis).all() and np.isfinite(batch.nisp).all()
    raw = fits.getdata(data)
    assert batch.vis[0].sum() > 0.99 * raw.sum()  # all the flux, plus the sky-like fill around it
    np.testing.assert_array_equal(batch.nisp[0, 0], batch.nisp[0, 2])
    assert validate_store(out) == []
