"""Private helpers for FITS ingestion: finding images, their bands, pixel scales and centres.

Each reader turns its input layout into ``Source`` records: per cutout, a dict
band -> ``BandImage`` (a 2-D image, the pixel position of the stamp centre and
the pixel scale), plus object ID and sky position.
"""

from __future__ import annotations

import logging
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lensengine.catalogs.vocabulary import BANDS, PIXEL_SCALE

log = logging.getLogger(__name__)

#: Default names that identify a band: HDU names (multi-extension cutouts), the
#: Bologna challenge's directory names, FILTER values and file-name tokens.
DEFAULT_BAND_NAMES = {
    "VIS": ("VIS_FLUX", "EUC_VIS", "VIS"),
    "Y": ("NIR_Y_FLUX", "EUC_Y", "NIR_Y", "Y"),
    "J": ("NIR_J_FLUX", "EUC_J", "NIR_J", "J"),
    "H": ("NIR_H_FLUX", "EUC_H", "NIR_H", "H"),
}
_ID_KEYS = ("OBJECT_ID", "OBJ_ID", "OBJID", "ID")


@dataclass
class BandImage:
    image: np.ndarray          # (y, x), flux per pixel
    centre_xy: tuple[float, float]
    scale: float               # arcsec per pixel
    origin: str                # file[hdu], for messages


@dataclass
class Source:
    object_id: int
    ra: float
    dec: float
    bands: dict[str, BandImage]


def band_names(band_map: dict[str, str] | None) -> dict[str, tuple[str, ...]]:
    """Names identifying each band: the user's ``--band BAND=NAME`` first, then the defaults."""
    names = {b: DEFAULT_BAND_NAMES[b] for b in BANDS}
    for band, name in (band_map or {}).items():
        if band not in BANDS:
            raise ValueError(f"--band {band}={name}: {band!r} is not one of {', '.join(BANDS)}")
        names[band] = (name,)
    return names


def celestial_wcs(header):
    """The celestial WCS of a header, or None when it has none."""
    from astropy.wcs import WCS, FITSFixedWarning

    if not any(k.startswith("CTYPE") for k in header):
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        wcs = WCS(header).celestial
    return wcs if wcs.has_celestial else None


def wcs_scale(wcs) -> float:
    from astropy.wcs.utils import proj_plane_pixel_scales

    return float(np.mean(proj_plane_pixel_scales(wcs)) * 3600.0)


def pixel_scale(band: str, wcs, options: dict[str, float] | None, origin: str, default: float | None) -> float:
    """Pixel scale from ``--pixel-scale`` (wins), else the WCS, else ``default``; else an error."""
    given = (options or {}).get(band)
    if given is not None:
        if wcs is not None and abs(wcs_scale(wcs) / given - 1) > 0.01:
            log.warning("%s: --pixel-scale %s=%g overrides the WCS scale %.4g", origin, band, given, wcs_scale(wcs))
        return float(given)
    if wcs is not None:
        return wcs_scale(wcs)
    if default is not None:
        return default
    raise ValueError(f"{origin}: no WCS to give the pixel scale of band {band}; pass --pixel-scale {band}=ARCSEC")


def centre_of(image: np.ndarray) -> tuple[float, float]:
    return ((image.shape[1] - 1) / 2.0, (image.shape[0] - 1) / 2.0)


def object_id_from(header, fallback: int) -> int:
    for key in _ID_KEYS:
        value = header.get(key)
        if isinstance(value, (int, np.integer)) or (isinstance(value, str) and value.strip().isdigit()):
            return int(value)
    return fallback


def sky_of(wcs, xy: tuple[float, float]) -> tuple[float, float]:
    if wcs is None:
        return float("nan"), float("nan")
    coord = wcs.pixel_to_world(*xy).icrs
    return float(coord.ra.deg), float(coord.dec.deg)


def _image_hdu(hdul, origin: str):
    for hdu in hdul:
        if hdu.data is not None and getattr(hdu.data, "ndim", 0) == 2:
            return hdu
    raise ValueError(f"{origin}: no 2-D image HDU")


# --- layout 1: the Bologna lens-finding challenge -------------------------------

def bologna_ids(root: Path, names: dict[str, tuple[str, ...]]) -> tuple[dict[str, Path], list[str]]:
    """Band directories under ``root`` (``EUC_VIS`` ...) and the sorted union of the cutout IDs."""
    dirs = {}
    for band in BANDS:
        for name in names[band]:
            if (root / name).is_dir():
                dirs[band] = root / name
                break
    if not dirs:
        raise ValueError(f"{root}: no band directories (expected EUC_VIS, EUC_Y, EUC_J, EUC_H or --band names)")
    ids = set()
    for band, d in dirs.items():
        pattern = re.compile(rf"^image{re.escape(d.name)}-(.+)\.fits(\.gz)?$", re.IGNORECASE)
        ids |= {m.group(1) for f in d.iterdir() if (m := pattern.match(f.name))}
    return dirs, sorted(ids, key=lambda s: (not s.isdigit(), int(s) if s.isdigit() else 0, s))


def read_bologna(dirs: dict[str, Path], cutout_id: str, index: int, scales: dict[str, float] | None) -> Source:
    from astropy.io import fits

    bands, ra, dec = {}, float("nan"), float("nan")
    for band, d in dirs.items():
        path = next((p for p in (d / f"image{d.name}-{cutout_id}.fits", d / f"image{d.name}-{cutout_id}.fits.gz")
                     if p.is_file()), None)
        if path is None:
            continue
        with fits.open(path) as hdul:
            hdu = _image_hdu(hdul, str(path))
            wcs = celestial_wcs(hdu.header)
            image = np.array(hdu.data, dtype=np.float64)
        centre = centre_of(image)
        bands[band] = BandImage(image, centre, pixel_scale(band, wcs, scales, str(path), PIXEL_SCALE[band]),
                                str(path))
        if np.isnan(ra) and wcs is not None:
            ra, dec = sky_of(wcs, centre)
    object_id = int(cutout_id) if cutout_id.isdigit() else index
    return Source(object_id, ra, dec, bands)


# --- layout 2: multi-extension cutout files -------------------------------------

def read_mef(path: Path, index: int, names: dict[str, tuple[str, ...]], scales: dict[str, float] | None,
             radec: tuple[float, float] | None = None) -> Source:
    from astropy.io import fits

    bands, ra, dec, object_id = {}, float("nan"), float("nan"), index
    with fits.open(path) as hdul:
        by_name = {(hdu.name or "").upper(): hdu for hdu in hdul}
        object_id = object_id_from(hdul[0].header, index)
        for band in BANDS:
            hdu = None
            for name in names[band]:
                if name.isdigit() and int(name) < len(hdul):
                    hdu = hdul[int(name)]
                else:
                    hdu = by_name.get(name.upper())
                if hdu is not None and hdu.data is not None:
                    break
                hdu = None
            if hdu is None:
                continue
            origin = f"{path}[{hdu.name or band}]"
            wcs = celestial_wcs(hdu.header)
            image = np.array(hdu.data, dtype=np.float64)
            if image.ndim != 2:
                raise ValueError(f"{origin}: expected a 2-D image, got shape {image.shape}")
            centre = centre_of(image)
            bands[band] = BandImage(image, centre, pixel_scale(band, wcs, scales, origin, None), origin)
            if np.isnan(ra) and wcs is not None:
                ra, dec = sky_of(wcs, centre)
    if not bands:
        found = ", ".join(repr(n) for n in by_name) or "none"
        raise ValueError(f"{path}: no HDU matches any band (HDU names: {found}); map one with --band VIS=NAME")
    if radec is not None:
        ra, dec = radec
    return Source(object_id, ra, dec, bands)


# --- layout 3: survey mosaics + a source catalogue --------------------------------

def mosaic_bands(paths: list[Path], names: dict[str, tuple[str, ...]]) -> dict[str, Path]:
    """Which mosaic is which band: FILTER/EXTNAME header values or file-name tokens."""
    from astropy.io import fits

    found: dict[str, Path] = {}
    for path in paths:
        header = fits.getheader(path)
        tokens = {t.upper() for t in re.split(r"[_\-.\s]+", path.name)}
        values = {str(header.get(k, "")).upper() for k in ("FILTER", "EXTNAME", "BAND")} - {""}
        for band in BANDS:
            if any(n.upper() in values or n.upper() in tokens or n.upper() == path.stem.upper() for n in names[band]):
                if band in found:
                    raise ValueError(f"mosaics {found[band]} and {path} both look like band {band}; use --band")
                found[band] = path
                break
        else:
            raise ValueError(f"{path}: cannot tell its band (FILTER {header.get('FILTER')!r}); use --band BAND=NAME")
    return found


def read_catalog_positions(path: Path, ra_col: str | None, dec_col: str | None, id_col: str | None):
    """(ids int64, ra deg, dec deg) from a FITS or CSV source catalogue."""
    from astropy.table import Table

    table = Table.read(path, format="csv" if path.suffix.lower() in (".csv", ".txt") else None)
    lower = {c.lower(): c for c in table.colnames}

    def pick(given, candidates, what):
        if given:
            if given not in table.colnames:
                raise ValueError(f"{path}: no column {given!r} (columns: {', '.join(table.colnames)})")
            return given
        for c in candidates:
            if c in lower:
                return lower[c]
        if what == "id":
            return None
        raise ValueError(f"{path}: no {what} column (tried {', '.join(candidates)}; columns: "
                         f"{', '.join(table.colnames)})")

    ra_name = pick(ra_col, ("ra", "ra_deg", "raj2000", "right_ascension"), "RA")
    dec_name = pick(dec_col, ("dec", "dec_deg", "dej2000", "decj2000", "declination"), "Dec")
    id_name = pick(id_col, ("object_id", "id", "objid", "source_id"), "id")
    ra = np.asarray(getattr(table[ra_name], "value", table[ra_name]), dtype=np.float64)
    dec = np.asarray(getattr(table[dec_name], "value", table[dec_name]), dtype=np.float64)
    ids = np.asarray(table[id_name], dtype=np.int64) if id_name else np.arange(len(table), dtype=np.int64)
    return ids, ra, dec


def read_mosaic_sources(mosaics: dict[str, Path], ids, ra, dec, scales: dict[str, float] | None) -> list[Source]:
    """Sources for catalogue rows (memory-mapped mosaics; one call per task)."""
    from astropy.coordinates import SkyCoord
    from astropy.io import fits

    opened = {}
    try:
        for band, path in mosaics.items():
            hdul = fits.open(path, memmap=True)
            hdu = _image_hdu(hdul, str(path))
            wcs = celestial_wcs(hdu.header)
            if wcs is None:
                raise ValueError(f"{path}: a mosaic needs a celestial WCS to place catalogue sources")
            opened[band] = (hdul, hdu.data, wcs, pixel_scale(band, wcs, scales, str(path), None))
        coords = SkyCoord(ra, dec, unit="deg", frame="icrs")
        out = [Source(int(i), float(r), float(d), {}) for i, r, d in zip(ids, ra, dec)]
        for band, (_, data, wcs, scale) in opened.items():
            x, y = wcs.world_to_pixel(coords)
            for k, src in enumerate(out):
                src.bands[band] = BandImage(data, (float(x[k]), float(y[k])), scale, str(mosaics[band]))
        for src in out:  # read the pixels now, while the files are open
            for band, b in src.bands.items():
                b.image = _window(b, max(NATIVE_FIELD_ARCSEC / b.scale, 4))
        return out
    finally:
        for hdul, *_ in opened.values():
            hdul.close()


NATIVE_FIELD_ARCSEC = 20.0


def _window(b: BandImage, size_px: float) -> np.ndarray:
    """Copy the part of a mosaic around a stamp (with a margin) and shift the centre into it."""
    half = int(np.ceil(size_px / 2)) + 2
    x, y = b.centre_xy
    ny, nx = b.image.shape
    x0, y0 = int(np.floor(x)) - half, int(np.floor(y)) - half
    x1, y1 = x0 + 2 * half + 1, y0 + 2 * half + 1
    out = np.full((y1 - y0, x1 - x0), np.nan)
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x1, nx), min(y1, ny)
    if sx1 > sx0 and sy1 > sy0:
        out[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = b.image[sy0:sy1, sx0:sx1]
    b.centre_xy = (x - x0, y - y0)
    return out
