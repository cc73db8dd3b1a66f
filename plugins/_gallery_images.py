"""Display stretches for visual inspection, and a small PNG writer (numpy + zlib only).

Why these views: a faint arc a few tenths of an arcsecond from a bright lens galaxy vanishes under a linear
or a log stretch scaled to the galaxy's core.  The asinh stretch here is set by the image's own noise (linear
near the noise, logarithmic for bright light), so arcs at a few sigma stay visible beside the core.  The
lens-subtracted view removes a smooth elliptical model of the central galaxy (the median light in elliptical
rings), which leaves what that galaxy does not explain: arcs, counter-images, neighbours.  The colour
composite follows Lupton et al. (2004): one asinh stretch applied to the summed intensity and the bands
scaled by the same factor, so colours stay true where the intensity saturates.  Everything is numpy: an
engine-only install (no matplotlib, scipy or Pillow) can build a gallery.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

__all__ = ["robust_background", "asinh_stretch", "lupton_rgb", "to_uint8", "write_png",
           "lens_light_model", "lens_subtracted"]

#: asinh softening in units of the noise sigma: below it the stretch is ~linear
ASINH_SOFTENING = 2.0


def robust_background(img: np.ndarray) -> tuple[float, float]:
    """(median, sigma) of an image's finite pixels, sigma from the median absolute deviation.

    Returns (0, 0) for an image without finite pixels; sigma falls back to the standard deviation, then to 1,
    when more than half the pixels are identical (a constant or mostly masked cutout).
    """
    x = np.asarray(img, dtype=np.float64)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return 0.0, 0.0
    med = float(np.median(x))
    sigma = 1.4826 * float(np.median(np.abs(x - med)))
    if not sigma > 0:
        sigma = float(x.std()) or 1.0
    return med, sigma


def asinh_stretch(img: np.ndarray, *, softening: float = ASINH_SOFTENING, upper_percentile: float = 99.9,
                  lower_sigma: float = 0.5, upper_sigma: float | None = None) -> np.ndarray:
    """Noise-scaled asinh stretch of an image to [0, 1].

    The image is background-subtracted and divided by its noise sigma; ``asinh(x / softening)`` is then scaled
    so that ``-lower_sigma`` maps to 0 and the ``upper_percentile`` of the pixels to 1 (but never less than
    ``upper_sigma``, when given: an image of pure noise is not stretched to white).  Non-finite pixels become 0 (black).
    """
    med, sigma = robust_background(img)
    x = (np.asarray(img, dtype=np.float64) - med) / (sigma or 1.0)
    finite = np.isfinite(x)
    x = np.where(finite, x, -lower_sigma)
    top = float(np.percentile(x[finite], upper_percentile)) if finite.any() else 1.0
    if upper_sigma is not None:
        top = max(top, float(upper_sigma))
    lo = np.arcsinh(-lower_sigma / softening)
    hi = max(np.arcsinh(top / softening), lo + 1e-6)
    return np.clip((np.arcsinh(x / softening) - lo) / (hi - lo), 0.0, 1.0)


def _box_mean(x: np.ndarray, size: int) -> np.ndarray:
    """``size`` x ``size`` box mean (edges replicated)."""
    r = size // 2
    p = np.pad(x, r, mode="edge")
    return sum(p[i:i + x.shape[0], j:j + x.shape[1]] for i in range(size) for j in range(size)) / size ** 2


def lens_light_model(img: np.ndarray, *, search: float = 0.25, moment_radius: float = 12.0) -> np.ndarray:
    """A smooth elliptical model of the central galaxy's light: the median of the image in elliptical rings.

    The centre is the brightest pixel of the 7 x 7 smoothed image within ``search`` of the cutout's side from
    its centre (smoothing enough that a bright arc does not win over the galaxy it surrounds), refined by the
    light-weighted centroid within 3 pixels; the axis ratio and angle come from the second moments of the
    pixels above 3 sigma within ``moment_radius`` pixels (1.2 arcsec in VIS: mostly the galaxy, whose shape a
    small radius would round off).  The model is the median in rings half a pixel
    wide in that elliptical radius, so an arc (which covers only part of its ring) is left out of it while
    the galaxy, round or elongated, is followed at every radius.  Non-finite pixels count as the background.
    """
    x = np.asarray(img, dtype=np.float64)
    med, sigma = robust_background(x)
    x = np.where(np.isfinite(x), x, med)
    h, w = x.shape
    yy, xx = np.mgrid[:h, :w].astype(np.float64)
    cy, cx = (h - 1) / 2, (w - 1) / 2
    near = (np.abs(yy - cy) <= search * h) & (np.abs(xx - cx) <= search * w)
    smooth = np.where(near, _box_mean(x, 7), -np.inf)
    py, px = np.unravel_index(int(np.argmax(smooth)), x.shape)
    core = (np.hypot(yy - py, xx - px) <= 3) * np.clip(x - med, 0, None)
    if core.sum() > 0:
        py, px = (core * yy).sum() / core.sum(), (core * xx).sum() / core.sum()
    dy, dx = yy - py, xx - px
    weight = np.where((np.hypot(dy, dx) <= moment_radius) & (x - med > 3 * sigma), x - med, 0.0)
    q, cos, sin = 1.0, 1.0, 0.0
    if weight.sum() > 0:
        cov = np.array([[(weight * dx * dx).sum(), (weight * dx * dy).sum()],
                        [(weight * dx * dy).sum(), (weight * dy * dy).sum()]]) / weight.sum()
        values, vectors = np.linalg.eigh(cov)
        if values[1] > 0:
            q = float(np.clip(np.sqrt(max(values[0], 0.0) / values[1]), 0.2, 1.0))
            cos, sin = float(vectors[0, 1]), float(vectors[1, 1])
    major = dx * cos + dy * sin
    minor = -dx * sin + dy * cos
    radius = np.sqrt(major ** 2 * q + minor ** 2 / q)
    bins = np.floor(radius * 2).astype(np.int64).ravel()
    order = np.lexsort((x.ravel(), bins))  # by ring, then by value within the ring
    flat_bins, flat_x = bins[order], x.ravel()[order]
    starts = np.flatnonzero(np.r_[True, flat_bins[1:] != flat_bins[:-1]])
    counts = np.diff(np.r_[starts, flat_bins.size])
    profile = 0.5 * (flat_x[starts + (counts - 1) // 2] + flat_x[starts + counts // 2])  # each ring's median
    return profile[np.searchsorted(flat_bins[starts], bins)].reshape(x.shape)


def lens_subtracted(img: np.ndarray, *, upper_sigma: float = 10.0) -> np.ndarray:
    """Lens-light-subtracted view in [0, 1]: the image minus :func:`lens_light_model`, asinh-stretched.

    What is left is what the smooth elliptical galaxy does not explain: arcs, counter-images, neighbours.
    White is the residual's 99.9th percentile but at least ``upper_sigma`` times the noise, so a field with
    nothing left stays dark grey noise.  A complete, even Einstein ring is part of every
    elliptical ring's median, so it is removed with the lens light; the asinh view still shows it.
    """
    x = np.asarray(img, dtype=np.float64)
    return asinh_stretch(x - lens_light_model(x), lower_sigma=0.5, upper_sigma=upper_sigma)


def lupton_rgb(red: np.ndarray, green: np.ndarray, blue: np.ndarray, *, q: float = 8.0,
               upper_percentile: float = 99.5) -> np.ndarray:
    """(S, S, 3) colour composite in [0, 1] after Lupton et al. (2004).

    Each band is background-subtracted (its median); the mean intensity ``I`` is stretched by
    ``asinh(q I) / asinh(q)`` after scaling ``I``'s ``upper_percentile`` to 1, and every band is multiplied
    by the same factor, so a pixel's colour is its flux ratio.  Saturated pixels are scaled down by their
    brightest band (the hue is kept, not clipped to white).  Missing (None) bands are black.
    """
    planes = []
    shape = next(np.shape(b) for b in (red, green, blue) if b is not None)
    for band in (red, green, blue):
        if band is None:
            planes.append(np.zeros(shape))
            continue
        med, _ = robust_background(band)
        b = np.asarray(band, dtype=np.float64) - med
        planes.append(np.where(np.isfinite(b), b, 0.0))
    rgb = np.stack(planes, axis=-1)
    intensity = rgb.mean(axis=-1)
    top = float(np.percentile(intensity, upper_percentile))
    if not top > 0:
        return np.zeros(rgb.shape)
    i = np.clip(intensity / top, 1e-12, None)
    factor = np.arcsinh(q * i) / (np.arcsinh(q) * i)
    out = np.clip(rgb / top * factor[..., None], 0.0, None)
    peak = np.maximum(out.max(axis=-1, keepdims=True), 1.0)
    return out / peak


def to_uint8(img: np.ndarray) -> np.ndarray:
    """[0, 1] floats to uint8 (NaN as 0)."""
    return (np.nan_to_num(np.clip(img, 0.0, 1.0)) * 255.0 + 0.5).astype(np.uint8)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def write_png(path, img: np.ndarray, *, flip: bool = True) -> int:
    """Write an 8-bit grey (H, W) or RGB (H, W, 3) image in [0, 1] as PNG; returns the bytes written.

    ``flip`` puts row 0 at the bottom (the astronomical convention the other figures use, origin="lower").
    Rows use the PNG "Sub" filter, which compresses sky noise a little better than none.
    """
    data = to_uint8(img)
    if flip:
        data = data[::-1]
    if data.ndim == 2:
        color, channels = 0, 1
        data = data[..., None]
    elif data.ndim == 3 and data.shape[2] == 3:
        color, channels = 2, 3
    else:
        raise ValueError(f"write_png {path}: expected (H, W) or (H, W, 3), got shape {data.shape}")
    h, w = data.shape[:2]
    flat = data.reshape(h, w * channels).astype(np.int16)
    sub = flat.copy()
    sub[:, channels:] -= flat[:, :-channels]
    rows = np.concatenate([np.ones((h, 1), np.uint8), (sub % 256).astype(np.uint8)], axis=1)
    payload = (b"\x89PNG\r\n\x1a\n"
               + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, color, 0, 0, 0))
               + _chunk(b"IDAT", zlib.compress(rows.tobytes(), 6))
               + _chunk(b"IEND", b""))
    Path(path).write_bytes(payload)
    return len(payload)
