"""Real imaging degraded to Euclid Wide: J0946 and ~120 real non-lens galaxies (issue 11, item 4).

``lensengine realcheck --out DIR`` writes two survey stores that ``lensengine
evaluate --check`` scores:

* ``DIR/j0946.zarr``: SDSS J0946+1006 (the "Jackpot" double-source-plane lens;
  HST 0.05″, one band) as one Euclid cutout, truth ``label = is_lens = 1``;
* ``DIR/real_galaxies.zarr``: every galaxy of :func:`~lensengine.training.real_galaxies.load_real_galaxies`
  (COSMOS, AEGIS, COSMOS-Web, and COSJ100020, the massive early-type that is not
  a lens) as one cutout each, truth ``label = is_lens = 0``, ``kind =
  "real-galaxy"``, ``name``, and ``role`` (``"sim"`` for the half the simulator
  borrows morphologies from, ``"check"`` for the half it never sees).

Degradation, per Euclid band (:func:`degrade`), the simulator's conventions
(:mod:`lensengine.training._sim_render`):

1. Units: HST ACS F814W e-/s (the GalSim COSMOS/AEGIS stamps and, assumed, the
   J0946 image) are AB maggies times 10^(0.4 · 25.94) (ACS/WFC F814W AB zero
   point; it reproduces the catalogue magnitudes within 0.1 mag); JWST images
   are MJy/sr, turned into Jy per pixel with the pixel's solid angle.  Euclid
   e-/s follow from the simulator's zero points (``Instrument.flux``).
2. Colours (assumed; the data have one or two bands): VIS takes the F814W
   magnitude as it is (VIS − F814W = 0).  NISP Y, J, H of HST-only galaxies
   are the F814W image scaled by the simulator's SkyPy template colours
   (:func:`template_colours`) of a "red" (early-type: J0946, COSJ100020) or
   "blue" (every other galaxy: field galaxies at these magnitudes are mostly
   star-forming) galaxy at its redshift (0.7 when unknown).  JWST galaxies use
   their own bands: Y ← F115W, J ← the mean of F115W and F150W, H ← F150W;
   their VIS image is F115W scaled by the template VIS − Y colour.  One colour
   per image: J0946's arcs get the lens galaxy's colour in NISP (conservative:
   real arcs are bluer).
3. PSF: the image is convolved at its native pixel scale with the simulator's
   Moffat PSF (:func:`~lensengine.training._sim_render.psf_kernel`; β 2.5 with
   wings in VIS, undersampled NISP) of FWHM √(FWHM_Euclid² − FWHM_native²),
   where FWHM_native is measured from the shipped PSF or, without one,
   taken from ``NATIVE_FWHM``.  The quadrature difference makes the total PSF
   approximately, not exactly, the Euclid one.  Convolution is "full" (no
   light is lost at the stamp edge).
4. Resampling: exact area-weighted rebinning (:mod:`lensengine.catalogs._resample`)
   onto the 0.1″ VIS grid (200 × 200) and the 0.3″ NISP grid (66 × 66, the central
   19.8″), centred on the stamp centre plus a sub-pixel offset (±0.05″, seeded).
   Steps 3–4 conserve flux (a test checks < 1 %).
5. Noise: Euclid Wide at the nominal (median) depth, as the simulator: per
   pixel σ² = max(signal, 0)/t + ``Instrument.background_variance``.  The
   stamp already carries its own (HST/JWST) noise, degraded with it; the added
   noise tops the variance up to the target.  The degraded native σ is the
   native σ times the white-noise gain of steps 3–4 (:func:`native_noise_gain`)
   times a correlation factor measured on the stamp's border (drizzled HST
   noise is correlated: :func:`correlation_factor`).  Outside the stamp the
   field is blank sky with the target noise.

Before step 3 the stamp's outer ``TAPER`` (10 %) on each side fades to zero
with a cosine: a galaxy larger than its stamp (the COSMOS-Web spiral) or the
stamp's own noise texture would otherwise show the stamp's box in the Euclid
image, a feature no real sky has.  The taper removes a little outer light of
such galaxies; flux conservation refers to the tapered image.

Cutout ``i`` draws its offset and noise from ``SeedSequence(seed, spawn_key=(i,))``:
the stores are identical for a given seed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from lensengine.catalogs._resample import overlap_matrix
from lensengine.engine.specs import BANDS

__all__ = ["ZP_F814W", "NATIVE_FWHM", "FIELD", "TAPER", "TRUTH_COLUMNS", "taper", "correlation_factor", "degrade",
           "native_noise_gain", "add_noise", "template_colours", "EuclidInput", "euclid_bands", "Cutout", "render",
           "j0946_cutout", "galaxy_cutouts", "write_realcheck"]

#: ACS/WFC F814W AB zero point (e-/s); GalSim COSMOS stamps give MAG ≈ 25.94 − 2.5 log10(sum) (within 0.1 mag)
ZP_F814W = 25.94
#: FWHM (arcsec) of the native PSF when a stamp ships without one (HST ACS drizzled to 0.03″; NIRCam)
NATIVE_FWHM = {"F814W": 0.095, "F606W": 0.085, "F115W": 0.040, "F150W": 0.050}
#: output grids: band -> (pixels per side, arcsec per pixel)
FIELD = {"VIS": (200, 0.1), "Y": (66, 0.3), "J": (66, 0.3), "H": (66, 0.3)}
#: largest sub-pixel offset (arcsec) of the stamp centre from the field centre
MAX_OFFSET = 0.05
#: fraction of the stamp side over which its edges fade to zero (cosine)
TAPER = 0.1
#: redshift assumed when the catalogue gives none
DEFAULT_Z = 0.7
J0946_Z = 0.222  # lens redshift, shared/real/hst_sdssj0946/info.json
_ARCSEC_RAD = np.pi / (180.0 * 3600.0)
SURVEY = "euclid-realcheck"
TILE = "real"

#: truth column -> dtype of both stores
TRUTH_COLUMNS: dict[str, str] = {
    "label": "int8",
    "is_lens": "int8",
    "kind": "str",
    "name": "str",
    "role": "str",
    "z": "float32",
    "mag_VIS": "float32",
    "colour_class": "str",
    "nisp_from": "str",
    "offset_x": "float32",
    "offset_y": "float32",
    "native_noise_VIS": "float32",
    "seed": "int64",
}


# ----------------------------------------------------------------------------- degradation


def _fwhm_of(psf: np.ndarray, scale: float) -> float:
    """FWHM (arcsec) of a sampled PSF from the area above half its peak (circular equivalent)."""
    psf = np.asarray(psf, dtype=np.float64)
    area = float(np.sum(psf >= 0.5 * psf.max()))
    return 2.0 * np.sqrt(area / np.pi) * scale


def taper(image: np.ndarray, frac: float = TAPER) -> np.ndarray:
    """``image`` times a separable window that rises as a half cosine over the outer ``frac`` of each side."""
    def window(n):
        w = np.ones(n)
        k = max(2, int(round(frac * n)))
        ramp = 0.5 - 0.5 * np.cos(np.pi * (np.arange(k) + 0.5) / k)
        w[:k], w[n - k:] = ramp, ramp[::-1]
        return w

    image = np.asarray(image, dtype=np.float64)
    return image * window(image.shape[0])[:, None] * window(image.shape[1])[None, :]


def correlation_factor(image: np.ndarray, ratio: float) -> float:
    """How much more the native noise adds up over a Euclid pixel than white noise would (σ ratio, ≥ 1).

    Block sums of ``b`` × ``b`` pixels (``b`` = round(ratio), at least 2) over
    the stamp's border strips (noise-dominated, clipped at 3σ) have variance
    ``f² b² σ²``; white noise has ``f = 1``.  Drizzled HST stamps give f ≈ 1.2–1.5.
    """
    image = np.asarray(image, dtype=np.float64)
    b = max(2, int(round(ratio)))
    ny, nx = image.shape
    w = max(b, (min(ny, nx) // 8) // b * b)
    strips = [image[:w], image[ny - w:], image[:, :w].T, image[:, nx - w:].T]
    sigma = 1.4826 * np.median(np.abs(np.concatenate([s.ravel() for s in strips])))
    sums = []
    for s in strips:
        rows, cols = s.shape[0] // b * b, s.shape[1] // b * b
        sums.append(s[:rows, :cols].reshape(rows // b, b, cols // b, b).sum(axis=(1, 3)).ravel())
    sums = np.concatenate(sums)
    if sums.size < 8 or sigma <= 0:
        return 1.0
    spread = 1.4826 * np.median(np.abs(sums - np.median(sums)))
    return float(np.clip(spread / (b * sigma), 1.0, 3.0))


def _kernel(band: str, scale: float, native_fwhm: float) -> np.ndarray:
    from lensengine.training._sim_physics import INSTRUMENT
    from lensengine.training._sim_render import psf_kernel

    target = float(INSTRUMENT.psf_fwhm[band])
    if native_fwhm >= target:
        raise ValueError(f"native PSF FWHM {native_fwhm:.3f}″ is not sharper than the {band} PSF ({target}″)")
    return psf_kernel(band, scale, fwhm=float(np.sqrt(target ** 2 - native_fwhm ** 2))).astype(np.float64)


def _resample(image: np.ndarray, scale: float, band: str, offset: tuple[float, float]) -> np.ndarray:
    """Area-weighted rebinning onto the band's field, the image centre at field centre + offset (arcsec)."""
    n_out, out_scale = FIELD[band]
    ratio = out_scale / scale
    cy = (image.shape[0] - 1) / 2 - offset[1] / scale
    cx = (image.shape[1] - 1) / 2 - offset[0] / scale
    wy = overlap_matrix(image.shape[0], cy, n_out, ratio)
    wx = overlap_matrix(image.shape[1], cx, n_out, ratio)
    return wy @ image @ wx.T


def degrade(image: np.ndarray, scale: float, band: str, native_fwhm: float,
            offset: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """Noiseless Euclid image of one band: convolve (native scale) then rebin (module docstring, steps 3–4).

    ``image`` is in Euclid e-/s per native pixel of ``scale`` arcsec; the
    result is e-/s per Euclid pixel on the band's field (``FIELD``), float64.
    """
    from scipy.signal import fftconvolve

    image = np.asarray(image, dtype=np.float64)
    if image.ndim != 2:
        raise ValueError(f"expected a 2-D image, got shape {image.shape}")
    if band not in FIELD:
        raise ValueError(f"unknown band {band!r}; known: {', '.join(FIELD)}")
    conv = fftconvolve(image, _kernel(band, scale, native_fwhm), mode="full")
    return _resample(conv, scale, band, offset)


@lru_cache(maxsize=64)
def native_noise_gain(band: str, scale: float, native_fwhm: float) -> float:
    """σ after :func:`degrade` of unit white noise at ``scale`` (measured on a fixed noise field)."""
    n_out, out_scale = FIELD[band]
    n = int(np.ceil(6.0 / scale))  # a 6″ patch: well inside the field, many output pixels
    noise = np.random.default_rng(12345).standard_normal((n, n))
    out = degrade(noise, scale, band, native_fwhm)
    half = int(2.0 / out_scale)  # the central 4″, away from the patch edges
    c = n_out // 2
    return float(np.std(out[c - half:c + half, c - half:c + half]))


def add_noise(signal: np.ndarray, band: str, rng: np.random.Generator, native_var=0.0) -> np.ndarray:
    """Signal plus Euclid Wide noise at the nominal depth, topped up over ``native_var`` (σ², scalar or map)."""
    from lensengine.training._sim_physics import INSTRUMENT

    t = INSTRUMENT.exposure_time[band]
    var = np.maximum(signal, 0.0) / t + INSTRUMENT.background_variance(band)
    add = np.sqrt(np.maximum(var - native_var, 0.0))
    return (signal + add * rng.standard_normal(signal.shape)).astype(np.float32)


# ----------------------------------------------------------------------------- units and colours


@lru_cache(maxsize=32)
def template_colours(cls: str, z: float) -> tuple[float, float, float, float]:
    """(0, Y − VIS, J − VIS, H − VIS) of a typical "red" or "blue" galaxy at ``z`` (simulator's SkyPy templates).

    Typical: the mean of 256 template-coefficient draws from a fixed generator.
    """
    from lensengine.training._sim_physics import sed_table

    table = sed_table()
    rng = np.random.default_rng(2022)
    coeff = np.mean([table.sample_coefficients(rng, cls) for _ in range(256)], axis=0)
    return tuple(float(c) for c in table.colours(coeff, float(z)))


def _e_per_s(maggies: np.ndarray, band: str) -> np.ndarray:
    from lensengine.training._sim_physics import INSTRUMENT

    return maggies * 10 ** (0.4 * INSTRUMENT.zero_point[band])


def _maggies_from_f814w(image_e_s: np.ndarray) -> np.ndarray:
    return np.asarray(image_e_s, dtype=np.float64) * 10 ** (-0.4 * ZP_F814W)


def _maggies_from_mjy_sr(image: np.ndarray, scale: float) -> np.ndarray:
    jy = np.asarray(image, dtype=np.float64) * 1e6 * (scale * _ARCSEC_RAD) ** 2
    return jy / 3631.0


@dataclass(frozen=True)
class EuclidInput:
    """High-resolution images already in Euclid e-/s per native pixel, one per Euclid band."""

    images: dict  # band -> 2-D array (native grid)
    scale: float
    native_fwhm: dict  # band -> arcsec
    native_sigma: dict  # band -> per-native-pixel σ in the same units
    noise_corr: dict  # band -> correlation factor of the native noise at the band's pixel (correlation_factor)
    mag_vis: float
    colour_class: str
    nisp_from: str


def euclid_bands(g, colour_class: str | None = None) -> EuclidInput:
    """The four Euclid-band images of a real galaxy (module docstring, steps 1–2, and the taper)."""
    from lensengine.training._sim_physics import INSTRUMENT

    is_jwst = g.band.startswith("F1") and "F150W" in g.extra_bands
    cls = colour_class or ("red" if "cosj100020" in g.name.lower() else "blue")
    z = g.z if g.z is not None else DEFAULT_Z
    col = template_colours(cls, round(float(z), 3))
    fwhm_psf = _fwhm_of(g.psf, g.pixel_scale) if g.psf is not None else NATIVE_FWHM.get(g.band, 0.1)
    if is_jwst:
        to_m = lambda a: _maggies_from_mjy_sr(a, g.pixel_scale)  # noqa: E731
        y, h = to_m(g.image), to_m(g.extra_bands["F150W"])
        maggies = {"Y": y, "J": 0.5 * (y + h), "H": h, "VIS": y * 10 ** (0.4 * col[1])}
        s_y = float(to_m(np.array(g.noise_sigma)))
        fwhm = {"VIS": fwhm_psf, "Y": fwhm_psf, "J": NATIVE_FWHM["F150W"], "H": NATIVE_FWHM["F150W"]}
        sig = {"VIS": s_y * 10 ** (0.4 * col[1]), "Y": s_y, "J": s_y, "H": s_y}
        nisp_from = "JWST F115W/F150W"
    else:
        vis = _maggies_from_f814w(g.image)
        maggies = {"VIS": vis, **{b: vis * 10 ** (-0.4 * c) for b, c in zip(BANDS[1:], col[1:])}}
        s = float(_maggies_from_f814w(np.array(g.noise_sigma)))
        sig = {"VIS": s, **{b: s * 10 ** (-0.4 * c) for b, c in zip(BANDS[1:], col[1:])}}
        fwhm = {b: fwhm_psf for b in BANDS}
        nisp_from = f"{g.band} x {cls} template colours at z={z:g}"
    images = {b: taper(_e_per_s(maggies[b], b)) for b in BANDS}
    total = float(np.sum(images["VIS"])) * 10 ** (-0.4 * INSTRUMENT.zero_point["VIS"])
    corr = {b: correlation_factor(g.image, FIELD[b][1] / g.pixel_scale) for b in BANDS}
    return EuclidInput(images=images, scale=float(g.pixel_scale), native_fwhm=fwhm,
                       native_sigma={b: float(_e_per_s(np.array(sig[b]), b)) for b in BANDS}, noise_corr=corr,
                       mag_vis=-2.5 * np.log10(total) if total > 0 else float("nan"),
                       colour_class=cls, nisp_from=nisp_from)


# ----------------------------------------------------------------------------- cutouts


@dataclass
class Cutout:
    vis: np.ndarray  # (200, 200) float32 e-/s
    nisp: np.ndarray  # (3, 66, 66) float32 e-/s
    truth: dict


def _rng(seed: int, index: int) -> tuple[np.random.Generator, int]:
    ss = np.random.SeedSequence(int(seed), spawn_key=(int(index),))
    return np.random.default_rng(ss), int(ss.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def render(inp: EuclidInput, seed: int, index: int, truth: dict) -> Cutout:
    """Degrade, place (seeded offset) and add noise: one Euclid cutout of ``inp``."""
    from threadpoolctl import threadpool_limits

    from lensengine.training._sim_physics import INSTRUMENT

    rng, cseed = _rng(seed, index)
    offset = tuple(float(v) for v in rng.uniform(-MAX_OFFSET, MAX_OFFSET, 2))
    out, native = {}, {}
    # small matrix products: a multi-threaded BLAS only thrashes (4x slower on 2 busy cores),
    # and one thread keeps the cutouts bit-identical across machines
    with threadpool_limits(limits=1, user_api="blas"):
        for b in BANDS:
            signal = degrade(inp.images[b], inp.scale, b, inp.native_fwhm[b], offset)
            native[b] = (inp.native_sigma[b] * inp.noise_corr[b]
                         * native_noise_gain(b, inp.scale, round(inp.native_fwhm[b], 4)))
            # where the stamp (tapered) lies: its noise is there, blank sky elsewhere
            ratio = FIELD[b][1] / inp.scale
            cover = _resample(taper(np.ones(inp.images[b].shape)) ** 2, inp.scale, b, offset) / ratio ** 2
            out[b] = add_noise(signal, b, rng, native[b] ** 2 * cover)
    native_vis = native["VIS"] / INSTRUMENT.noise_floor("VIS")
    t = {**truth, "mag_VIS": inp.mag_vis, "colour_class": inp.colour_class, "nisp_from": inp.nisp_from,
         "offset_x": offset[0], "offset_y": offset[1], "native_noise_VIS": native_vis, "seed": cseed}
    return Cutout(vis=out["VIS"], nisp=np.stack([out[b] for b in BANDS[1:]]), truth=t)


def _j0946_dir(root: Path | None) -> Path:
    if root is not None:
        return Path(root)
    from lensengine.training.real_galaxies import shared_real_root

    galaxies = shared_real_root()
    if galaxies is None:
        raise FileNotFoundError("shared/real not found: set LENSENGINE_SHARED or give the J0946 folder")
    return galaxies.parent / "hst_sdssj0946"


def j0946_cutout(seed: int = 0, root: str | Path | None = None) -> Cutout:
    """SDSS J0946+1006 degraded to Euclid (HST F814W-like, 0.05″, e-/s assumed; a red lens colour at z 0.222)."""
    from astropy.io import fits

    from lensengine.training.real_galaxies import RealGalaxy, background

    folder = _j0946_dir(Path(root) if root is not None else None)
    data_file = folder / "data.fits"
    if not data_file.is_file():
        raise FileNotFoundError(f"J0946 image {data_file} not found")
    info = json.loads((folder / "info.json").read_text())
    scale = float(info["pixel_scale"])
    image = np.asarray(fits.getdata(data_file), dtype=np.float64)
    level, sigma = background(image)
    image = image - level
    psf = np.asarray(fits.getdata(folder / "psf.fits"), dtype=np.float64)
    g = RealGalaxy(name="hst_sdssj0946/J0946+1006", image=image, pixel_scale=scale, band="F814W",
                   psf=psf / psf.sum(), noise_sigma=sigma, mag=None, z=float(info.get("redshift_lens", J0946_Z)),
                   extra_bands={})
    inp = euclid_bands(g, colour_class="red")
    return render(inp, seed, 0, {"label": 1, "is_lens": 1, "kind": "real-lens", "name": g.name, "role": "check",
                                 "z": g.z})


def _role(name: str) -> str:
    try:
        from lensengine.training._sim_scenes import real_galaxy_role
    except ImportError:  # the simulator's split is not available: say so rather than guess
        return "unknown"
    return real_galaxy_role(name)


def galaxy_cutouts(seed: int = 0, root: str | Path | None = None, *, roles=("sim", "check")) -> list[Cutout]:
    """Every real galaxy (of the given simulator roles) degraded to Euclid, in loader order."""
    from lensengine.training.real_galaxies import load_real_galaxies

    out = []
    for i, g in enumerate(load_real_galaxies(root)):
        role = _role(g.name)
        if role not in roles and role != "unknown":
            continue
        truth = {"label": 0, "is_lens": 0, "kind": "real-galaxy", "name": g.name, "role": role,
                 "z": np.nan if g.z is None else g.z}
        out.append(render(euclid_bands(g), seed, i, truth))
    return out


def _write(path: Path, cutouts: list[Cutout], provenance: dict, overwrite: bool) -> Path:
    from lensengine.catalogs.store import CutoutBatch, SurveyStore

    store = SurveyStore.create(path, survey=SURVEY, chunk_size=128, truth_columns=TRUTH_COLUMNS,
                               provenance=provenance, overwrite=overwrite)
    n = len(cutouts)
    index = np.arange(n, dtype=np.int64)
    truth = {c: np.asarray([k.truth[c] for k in cutouts], dtype=str if dt == "str" else dt)
             for c, dt in TRUTH_COLUMNS.items()}
    batch = CutoutBatch(object_id=index, ra=np.zeros(n), dec=np.zeros(n),
                        vis=np.stack([k.vis for k in cutouts]), nisp=np.stack([k.nisp for k in cutouts]),
                        flags=np.zeros(n, dtype=np.uint32), truth=truth)
    store.append(TILE, batch)
    return path


def write_realcheck(out_dir, seed: int = 0, *, real_root=None, j0946_root=None, roles=("sim", "check"),
                    overwrite: bool = False) -> dict[str, Path]:
    """Write ``j0946.zarr``, ``real_galaxies.zarr`` and ``realcheck.json`` into ``out_dir``; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    prov = {"generator": "lensengine.training.realcheck", "seed": int(seed), "zp_f814w": ZP_F814W,
            "native_fwhm_default": NATIVE_FWHM, "default_z": DEFAULT_Z, "max_offset_arcsec": MAX_OFFSET,
            "units": "e-/s per pixel, sky subtracted", "depth": "Euclid Wide nominal (median)"}
    j = j0946_cutout(seed, j0946_root)
    paths = {"j0946": _write(out / "j0946.zarr", [j], {**prov, "what": "SDSS J0946+1006"}, overwrite)}
    gals = galaxy_cutouts(seed, real_root, roles=tuple(roles))
    if not gals:
        raise ValueError(f"no real galaxies with roles {roles}")
    paths["real"] = _write(out / "real_galaxies.zarr", gals,
                           {**prov, "what": "real galaxies (not lenses)", "roles": list(roles)}, overwrite)
    manifest = {"seed": int(seed), "stores": {k: str(v) for k, v in paths.items()},
                "cutouts": [{k: (v if not isinstance(v, float) or np.isfinite(v) else None)
                             for k, v in c.truth.items()} for c in [j, *gals]]}
    paths["manifest"] = out / "realcheck.json"
    paths["manifest"].write_text(json.dumps(manifest, indent=2, default=float))
    return paths
