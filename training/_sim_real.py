"""Real galaxy morphologies for the simulator: cleaned HST/JWST stamps as light profiles.

The stamps of ``../shared/real/galaxies`` (read by
:mod:`lensengine.training.real_galaxies`) are cleaned (``clean_stamp``: no HST
noise or neighbours survive), block-summed to a modest size and cached once
per process; :func:`stamp_sb` evaluates one, scaled, rotated and mirrored, at
any (possibly ray-traced) positions by bilinear interpolation.  Only the
"sim" half of a fixed split of the galaxies is ever used
(:func:`real_galaxy_role`), so that the real-imaging check can score the other
half as galaxies no network trained on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from lensengine.training._sim_render import pixel_average, subpixel_grid, unit_on_grid, window

log = logging.getLogger(__name__)

__all__ = ["REAL_SOURCE_FRACTION", "REAL_NEIGHBOUR_FRACTION", "STAMP_MAX", "Stamp", "real_galaxy_role",
           "real_stamps", "stamps_disabled", "stamp_sb", "add_stamp_galaxy"]

#: fractions of survey-lens sources and of sky-field neighbours drawn from real stamps (when available)
REAL_SOURCE_FRACTION = 0.5
REAL_NEIGHBOUR_FRACTION = 0.3
STAMP_MAX = 64  # pixels: cleaned stamps are block-summed to at most this size (interpolation speed)
STAMP_MIN_PIXELS = 50  # cleaned stamps with fewer non-zero pixels carry no usable morphology
#: real galaxies the simulator never uses, so that the real-imaging checks stay independent of training
REAL_EXCLUDE_FOLDERS = ("jwst_etg_cosj100020",)


def real_galaxy_role(name: str) -> str:
    """``"sim"`` or ``"check"``: a fixed split of the real galaxies by a hash of their name.

    Half of the galaxies give the simulator its real morphologies; the other
    half (and COSJ100020, the hard real negative) are never simulated, so a
    real-imaging check on the "check" half is not scoring morphologies the
    networks were trained on.
    """
    import hashlib

    if name.split("/")[0] in REAL_EXCLUDE_FOLDERS:
        return "check"
    return "sim" if hashlib.sha1(name.encode()).digest()[0] % 2 == 0 else "check"


@dataclass(frozen=True)
class Stamp:
    """A cleaned real galaxy: unit-sum image, native pixel scale, flux centroid and half-light radius."""

    name: str
    image: np.ndarray  # float32, sums to 1
    pixel: float  # arcsec per pixel
    row0: float
    col0: float
    r_half: float  # arcsec


def _make_stamp(name: str, clean: np.ndarray, pixel: float) -> Stamp:
    f = int(np.ceil(max(clean.shape) / STAMP_MAX))
    if f > 1:
        ny, nx = (int(np.ceil(n / f)) * f for n in clean.shape)
        padded = np.zeros((ny, nx))
        padded[:clean.shape[0], :clean.shape[1]] = clean
        clean = padded.reshape(ny // f, f, nx // f, f).sum(axis=(1, 3))
        pixel = pixel * f
    rows, cols = np.indices(clean.shape)
    total = clean.sum()
    r0, c0 = float((rows * clean).sum() / total), float((cols * clean).sum() / total)
    rad = np.hypot(rows - r0, cols - c0).ravel()
    order = np.argsort(rad)
    cum = np.cumsum(clean.ravel()[order]) / total
    r_half = max(float(rad[order][np.searchsorted(cum, 0.5)]), 0.5) * pixel
    return Stamp(name, (clean / total).astype(np.float32), float(pixel), r0, c0, r_half)


def stamps_disabled() -> bool:
    """``LENSENGINE_SIM_REAL=0``: draw analytic sources and neighbours on purpose, without the real stamps."""
    import os

    return os.environ.get("LENSENGINE_SIM_REAL", "1") == "0"


@lru_cache(maxsize=1)
def real_stamps() -> tuple[Stamp, ...]:
    """The cleaned "sim"-half real galaxies, or () when they cannot be had (no ../shared, or disabled).

    ``LENSENGINE_SIM_REAL=0`` disables them (analytic sources and neighbours
    only).  Cutouts drawn with and without real stamps differ, so a store
    records which it used (``source_type`` column, provenance).
    """
    if stamps_disabled():
        return ()
    try:
        from lensengine.training.real_galaxies import clean_stamp, load_real_galaxies

        galaxies = load_real_galaxies()
    except (ImportError, FileNotFoundError) as exc:
        log.info("real galaxy stamps unavailable (%s): analytic sources and neighbours only", exc)
        return ()
    out = []
    for g in galaxies:
        if real_galaxy_role(g.name) != "sim":
            continue
        try:
            clean = clean_stamp(g)
        except ValueError as exc:  # nothing above the threshold: no morphology to use
            log.debug("skipping real galaxy %s: %s", g.name, exc)
            continue
        if int((clean > 0).sum()) >= STAMP_MIN_PIXELS:
            out.append(_make_stamp(g.name, clean, float(g.pixel_scale)))
    return tuple(sorted(out, key=lambda st: st.name))


def stamp_sb(st: Stamp, x, y, cx: float, cy: float, r_e: float, angle: float, flip: bool) -> np.ndarray:
    """Surface brightness (unit flux, per arcsec²) of stamp ``st`` scaled to half-light radius ``r_e``,
    rotated by ``angle`` (mirrored when ``flip``) and centred on (cx, cy), at positions (x, y) - which may be
    ray-traced source-plane positions (bilinear interpolation in the stamp)."""
    from scipy.ndimage import map_coordinates

    scale = r_e / st.r_half
    dx, dy = (np.asarray(x, dtype=np.float64) - cx) / scale, (np.asarray(y, dtype=np.float64) - cy) / scale
    c, s = np.cos(angle), np.sin(angle)
    u, v = c * dx + s * dy, -s * dx + c * dy
    if flip:
        u = -u
    coords = np.stack([(st.row0 + v / st.pixel).ravel(), (st.col0 + u / st.pixel).ravel()])
    val = map_coordinates(st.image, coords, order=1, mode="constant", cval=0.0, prefilter=False)
    return (val / (st.pixel * scale) ** 2).reshape(np.shape(x)).astype(np.float32)


def add_stamp_galaxy(scene, rng, st: Stamp, g):
    """An unlensed real-stamp galaxy with the size, magnitudes and position of ``g`` (averaged over sub-pixel
    positions, and its flux normalised on the grid for the part the stamp window cuts off)."""
    half = min(max(4.0 * g.r_e, 1.0), 8.0)
    where = window(g.x, g.y, half)
    if where is None:
        return
    sx, sy = subpixel_grid(where[2], where[3])
    sb = pixel_average(stamp_sb(st, sx, sy, g.x, g.y, g.r_e, rng.uniform(0, 2 * np.pi), bool(rng.integers(2))))
    if sb.any():
        scene.add(unit_on_grid(sb), g.mags, where=where)
