"""Rendering: light profiles on the VIS grid, PSF convolution, NISP rebinning, noise.

One scene is rendered once, at the VIS resolution (200 × 200 pixels of 0.1″),
as a set of *layers*: each layer is a unit-flux surface-brightness map with
an AB magnitude per band (VIS, Y, J, H).  A band image is the flux-weighted
sum of the layers (a single matrix product for the four bands), convolved with
that band's Gaussian PSF; NISP bands are then summed in 3 × 3 blocks over the
central 198 × 198 pixels, giving 66 × 66 pixels of 0.3″.  So the expensive
part (ray tracing and profile evaluation) is done once for all four bands.
Profiles are sampled at pixel centres (no supersampling).

Units: e-/s per pixel, background (sky) subtracted.  Noise per pixel is
Gaussian with the variance of the Poisson counts of source + sky plus read
noise: ``var = (S t + sky t + n_exp RN²) / t²`` (the Gaussian limit of Poisson
noise; every pixel has ≳ 40 sky electrons).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import label
from scipy.special import gamma as gamma_fn

from lensengine.engine.specs import BANDS
from lensengine.training._sim_physics import INSTRUMENT, PSF_JITTER, Instrument

__all__ = ["N_VIS", "PIX", "GRID_X", "GRID_Y", "window", "sersic", "ring", "Scene", "Rendered", "render",
           "arc_statistics"]

N_VIS = 200
PIX = 0.1
N_NISP = 66
_c = (np.arange(N_VIS) - (N_VIS - 1) / 2.0) * PIX
GRID_X, GRID_Y = (a.ravel().astype(np.float32) for a in np.meshgrid(_c, _c))  # arcsec; x: columns, y: rows
_R_MIN = 0.02  # arcsec: radius floor for cuspy profiles sampled at pixel centres


def _b_n(n):
    """Sérsic b_n (Ciotti & Bertin 1999 expansion)."""
    return 2.0 * n - 1.0 / 3.0 + 4.0 / (405.0 * n) + 46.0 / (25515.0 * n * n)


def _elliptical_radius(x, y, q, phi, cx, cy):
    dx, dy = x - float(cx), y - float(cy)
    c, s = float(np.cos(phi)), float(np.sin(phi))
    q = float(q)
    xr = c * dx + s * dy
    yr = -s * dx + c * dy
    return np.sqrt(q * xr * xr + yr * yr / q), xr, yr


def sersic(x, y, r_e, n, q, phi, cx, cy) -> np.ndarray:
    """Unit-total-flux elliptical Sérsic surface brightness (per arcsec²).

    ``r_e`` is the geometric-mean (circularised) half-light radius, ``q`` the
    axis ratio, ``phi`` the major-axis angle from the x axis.
    """
    r, _, _ = _elliptical_radius(x, y, q, phi, cx, cy)
    r = np.maximum(r, _R_MIN)
    n, r_e = float(n), float(r_e)
    b = _b_n(n)
    i_e = float(b ** (2 * n) / (2.0 * np.pi * n * r_e * r_e * np.exp(b) * gamma_fn(2 * n)))
    return i_e * np.exp(-b * ((r / r_e) ** (1.0 / n) - 1.0))


def ring(x, y, radius, width, q, phi, cx, cy, *, arms: int = 0, arm_phase: float = 0.0,
         arm_contrast: float = 0.0, pitch: float = 0.0) -> np.ndarray:
    """Unit-flux Gaussian ring (or disk texture) of ``radius`` and ``width`` (arcsec).

    With ``arms`` > 0 the ring is modulated by a logarithmic spiral of
    ``arms`` arms, ``pitch`` (radians) and ``arm_contrast`` (0-1).
    Normalised on the grid, so flux outside the stamp is not counted.
    """
    r, xr, yr = _elliptical_radius(x, y, q, phi, cx, cy)
    prof = np.exp(-0.5 * ((r - float(radius)) / float(width)) ** 2)
    if arms:
        theta = np.arctan2(yr, xr)
        wind = np.log(np.maximum(r, 0.05)) / float(np.tan(max(pitch, 0.05)))
        prof = prof * (1.0 + float(arm_contrast) * np.cos(arms * (theta - wind) + float(arm_phase)))
    total = float(prof.sum()) * PIX * PIX
    return prof / total if total > 0 else prof


def window(cx: float, cy: float, half: float):
    """Pixel slices and coordinates of the square of half-size ``half`` (arcsec) around (cx, cy), clipped."""
    c0 = int(np.floor((cx + (N_VIS / 2) * PIX - half) / PIX))
    c1 = int(np.ceil((cx + (N_VIS / 2) * PIX + half) / PIX))
    r0 = int(np.floor((cy + (N_VIS / 2) * PIX - half) / PIX))
    r1 = int(np.ceil((cy + (N_VIS / 2) * PIX + half) / PIX))
    c0, r0 = max(c0, 0), max(r0, 0)
    c1, r1 = min(c1, N_VIS), min(r1, N_VIS)
    if c1 <= c0 or r1 <= r0:
        return None
    rows, cols = slice(r0, r1), slice(c0, c1)
    return rows, cols, _GX[rows, cols], _GY[rows, cols]


_GX, _GY = (a.astype(np.float32) for a in np.meshgrid(_c, _c))


class Scene:
    """The noiseless, unconvolved flux (e-/s per pixel) of one cutout in the four bands, at VIS resolution.

    Layers are accumulated as they are added: ``total`` holds all light,
    ``lensed`` only the lensed source light (for the labelling rule).
    """

    def __init__(self, inst: Instrument = INSTRUMENT):
        self.inst = inst
        self.total = np.zeros((len(BANDS), N_VIS, N_VIS), dtype=np.float32)
        self.lensed = np.zeros((N_VIS, N_VIS), dtype=np.float32)

    def add(self, sb: np.ndarray, mags, lensed: bool = False, where=None) -> None:
        """Add unit-flux surface brightness ``sb`` (per arcsec², on the window ``where`` or the full grid)."""
        flux = np.array([self.inst.flux(b, m) for b, m in zip(BANDS, mags)], dtype=np.float32) * (PIX * PIX)
        sb = np.asarray(sb, dtype=np.float32)
        if where is None:
            sb = sb.reshape(N_VIS, N_VIS)
            self.total += flux[:, None, None] * sb
            if lensed:
                self.lensed += flux[0] * sb
        else:
            rows, cols = where[0], where[1]
            self.total[:, rows, cols] += flux[:, None, None] * sb
            if lensed:
                self.lensed[rows, cols] += flux[0] * sb


@dataclass
class Rendered:
    vis: np.ndarray  # (200, 200) float32 e-/s
    nisp: np.ndarray  # (3, 66, 66) float32 e-/s
    lensed_vis: np.ndarray  # (200, 200) noiseless PSF-convolved lensed light (VIS)
    sigma_vis: np.ndarray  # (200, 200) per-pixel noise σ (VIS)
    fwhm: dict


def _gauss_matrix(fwhm: float) -> np.ndarray:
    """(200, 200) matrix of a 1-D Gaussian convolution (zero outside the stamp; flux kept per source pixel)."""
    sig = fwhm / 2.3548 / PIX
    k = np.arange(-N_VIS + 1, N_VIS)
    ker = np.exp(-0.5 * (k / sig) ** 2)
    ker /= ker.sum()
    i = np.arange(N_VIS)
    return ker[(i[:, None] - i[None, :]) + N_VIS - 1].astype(np.float32)


_REBIN = np.zeros((N_NISP, N_VIS), dtype=np.float32)
for _i in range(N_NISP):
    _REBIN[_i, (N_VIS - 3 * N_NISP) // 2 + 3 * _i:(N_VIS - 3 * N_NISP) // 2 + 3 * _i + 3] = 1.0


def render(scene: Scene, rng: np.random.Generator) -> Rendered:
    """Convolve (separable Gaussian as two matrix products), rebin NISP 3 × 3, add noise.

    Also returns the noiseless lensed VIS light for the labelling rule.
    """
    inst = scene.inst
    fwhm = {b: inst.psf_fwhm[b] * rng.uniform(1 - PSF_JITTER, 1 + PSF_JITTER) for b in BANDS}
    images = {}
    g_vis = _gauss_matrix(fwhm["VIS"])
    images["VIS"] = g_vis @ scene.total[0] @ g_vis.T
    for i, b in enumerate(BANDS[1:], start=1):
        r = _REBIN @ _gauss_matrix(fwhm[b])  # convolve then rebin, in one (66, 200) matrix
        images[b] = r @ scene.total[i] @ r.T
    noisy, sigma_vis = {}, None
    for b in BANDS:
        t = inst.exposure_time[b]
        signal = images[b]
        var = (np.maximum(signal, 0.0) * t + inst.sky_rate(b) * t + inst.n_exposures[b] * inst.read_noise[b] ** 2)
        sigma = np.sqrt(var) / t
        noisy[b] = (signal + sigma * rng.standard_normal(signal.shape, dtype=np.float32)).astype(np.float32)
        if b == "VIS":
            sigma_vis = sigma
    lensed = g_vis @ scene.lensed @ g_vis.T
    return Rendered(vis=noisy["VIS"], nisp=np.stack([noisy[b] for b in BANDS[1:]]),
                    lensed_vis=lensed, sigma_vis=sigma_vis, fwhm=fwhm)


def arc_statistics(lensed: np.ndarray, sigma: np.ndarray, k_sigma: float) -> tuple[int, float, int]:
    """``(n_pixels, snr, n_images)`` of noiseless lensed light against the noise map.

    ``n_pixels``: pixels with lensed flux above ``k_sigma`` σ; ``snr``: lensed
    flux over those pixels divided by the root of their summed variance;
    ``n_images``: connected groups of ≥ 3 such pixels (8-connectivity).
    """
    mask = lensed > k_sigma * sigma
    npix = int(mask.sum())
    if npix == 0:
        return 0, 0.0, 0
    snr = float(lensed[mask].sum() / np.sqrt((sigma[mask] ** 2).sum()))
    labels, n = label(mask, structure=np.ones((3, 3)))
    sizes = np.bincount(labels.ravel())[1:]
    return npix, snr, int((sizes >= 3).sum())
