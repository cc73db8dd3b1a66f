"""`lensengine run` on stores made by `lensengine store from-fits` (where users start)."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS
from click.testing import CliRunner

from lensengine.catalogs.flags import Flag
from lensengine.engine.cli import _register_plugin_commands, cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def _commands():
    _register_plugin_commands()


def _wcs(ra, dec, scale_arcsec, n):
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [ra, dec]
    w.wcs.crpix = [(n + 1) / 2, (n + 1) / 2]
    w.wcs.cdelt = [-scale_arcsec / 3600, scale_arcsec / 3600]
    return w.to_header()


def _write_cutout_files(directory, rng, n_files=5):
    """Euclid cutout-service-like files: VIS and NISP J only (Y and H missing), with WCS."""
    directory.mkdir()
    for i in range(n_files):
        ra, dec = 150.0 + 0.01 * i, 2.2
        vis = rng.gamma(2.0, 3.0, (220, 220)).astype(np.float32)
        vis[100:120, 100:120] += 100
        nir = rng.gamma(2.0, 40.0, (70, 70)).astype(np.float32)
        hdus = [fits.PrimaryHDU(),
                fits.ImageHDU(vis, header=_wcs(ra, dec, 0.1, 220), name="VIS_FLUX"),
                fits.ImageHDU(nir, header=_wcs(ra, dec, 0.3, 70), name="NIR_J_FLUX")]
        fits.HDUList(hdus).writeto(directory / f"cutout_{i}.fits")


def test_run_on_a_store_ingested_from_fits(tmp_path, rng, tiny_models):
    _write_cutout_files(tmp_path / "fits", rng)
    store = tmp_path / "ingested.zarr"
    ingest = CliRunner().invoke(cli, ["store", "from-fits", str(tmp_path / "fits"), "--out", str(store)])
    assert ingest.exit_code == 0, ingest.output
    run = CliRunner().invoke(cli, ["-q", "run", "--tiles", str(store), "--models", str(tiny_models),
                                   "--out", str(tmp_path / "c.fits"), "--threshold", "0"])
    assert run.exit_code == 0, run.output
    import pyarrow.parquet as pq

    scores = pq.read_table(tmp_path / "c_scores.parquet").to_pydict()
    assert len(scores["OBJECT_ID"]) == 5
    # missing Y and H were filled from J (the paper's rule) and flagged, and the cutouts are scored
    assert all(f & Flag.BAND_DUPLICATED for f in scores["FLAGS"])
    assert np.isfinite(scores["P_OU_JYH"]).all() and np.isfinite(scores["P_ENSEMBLE"]).all()


def test_sdss_j0946_from_real_hst_imaging(tmp_path, real_dir, published_onnx_dir):
    """The paper's Table 7 procedure on SDSS J0946+1006 (one HST band as VIS, the rest duplicated)."""
    data = real_dir / "hst_sdssj0946" / "data.fits"
    store = tmp_path / "j0946.zarr"
    ingest = CliRunner().invoke(cli, ["store", "from-fits", str(data), "--out", str(store), "--band", "VIS=PRIMARY",
                                      "--pixel-scale", "VIS=0.05", "--ra", "09:46:56.68", "--dec", "+10:06:52.8",
                                      "--survey", "HST-ACS", "--tile", "sdssj0946"])
    assert ingest.exit_code == 0, ingest.output
    run = CliRunner().invoke(cli, ["-q", "run", "--tiles", str(store), "--models", str(published_onnx_dir),
                                   "--model", "OU-66", "--model", "OU-200", "--out", str(tmp_path / "c.fits"),
                                   "--threshold", "0"])
    assert run.exit_code == 0, run.output
    import pyarrow.parquet as pq

    s = pq.read_table(tmp_path / "c_scores.parquet").to_pydict()
    assert len(s["OBJECT_ID"]) == 1 and s["FLAGS"][0] & Flag.BAND_DUPLICATED
    # the paper: OU-66 0.6873, OU-200 0.8228 (Table 7); ours must at least call it a lens with OU-200
    assert s["P_OU_200"][0] > 0.5
