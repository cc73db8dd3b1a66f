"""Real HST and JWST galaxy stamps from ``../shared/real/galaxies``, read in place.

The folder (its README and each sub-folder's MANIFEST say where every file comes
from) holds about 120 public space-telescope stamps of ordinary galaxies.  They
give simulations real morphologies (lensed sources, neighbours) and, degraded
to Euclid, a small real-negative check (:mod:`lensengine.training.realcheck`).
Nothing is copied into the project: files are opened where they lie.

Formats handled (one reader per kind of folder):

* GalSim "real galaxy" catalogues (``cosmos_hst_100``, ``cosmos_hst_10_bright``,
  ``cosmos_hst2_jwst2``, ``aegis_hst5``): a FITS table naming, per galaxy, the
  image file and HDU, the PSF file and HDU, the pixel scale and the magnitude;
  a companion ``*_fits.fits`` table gives the photo-z.  Files the catalogue
  names but the folder does not hold (some PSF files) give ``psf=None``.
  Where several rows of one catalogue name the same image HDU (the shipped
  ``real_galaxy_catalog_23.5.fits`` of ``cosmos_hst2_jwst2`` names HDU 2 twice),
  the HDU whose pixel sum matches the row's ``stamp_flux`` is used instead.
  Rows repeating an earlier ``IDENT`` (GalSim's noise-free test images in
  ``test_catalog.fits``) are skipped.  In ``aegis_hst5`` the F814W catalogue is
  the primary band and the F606W stamp of the same ``IDENT`` its extra band.
* COSMOS-Web multi-band cubes (``COSMOSWeb_galaxy_<id>_image.fits``): one HDU
  per NIRCam band (``EXTNAME``), 0.03″ pixels; F115W, the band nearest VIS, is
  the primary band; redshift from ``COSMOSWeb_galaxy_catalog.fits`` when listed.
* One folder per band with ``data.fits``/``psf.fits``/``info.json``
  (``jwst_etg_cosj100020``, MJy/sr): F115W primary; the 0.06″ long-wavelength
  bands are resampled onto the 0.03″ grid keeping surface brightness (MJy/sr
  is per unit area, so the area-weighted mean, not the sum, is preserved),
  aligned through the files' WCS.  In the delivered data the galaxy's F115W
  centroid sits about 0.07″ (2 pixels) south of the other three bands' (the
  per-band centres in ``info.json`` say the same); it is left as delivered.

Fields rather than galaxy stamps (the 543² ``*_masknoise.fits`` COSMOS field)
and noise correlation functions (``acs_*_cf.fits``) are not galaxies and are
not returned.

Background: every stamp is background-subtracted here with a robust estimate
from its border (the outer eighth on each side, at least 3 pixels), iteratively
clipped at 3σ so that neighbours and the galaxy's own wings do not bias it;
``noise_sigma`` is the clipped rms of the same pixels (per pixel; the HST
stamps' noise is correlated, which this rms does not describe).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

__all__ = ["RealGalaxy", "shared_real_root", "load_real_galaxies", "clean_stamp", "background"]

_REPO = Path(__file__).resolve().parents[1]
_FOLDERS = ("cosmos_hst_100", "cosmos_hst_10_bright", "cosmos_hst2_jwst2", "aegis_hst5",
            "jwst_etg_cosj100020")
_PRIMARY_JWST = "F115W"
_JWST_SCALE = 0.03  # arcsec/pixel of the COSMOS-Web cubes (README of the shared folder)
_COSJ100020_Z = 0.342  # spectroscopic redshift given in shared/real/README.md (not in info.json)


@dataclass(frozen=True)
class RealGalaxy:
    """One real galaxy stamp, background-subtracted, in its file's units."""

    name: str                 # "<folder>/<id>"
    image: np.ndarray         # float64 2-D stamp, background-subtracted
    pixel_scale: float        # arcsec / pixel
    band: str                 # "F814W", "F606W", "F115W", ...
    psf: np.ndarray | None    # unit-sum PSF on the stamp's grid, or None when not shipped
    noise_sigma: float        # robust per-pixel background rms
    mag: float | None         # catalogue magnitude (F814W / i-like) when known
    z: float | None           # photometric or catalogue redshift when known
    extra_bands: dict = field(default_factory=dict)  # {"F606W": array on the same grid, ...}


def shared_real_root() -> Path | None:
    """``$LENSENGINE_SHARED/real/galaxies`` or ``<repo>/../shared/real/galaxies``; None if absent."""
    base = os.environ.get("LENSENGINE_SHARED")
    root = (Path(base) if base else _REPO.parent / "shared") / "real" / "galaxies"
    return root if root.is_dir() else None


def load_real_galaxies(root: str | Path | None = None, *,
                       folders: tuple[str, ...] | list[str] | None = None) -> list[RealGalaxy]:
    """All real galaxies under ``root`` (default :func:`shared_real_root`), folder by folder.

    ``folders`` restricts to some of the sub-folders (names as in the README).
    Results are cached per (root, folders); the arrays are read-only so that the
    cache cannot be changed by a caller.  Raises FileNotFoundError naming the
    path when the folder (or a requested sub-folder) is absent.
    """
    if root is None:
        root = shared_real_root()
        if root is None:
            raise FileNotFoundError(
                "real galaxies not found: set LENSENGINE_SHARED or place shared/real/galaxies "
                f"next to the repository ({_REPO.parent / 'shared' / 'real' / 'galaxies'})")
    root = Path(root).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"real-galaxy folder {root} does not exist")
    wanted = tuple(folders) if folders is not None else tuple(
        f for f in _FOLDERS if (root / f).is_dir())
    for f in wanted:
        if f not in _FOLDERS:
            raise ValueError(f"unknown real-galaxy folder {f!r}; known: {', '.join(_FOLDERS)}")
        if not (root / f).is_dir():
            raise FileNotFoundError(f"real-galaxy folder {root / f} does not exist")
    galaxies = list(_load_cached(str(root), wanted))
    _hdus.cache_clear()  # the galaxies keep what they need; do not hold whole files
    return galaxies


@lru_cache(maxsize=8)
def _load_cached(root: str, folders: tuple[str, ...]) -> tuple[RealGalaxy, ...]:
    out: list[RealGalaxy] = []
    for folder in folders:
        path = Path(root) / folder
        if folder == "jwst_etg_cosj100020":
            out.append(_read_band_folders(path))
            continue
        out.extend(_read_galsim_folder(path))
        for cube in sorted(path.glob("COSMOSWeb_galaxy_*_image.fits")):
            out.append(_read_cosmosweb(cube))
    return tuple(out)


# ----------------------------------------------------------------------------- background


def background(image: np.ndarray) -> tuple[float, float]:
    """(level, rms) of a stamp's border pixels, clipped iteratively at 3σ (see module docstring)."""
    ny, nx = image.shape
    by, bx = max(3, ny // 8), max(3, nx // 8)
    border = np.ones(image.shape, bool)
    border[by:ny - by, bx:nx - bx] = False
    values = image[border & np.isfinite(image)]
    if values.size < 10:
        raise ValueError(f"stamp of shape {image.shape} has too few finite border pixels for a background")
    keep = values
    for _ in range(10):
        level = float(np.median(keep))
        rms = 1.4826 * float(np.median(np.abs(keep - level)))
        if rms <= 0:
            break
        new = values[np.abs(values - level) < 3 * rms]
        if new.size == keep.size:
            break
        keep = new
    level = float(np.mean(keep))
    rms = float(np.std(keep))
    return level, rms


def _subtract(image: np.ndarray) -> tuple[np.ndarray, float]:
    image = np.asarray(image, dtype=np.float64)
    level, rms = background(image)
    out = np.where(np.isfinite(image), image - level, 0.0)
    return _frozen(out), rms


def _frozen(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a, dtype=np.float64)
    a.setflags(write=False)
    return a


def _unit_psf(psf: np.ndarray) -> np.ndarray:
    psf = np.asarray(psf, dtype=np.float64)
    total = psf.sum()
    if not np.isfinite(total) or total <= 0:
        raise ValueError(f"PSF of shape {psf.shape} has non-positive total {total}")
    return _frozen(psf / total)


# ----------------------------------------------------------------------------- readers


def _fits_image(path: Path, hdu: int) -> np.ndarray:
    """HDU ``hdu`` of ``path`` as float64; each file is parsed once per load (see _hdus)."""
    images = _hdus(str(path))
    if not 0 <= hdu < len(images) or images[hdu] is None:
        raise ValueError(f"{path} HDU {hdu} holds no 2-D image ({len(images)} HDUs)")
    return images[hdu]


@lru_cache(maxsize=16)
def _hdus(path: str) -> tuple[np.ndarray | None, ...]:
    # GalSim files hold one stamp per HDU (100 in cosmos_hst_100): opening the
    # file once per galaxy would parse every header again each time.
    from astropy.io import fits

    with fits.open(path, memmap=False) as h:
        out = tuple(_frozen(x.data) if x.data is not None and x.data.ndim == 2 else None for x in h)
    return out


def _table(path: Path):
    from astropy.io import fits

    with fits.open(path, memmap=False) as h:
        return h[1].data.copy()


def _galsim_catalogues(folder: Path) -> list[Path]:
    """The main catalogues of a GalSim real-galaxy folder (not the ``*_fits.fits`` companions)."""
    cats = [p for p in sorted(folder.glob("*catalog*.fits"))
            if not p.name.endswith("_fits.fits") and "COSMOSWeb" not in p.name]
    # AEGIS: F606W is read as the extra band of the F814W rows, never on its own.
    return [p for p in cats if "F606w" not in p.name]


def _redshifts(cat: Path) -> dict[int, float]:
    companion = cat.with_name(cat.stem + "_fits.fits")
    if not companion.is_file():
        return {}
    t = _table(companion)
    col = next((c for c in t.columns.names if c.lower() == "zphot"), None)
    if col is None:
        return {}
    return {int(i): float(z) for i, z in zip(t["IDENT"], t[col]) if np.isfinite(z) and z > 0}


def _resolve_hdus(folder: Path, rows) -> list[int]:
    """The image HDU per row; duplicates within a catalogue resolved by ``stamp_flux`` (docstring)."""
    hdus = [int(r["GAL_HDU"]) for r in rows]
    keys = [(str(r["GAL_FILENAME"]).strip(), h) for r, h in zip(rows, hdus)]
    if len(set(keys)) == len(keys) or "stamp_flux" not in rows.columns.names:
        return hdus
    resolved = []
    for r, (fname, h) in zip(rows, keys):
        if keys.count((fname, h)) == 1:
            resolved.append(h)
            continue
        sums = [np.nansum(a) if a is not None else np.nan for a in _hdus(str(folder / fname))]
        diffs = np.abs(np.array(sums, dtype=np.float64) - float(r["stamp_flux"]))
        best = int(np.nanargmin(diffs))
        if diffs[best] > 0.01 * abs(float(r["stamp_flux"])):
            raise ValueError(f"{folder / fname}: no HDU matches stamp_flux {r['stamp_flux']} "
                             f"of IDENT {r['IDENT']} (catalogue names HDU {h} more than once)")
        resolved.append(best)
    return resolved


def _read_galsim_folder(folder: Path) -> list[RealGalaxy]:
    out: list[RealGalaxy] = []
    seen: set[int] = set()
    for cat in _galsim_catalogues(folder):
        rows = _table(cat)
        zs = _redshifts(cat)
        extra_cat = cat.with_name(cat.name.replace("F814w", "F606w"))
        extra_rows = ({int(r["IDENT"]): r for r in _table(extra_cat)}
                      if extra_cat != cat and extra_cat.is_file() else {})
        for r, hdu in zip(rows, _resolve_hdus(folder, rows)):
            ident = int(r["IDENT"])
            if ident in seen:
                continue
            seen.add(ident)
            image, sigma = _subtract(_fits_image(folder / str(r["GAL_FILENAME"]).strip(), hdu))
            psf_file = folder / str(r["PSF_FILENAME"]).strip()
            psf = _unit_psf(_fits_image(psf_file, int(r["PSF_HDU"]))) if psf_file.is_file() else None
            extra = {}
            if ident in extra_rows:
                e = extra_rows[ident]
                e_img, _ = _subtract(_fits_image(folder / str(e["GAL_FILENAME"]).strip(), int(e["GAL_HDU"])))
                if e_img.shape != image.shape:
                    raise ValueError(f"{extra_cat}: IDENT {ident} stamp {e_img.shape} does not match "
                                     f"the primary band's {image.shape}")
                extra[str(e["BAND"]).strip()] = e_img
            mag = float(r["MAG"])
            out.append(RealGalaxy(
                name=f"{folder.name}/{ident}", image=image,
                pixel_scale=round(float(r["PIXEL_SCALE"]), 6),  # float32 in the file
                band=str(r["BAND"]).strip(), psf=psf, noise_sigma=sigma,
                mag=mag if np.isfinite(mag) and mag > 0 else None, z=zs.get(ident), extra_bands=extra))
    return out


def _read_cosmosweb(path: Path) -> RealGalaxy:
    from astropy.io import fits

    ident = path.name.removeprefix("COSMOSWeb_galaxy_").removesuffix("_image.fits")
    cat = path.with_name("COSMOSWeb_galaxy_catalog.fits")
    z = None
    if cat.is_file():
        t = _table(cat)
        hit = [float(zz) for i, zz in zip(t["id"], t["z"]) if str(int(i)) == ident]
        z = hit[0] if hit else None
    bands: dict[str, tuple[np.ndarray, float]] = {}
    with fits.open(path, memmap=False) as h:
        for hdu in h[1:]:
            name = str(hdu.header.get("EXTNAME", "")).strip().upper()
            if hdu.data is None or not name:
                raise ValueError(f"{path}: HDU without a band name (EXTNAME) or data")
            bands[name] = _subtract(np.array(hdu.data, dtype=np.float64))
    if _PRIMARY_JWST not in bands:
        raise ValueError(f"{path}: no {_PRIMARY_JWST} extension; found {sorted(bands)}")
    image, sigma = bands.pop(_PRIMARY_JWST)
    return RealGalaxy(name=f"{path.parent.name}/COSMOSWeb_{ident}", image=image,
                      pixel_scale=_JWST_SCALE, band=_PRIMARY_JWST, psf=None, noise_sigma=sigma,
                      mag=None, z=z, extra_bands={b: a for b, (a, _) in bands.items()})


def _read_band_folders(folder: Path) -> RealGalaxy:
    info = json.loads((folder / "info.json").read_text())
    name = str(info.get("data_name", folder.name))
    primary = folder / _PRIMARY_JWST
    p_info = json.loads((primary / "info.json").read_text())
    scale = float(p_info["pixel_scale"])
    image, sigma = _subtract(_fits_image(primary / "data.fits", 0))
    psf = _unit_psf(_fits_image(primary / "psf.fits", 0))
    extra = {}
    for band_dir in sorted(p for p in folder.iterdir() if p.is_dir() and p.name != _PRIMARY_JWST):
        b_scale = float(json.loads((band_dir / "info.json").read_text())["pixel_scale"])
        data, _ = _subtract(_fits_image(band_dir / "data.fits", 0))
        if b_scale != scale or data.shape != image.shape:
            data = _onto_grid(data, band_dir / "data.fits", b_scale, primary / "data.fits",
                              image.shape, scale)
        extra[band_dir.name] = _frozen(data)
    return RealGalaxy(name=f"{folder.name}/{name}", image=image, pixel_scale=scale,
                      band=_PRIMARY_JWST, psf=psf, noise_sigma=sigma, mag=None,
                      z=_COSJ100020_Z, extra_bands=extra)


def _onto_grid(data: np.ndarray, data_file: Path, data_scale: float, grid_file: Path,
               grid_shape: tuple[int, int], grid_scale: float) -> np.ndarray:
    """Resample a surface-brightness image onto another band's grid (area-weighted mean).

    The two grids are aligned through their WCS (the cutouts share the sky
    centre to a fraction of a pixel, not exactly); both are north-aligned, so an
    offset and a scale ratio describe the mapping.
    """
    import warnings

    from astropy.io import fits
    from astropy.wcs import WCS, FITSFixedWarning

    from lensengine.catalogs._resample import overlap_matrix

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)  # harmless OBSGEO fix-ups in JWST headers
        w_grid = WCS(fits.getheader(grid_file))
        w_data = WCS(fits.getheader(data_file))
    if not (np.allclose(w_grid.wcs.get_pc(), w_data.wcs.get_pc())):
        raise ValueError(f"{data_file} and {grid_file} are rotated relative to each other")
    sky = w_grid.pixel_to_world_values((grid_shape[1] - 1) / 2, (grid_shape[0] - 1) / 2)
    cx, cy = (float(v) for v in w_data.world_to_pixel_values(*sky))
    ratio = grid_scale / data_scale
    wy = overlap_matrix(data.shape[0], cy, grid_shape[0], ratio)
    wx = overlap_matrix(data.shape[1], cx, grid_shape[1], ratio)
    return (wy @ data @ wx.T) / (ratio * ratio)


# ----------------------------------------------------------------------------- cleaning


def clean_stamp(g: RealGalaxy, nsigma: float = 2.0) -> np.ndarray:
    """A noise-free-looking light profile of ``g``: smoothed, thresholded, isolated, unit flux.

    Why: real stamps carry their own noise and neighbours; lensing or degrading
    them as they are would add HST noise (correlated, far below Euclid's) and
    stray galaxies.  Steps: a light Gaussian smoothing (σ = 1 pixel) lowers the
    noise; pixels of the smoothed stamp above ``nsigma`` times the smoothed
    background rms form segments; the segment at the centre (or, if the centre
    is below threshold, the brightest segment within a quarter of the stamp
    from it) is kept with its holes filled and grown by one pixel, everything
    else is set to 0; negatives are clipped; the result sums to 1.
    """
    from scipy import ndimage

    smooth = ndimage.gaussian_filter(np.asarray(g.image, dtype=np.float64), 1.0, mode="nearest")
    _, rms = background(smooth)
    if rms <= 0:
        raise ValueError(f"{g.name}: smoothed background rms is {rms}; cannot threshold")
    above = smooth > nsigma * rms
    labels, n = ndimage.label(above)
    if n == 0:
        raise ValueError(f"{g.name}: nothing above {nsigma}σ after smoothing")
    ny, nx = smooth.shape
    cy, cx = ny // 2, nx // 2
    keep = labels[cy, cx]
    if keep == 0:
        yy, xx = np.mgrid[:ny, :nx]
        near = np.hypot(yy - cy, xx - cx) <= max(ny, nx) / 4
        fluxes = ndimage.sum_labels(np.where(near, smooth, 0.0), labels, index=np.arange(1, n + 1))
        if not np.any(fluxes > 0):
            raise ValueError(f"{g.name}: no segment above {nsigma}σ near the stamp centre")
        keep = int(np.argmax(fluxes)) + 1
    mask = ndimage.binary_fill_holes(labels == keep)
    mask = ndimage.binary_dilation(mask, iterations=1)
    out = np.clip(np.where(mask, smooth, 0.0), 0.0, None)
    total = out.sum()
    if total <= 0:
        raise ValueError(f"{g.name}: cleaned stamp has no flux")
    return out / total
