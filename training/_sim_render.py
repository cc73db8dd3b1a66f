"""Rendering: light profiles on the VIS grid, PSF convolution, NISP binning, noise.

One scene is rendered once, at the VIS resolution (200 × 200 pixels of 0.1″),
as a set of *layers*: each layer is a unit-flux surface-brightness map with
an AB magnitude per band (VIS, Y, J, H).  A band image is the flux-weighted
sum of the layers, convolved (FFT) with that band's PSF kernel
(:func:`psf_kernel`: a Moffat profile with wings, integrated over the
pixels, per-cutout jitter of width, ellipticity and three-fold asymmetry).
NISP bands are convolved on the 0.1″ grid and then summed in 3 × 3 blocks over
the central 198 × 198 pixels, giving 66 × 66 pixels of 0.3″: the NISP PSF is
undersampled by its pixels as in the real instrument.  The expensive part (ray
tracing and profile evaluation) is done once for all four bands.  Profiles
are sampled at pixel centres, except where features can be smaller than a pixel:
lensed light is averaged over ``SUBSAMPLE`` × ``SUBSAMPLE`` ray-traced
positions per pixel (:func:`subpixel_grid`, :func:`pixel_average`), real
stamps likewise, and star-forming knots are Gaussians integrated exactly over
each pixel (:func:`pixel_gaussian`), so that a source or knot smaller than a
pixel keeps its flux and shape instead of landing on or between pixel centres.

Units: e-/s per pixel, background (sky) subtracted.  Noise per pixel is
Gaussian with the variance of the Poisson counts of the source plus the
background variance (sky + read noise, scaled to the Euclid Wide depth; see
:func:`limiting_magnitude`): ``var = S / t + σ_bg²`` (the Gaussian limit of
Poisson noise; every pixel has ≳ 400 sky electrons).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import label
from scipy.signal import fftconvolve
from scipy.special import erf
from scipy.special import gamma as gamma_fn

from lensengine.engine.specs import BANDS
from lensengine.training._sim_physics import DEPTH_JITTER_MAG, DEPTH_TARGET, INSTRUMENT, PSF_JITTER, Instrument

__all__ = ["N_VIS", "PIX", "SUBSAMPLE", "GRID_X", "GRID_Y", "unit_on_grid", "subpixel_grid", "pixel_average",
           "pixel_gaussian", "window", "sersic", "ring", "Scene", "Rendered", "render",
           "arc_statistics", "PsfParams", "psf_parameters", "psf_kernel", "limiting_magnitude",
           "calibrate_depth_scale"]

N_VIS = 200
PIX = 0.1
N_NISP = 66
#: sub-pixel samples per axis for light that can be smaller than a pixel (lensed sources, real stamps).  Peak
#: error after the VIS PSF against the exact pixel integral, lensed Sérsic of half-light radius 0.1″ / 0.05″ /
#: 0.02″: 1 sample 7-11 % / 23-27 % / 55-84 %; 3 samples < 1 % / 2-3 % / 6-8 %; 4 samples < 0.5 % / < 0.5 % / 3 %
SUBSAMPLE = 3
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
    return unit_on_grid(prof)


def unit_on_grid(sb: np.ndarray) -> np.ndarray:
    """``sb`` (per arcsec²) rescaled to unit flux as sampled on the 0.1″ pixels, so that a profile cut by its
    window or the stamp edge keeps its nominal flux.  All-zero stays zero."""
    total = float(sb.sum()) * PIX * PIX
    return sb / total if total > 0 else sb


def subpixel_grid(x: np.ndarray, y: np.ndarray, n: int = SUBSAMPLE) -> tuple[np.ndarray, np.ndarray]:
    """``n`` × ``n`` sample positions spread evenly over each 0.1″ pixel centred on (x, y): arrays of shape
    ``(n * n, *x.shape)``.  Evaluate a profile there and :func:`pixel_average` it."""
    off = ((np.arange(n) + 0.5) / n - 0.5) * PIX
    dx, dy = np.meshgrid(off, off)
    x, y = np.asarray(x, dtype=np.float32), np.asarray(y, dtype=np.float32)
    shape = (n * n,) + (1,) * x.ndim
    return ((x[None] + dx.reshape(shape)).astype(np.float32), (y[None] + dy.reshape(shape)).astype(np.float32))


def pixel_average(sb: np.ndarray) -> np.ndarray:
    """The pixel values of ``sb`` evaluated on :func:`subpixel_grid` positions: the mean over its first axis."""
    return np.asarray(sb).mean(axis=0, dtype=np.float32)


def pixel_gaussian(x, y, cx: float, cy: float, fwhm: float) -> np.ndarray:
    """Unit-flux circular Gaussian of ``fwhm`` (arcsec) at (cx, cy), integrated exactly over the 0.1″ pixels
    centred on (x, y) and returned per arcsec²: a knot smaller than a pixel keeps its flux wherever it falls."""
    s = max(float(fwhm), 1e-3) / 2.3548 * np.sqrt(2.0)
    h = PIX / 2
    dx, dy = np.asarray(x, dtype=np.float64) - cx, np.asarray(y, dtype=np.float64) - cy
    fx = 0.5 * (erf((dx + h) / s) - erf((dx - h) / s))
    fy = 0.5 * (erf((dy + h) / s) - erf((dy - h) / s))
    return (fx * fy / (PIX * PIX)).astype(np.float32)


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
    fwhm: dict  # band -> FWHM (arcsec) of this cutout's optical PSF
    depth_offset: float = 0.0  # mag: this cutout's depth relative to the nominal (median) depth, + = shallower


# --- PSF ---------------------------------------------------------------------
#: per-cutout PSF asymmetry ranges (uniform): ellipticity (1 - axis ratio) and
#: the amplitude of the three-fold (trefoil) modulation of the isophotes, VIS vs NISP
PSF_ELLIPTICITY = {"VIS": 0.06, "NISP": 0.04}
PSF_TREFOIL = {"VIS": 0.08, "NISP": 0.04}
#: kernel half-size (arcsec): the Moffat wings beyond it hold < 0.5 % of the flux
PSF_RADIUS = {"VIS": 2.0, "NISP": 3.0}


@dataclass(frozen=True)
class PsfParams:
    """Shape of one PSF: a Moffat profile with mild ellipticity and three-fold asymmetry."""

    fwhm: float  # arcsec, of the optical PSF (before pixel integration)
    beta: float  # Moffat β: the wings fall as r^(-2β)
    ellipticity: float = 0.0  # 1 - axis ratio
    phi: float = 0.0  # major-axis angle (radians)
    trefoil: float = 0.0  # relative amplitude of the cos 3θ modulation of the radius
    phi3: float = 0.0


def _family(band: str) -> str:
    return "VIS" if band == "VIS" else "NISP"


def psf_parameters(band: str, rng: np.random.Generator | None = None, fwhm: float | None = None,
                   inst: Instrument = INSTRUMENT) -> PsfParams:
    """The PSF shape of ``band``: nominal and circular without ``rng``; jittered with it.

    The jitter (FWHM ±PSF_JITTER, ellipticity, trefoil amplitude and random
    orientations) stands for the PSF's variation across the focal plane and
    between pointings; the orientation is random so that no network can learn
    a fixed PSF direction.
    """
    if band not in inst.psf_fwhm:
        raise ValueError(f"unknown band {band!r}; known: {', '.join(inst.psf_fwhm)}")
    base = float(inst.psf_fwhm[band] if fwhm is None else fwhm)
    beta = float(inst.psf_beta[band])
    if rng is None:
        return PsfParams(base, beta)
    fam = _family(band)
    return PsfParams(fwhm=base * float(rng.uniform(1 - PSF_JITTER, 1 + PSF_JITTER)), beta=beta,
                     ellipticity=float(rng.uniform(0, PSF_ELLIPTICITY[fam])), phi=float(rng.uniform(0, np.pi)),
                     trefoil=float(rng.uniform(0, PSF_TREFOIL[fam])), phi3=float(rng.uniform(0, 2 * np.pi / 3)))


def _psf_kernel(p: PsfParams, pixel_scale: float, radius: float, offset=(0.0, 0.0)) -> np.ndarray:
    """Unit-sum kernel of ``p`` integrated over square pixels of ``pixel_scale`` (odd size, centred).

    The continuous profile is evaluated on ``n_sub`` × ``n_sub`` points per pixel
    (at least five per FWHM) and summed, so the kernel includes the pixel
    response; ``offset`` (pixels) shifts the profile's centre within the central pixel.
    """
    half = int(np.ceil(radius / pixel_scale))
    n_sub = int(np.clip(np.ceil(pixel_scale / (p.fwhm / 5.0)), 1, 9))
    sub = (np.arange(n_sub) + 0.5) / n_sub - 0.5
    c = (np.arange(-half, half + 1)[:, None] + sub[None, :]).ravel() * pixel_scale
    x, y = np.meshgrid(c - offset[0] * pixel_scale, c - offset[1] * pixel_scale)
    cphi, sphi = np.cos(p.phi), np.sin(p.phi)
    xr, yr = cphi * x + sphi * y, -sphi * x + cphi * y
    q = 1.0 - p.ellipticity
    r = np.sqrt(q * xr * xr + yr * yr / q)
    if p.trefoil:
        r = r * (1.0 + p.trefoil * np.cos(3.0 * (np.arctan2(y, x) - p.phi3)))
    alpha = p.fwhm / (2.0 * np.sqrt(2.0 ** (1.0 / p.beta) - 1.0))
    prof = (1.0 + (r / alpha) ** 2) ** (-p.beta)
    size = 2 * half + 1
    ker = prof.reshape(size, n_sub, size, n_sub).sum(axis=(1, 3))
    return (ker / ker.sum()).astype(np.float32)


def psf_kernel(band: str, pixel_scale: float, fwhm: float | None = None, rng: np.random.Generator | None = None,
               *, radius: float | None = None, inst: Instrument = INSTRUMENT) -> np.ndarray:
    """Unit-sum 2-D PSF kernel of ``band`` for images with pixels of ``pixel_scale`` arcsec.

    The simulator's one PSF model, for anyone who needs it (the simulator
    itself; degrading real galaxies to Euclid): a Moffat profile (β 2.5 in VIS:
    extended wings; β 3 in NISP) of FWHM ``fwhm`` (default: the band's
    nominal optical FWHM), integrated over the pixels, odd size, centred.
    ``rng`` draws the per-cutout jitter (:func:`psf_parameters`); without it the
    kernel is the nominal, circular PSF.  ``radius`` (arcsec) sets the half-size
    (default 2″ VIS, 3″ NISP).
    """
    if pixel_scale <= 0:
        raise ValueError(f"pixel_scale must be positive, got {pixel_scale}")
    p = psf_parameters(band, rng, fwhm, inst)
    return _psf_kernel(p, float(pixel_scale), PSF_RADIUS[_family(band)] if radius is None else float(radius))


_EDGE = (N_VIS - 3 * N_NISP) // 2  # VIS pixels left out on each side of the 198 × 198 NISP field


def _bin3(img: np.ndarray) -> np.ndarray:
    """Sum 3 × 3 blocks of the central 198 × 198 VIS-grid pixels: 66 × 66 NISP pixels of 0.3″.

    A reshape and sum, not a matrix product, so the result does not depend on
    the BLAS library's threading (cutouts must be bit-identical everywhere).
    """
    core = img[_EDGE:_EDGE + 3 * N_NISP, _EDGE:_EDGE + 3 * N_NISP]
    return core.reshape(N_NISP, 3, N_NISP, 3).sum(axis=(1, 3), dtype=np.float32)


@dataclass(frozen=True)
class _Kernel:
    """A PSF kernel with its FFT at the padded size of a 200 × 200 convolution (computed once per pool entry)."""

    size: int
    nfft: int
    fft: np.ndarray


def _plan(kernel: np.ndarray) -> _Kernel:
    from scipy.fft import next_fast_len, rfft2

    k = kernel.shape[0]
    nfft = next_fast_len(N_VIS + k - 1, real=True)
    return _Kernel(k, nfft, rfft2(kernel.astype(np.float32), s=(nfft, nfft)))


def _convolve(img: np.ndarray, kernel: _Kernel) -> np.ndarray:
    """Same-size convolution (single-precision FFT), zero outside the stamp: light falling off the edge is lost,
    as on a detector."""
    from scipy.fft import irfft2, rfft2

    full = irfft2(rfft2(img.astype(np.float32, copy=False), s=(kernel.nfft, kernel.nfft)) * kernel.fft,
                  s=(kernel.nfft, kernel.nfft))
    o = (kernel.size - 1) // 2
    return np.ascontiguousarray(full[o:o + img.shape[0], o:o + img.shape[1]], dtype=np.float32)


#: jittered PSFs per band, drawn once per process from a fixed seed; each cutout picks one per band
#: (building a kernel costs ~5 ms, a quarter of a cutout: the pool keeps the jitter and drops the cost)
PSF_POOL = 64
_PSF_POOL_SEED = 20_261_201
_POOLS: dict[int, dict] = {}


def _psf_pool(inst: Instrument) -> dict:
    """band -> (PsfParams list, kernels on the 0.1″ grid with their FFTs) for ``inst``; identical in every
    process."""
    pool = _POOLS.get(id(inst))
    if pool is None:
        rng = np.random.default_rng(_PSF_POOL_SEED)
        pool = {}
        for b in BANDS:
            params = [psf_parameters(b, rng, inst=inst) for _ in range(PSF_POOL)]
            pool[b] = (params, [_plan(_psf_kernel(p, PIX, PSF_RADIUS[_family(b)])) for p in params])
        _POOLS[id(inst)] = pool
    return pool


def render(scene: Scene, rng: np.random.Generator) -> Rendered:
    """Convolve with this cutout's PSFs (one per band from the jittered pool), bin NISP 3 × 3, add noise at this
    cutout's depth.

    Also returns the noiseless lensed VIS light for the labelling rule.
    """
    inst = scene.inst
    pool = _psf_pool(inst)
    pick = rng.integers(PSF_POOL, size=len(BANDS))
    params = {b: pool[b][0][k] for b, k in zip(BANDS, pick)}
    kernels = {b: pool[b][1][k] for b, k in zip(BANDS, pick)}
    depth_offset = float(rng.uniform(-DEPTH_JITTER_MAG, DEPTH_JITTER_MAG))
    bg_scale = 10 ** (0.4 * depth_offset)
    images = {}
    k_vis = kernels["VIS"]
    images["VIS"] = _convolve(scene.total[0], k_vis)
    for i, b in enumerate(BANDS[1:], start=1):
        images[b] = _bin3(_convolve(scene.total[i], kernels[b]))
    noisy, sigma_vis = {}, None
    for b in BANDS:
        t = inst.exposure_time[b]
        signal = images[b]
        var = np.maximum(signal, 0.0) / t + inst.background_variance(b) * bg_scale ** 2
        sigma = np.sqrt(var).astype(np.float32)
        noisy[b] = (signal + sigma * rng.standard_normal(signal.shape, dtype=np.float32)).astype(np.float32)
        if b == "VIS":
            sigma_vis = sigma
    lensed = _convolve(scene.lensed, k_vis) if scene.lensed.any() else np.zeros_like(scene.lensed)
    return Rendered(vis=noisy["VIS"], nisp=np.stack([noisy[b] for b in BANDS[1:]]), lensed_vis=lensed,
                    sigma_vis=sigma_vis, fwhm={b: params[b].fwhm for b in BANDS}, depth_offset=depth_offset)


# --- depth ---------------------------------------------------------------------
#: the extended source of the VIS depth definition: circular Gaussian of this FWHM (arcsec)
#: measured in a circular aperture of this diameter (arcsec)
DEPTH_GALAXY_FWHM = 0.3
DEPTH_APERTURE = 1.3


def _solve_flux(signal_weights: np.ndarray, noise_var: float, t: float, snr: float) -> float:
    """Total flux F (e-/s) at which Σ (F w)² / (σ² + F w / t) = snr² (w: per-pixel weights)."""
    lo, hi = 1e-6, 1e6
    for _ in range(200):
        mid = np.sqrt(lo * hi)
        s = mid * signal_weights
        if np.sqrt(np.sum(s * s / (noise_var + s / t))) < snr:
            lo = mid
        else:
            hi = mid
    return float(np.sqrt(lo * hi))


def limiting_magnitude(band: str, inst: Instrument = INSTRUMENT) -> float:
    """AB magnitude reached at the nominal depth, per the definitions of ``DEPTH_TARGET``.

    VIS (extended): a circular Gaussian galaxy of ``DEPTH_GALAXY_FWHM`` convolved
    with the nominal VIS PSF, summed in a ``DEPTH_APERTURE``-diameter aperture
    of 0.1″ pixels: S/N = F_ap / sqrt(N_pix σ² + F_ap / t).  NISP (point): the
    pixel-integrated PSF at 0.3″, PSF-weighted photometry,
    S/N² = Σ (F p_i)² / (σ² + F p_i / t), median over 5 × 5 sub-pixel centres.
    """
    target = DEPTH_TARGET[band]
    t, var = inst.exposure_time[band], inst.background_variance(band)
    if target[2] == "extended":
        fine = 0.02  # arcsec: fine grid for the galaxy and PSF, summed to 0.1" pixels below
        k = psf_kernel(band, fine, inst=inst)
        half = int(np.ceil(2.0 / fine))
        c = np.arange(-half, half + 1) * fine
        x, y = np.meshgrid(c, c)
        gal = np.exp(-0.5 * (x * x + y * y) / (DEPTH_GALAXY_FWHM / 2.3548) ** 2)
        img = fftconvolve(gal / gal.sum(), k, mode="same")
        # 0.1" pixels centred on the galaxy: sum 5 x 5 fine pixels
        n = int(round(inst.pixel_scale[band] / fine))
        m = (img.shape[0] // n) * n
        off = (img.shape[0] - m) // 2
        coarse = img[off:off + m, off:off + m].reshape(m // n, n, m // n, n).sum(axis=(1, 3))
        cc = (np.arange(m // n) - (m // n - 1) / 2.0) * inst.pixel_scale[band]
        xx, yy = np.meshgrid(cc, cc)
        w = coarse[np.hypot(xx, yy) <= DEPTH_APERTURE / 2.0]
        f_ap = float(w.sum())
        n_pix = w.size
        lo, hi = 1e-6, 1e6
        for _ in range(200):
            mid = np.sqrt(lo * hi)
            snr_mid = mid * f_ap / np.sqrt(n_pix * var + mid * f_ap / t)
            lo, hi = (mid, hi) if snr_mid < target[1] else (lo, mid)
        flux = float(np.sqrt(lo * hi))
    else:
        fluxes = []
        for dx in np.linspace(-0.4, 0.4, 5):
            for dy in np.linspace(-0.4, 0.4, 5):
                p = _psf_kernel(psf_parameters(band, inst=inst), inst.pixel_scale[band], PSF_RADIUS["NISP"], (dx, dy))
                fluxes.append(_solve_flux(p.ravel().astype(float), var, t, target[1]))
        flux = float(np.median(fluxes))
    return float(inst.zero_point[band] - 2.5 * np.log10(flux))


def calibrate_depth_scale(band: str, inst: Instrument = INSTRUMENT) -> float:
    """The ``depth_scale`` that puts ``band`` at its ``DEPTH_TARGET`` magnitude (for the constants table)."""
    import dataclasses

    scale = float(inst.depth_scale[band])
    for _ in range(6):  # background-limited: the limiting flux scales with the noise σ
        trial = dataclasses.replace(inst, depth_scale={**inst.depth_scale, band: scale})
        scale *= 10 ** (-0.4 * (DEPTH_TARGET[band][0] - limiting_magnitude(band, trial)))
    return scale


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
