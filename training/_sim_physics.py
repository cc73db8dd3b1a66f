"""Physics tables for the simulator: cosmology, instrument, lens scaling relations, galaxy colours.

Everything here is computed once per process and cached; the per-cutout code
(:mod:`lensengine.training._sim_render`, :mod:`lensengine.training._sim_scenes`)
only interpolates in these tables.

* Cosmology: flat ΛCDM, H0 = 70 km/s/Mpc, Ωm = 0.3 (the paper's).  Angular
  diameter distances come from a comoving-distance table (flat universe:
  ``D_A(z1, z2) = (D_C(z2) - D_C(z1)) / (1 + z2)``).
* Instrument: Euclid Wide, per band zero point (AB magnitude of 1 e-/s), sky
  brightness, read noise and number of exposures from lenstronomy's
  ``SimulationAPI.ObservationConfig.Euclid``; total exposure VIS 1800 s and
  NISP 264 s (SPEC §2).  Those settings alone give images about 0.7 mag
  deeper than Euclid Wide (SPEC §6), so the background noise is scaled per
  band (``depth_scale``) to the published depths (``DEPTH_TARGET``; checked
  by ``_sim_render.limiting_magnitude`` and a test).  PSFs: Moffat profiles
  per band (``psf_fwhm``, ``psf_beta``), built by ``_sim_render.psf_kernel``.
* Colours: SkyPy's kcorrect templates (Blanton & Roweis 2007) with Dirichlet
  coefficients (Herbel et al. 2017 red / blue parameters), observed through
  speclite's Euclid VIS, Y, J, H responses on a redshift grid.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from lensengine.engine.specs import BANDS

__all__ = [
    "H0",
    "OM0",
    "Z_REF",
    "C_KMS",
    "Instrument",
    "INSTRUMENT",
    "angular_distance",
    "distance_ratio",
    "theta_e_sis",
    "theta_e_reference",
    "fj_sigma",
    "fj_abs_mag",
    "SedTable",
    "sed_table",
    "SED_CLASSES",
    "DEPTH_TARGET",
    "DEPTH_JITTER_MAG",
]

H0 = 70.0
OM0 = 0.3
C_KMS = 299_792.458
#: Reference source redshift of lenstronomy's multi-plane convention
#: (``z_source_convention``): every deflector's ``theta_E`` is the Einstein
#: radius it would have for a source at this redshift.
Z_REF = 6.0
RAD2ARCSEC = 180.0 / np.pi * 3600.0

_Z_GRID = np.linspace(0.0, 8.0, 4001)


@lru_cache(maxsize=1)
def _comoving_table() -> np.ndarray:
    from scipy.integrate import cumulative_trapezoid

    ez = np.sqrt(OM0 * (1 + _Z_GRID) ** 3 + (1 - OM0))
    return cumulative_trapezoid(C_KMS / H0 / ez, _Z_GRID, initial=0.0)  # Mpc


def comoving_distance(z) -> np.ndarray:
    return np.interp(z, _Z_GRID, _comoving_table())


def angular_distance(z1, z2=None) -> np.ndarray:
    """Angular diameter distance (Mpc) from z1 to z2 (from 0 to z1 when z2 is None); flat universe."""
    if z2 is None:
        z1, z2 = 0.0, z1
    return (comoving_distance(z2) - comoving_distance(z1)) / (1.0 + np.asarray(z2, dtype=float))


def distance_ratio(z_lens, z_source) -> np.ndarray:
    """D_ls / D_s (zero when the source is not behind the lens)."""
    z_lens = np.asarray(z_lens, dtype=float)
    z_source = np.asarray(z_source, dtype=float)
    ratio = angular_distance(z_lens, z_source) / angular_distance(z_source)
    return np.where(z_source > z_lens, ratio, 0.0)


def theta_e_sis(sigma_kms, z_lens, z_source) -> np.ndarray:
    """Einstein radius (arcsec) of a singular isothermal sphere: 4π (σ/c)² D_ls/D_s (paper eq. 1)."""
    return 4.0 * np.pi * (np.asarray(sigma_kms) / C_KMS) ** 2 * distance_ratio(z_lens, z_source) * RAD2ARCSEC


def theta_e_reference(theta_e, z_lens, z_source, z_ref: float = Z_REF) -> np.ndarray:
    """Convert a physical Einstein radius (for a source at ``z_source``) to lenstronomy's convention.

    In multi-plane mode lenstronomy's ``theta_E`` is the Einstein radius for a
    source at ``z_source_convention`` (here ``z_ref``); for a fixed velocity
    dispersion θ_E scales with D_ls/D_s, so
    ``theta_E_ref = theta_E * (D_l,ref / D_ref) / (D_ls / D_s)``.
    """
    return np.asarray(theta_e) * distance_ratio(z_lens, z_ref) / distance_ratio(z_lens, z_source)


# --- Faber-Jackson --------------------------------------------------------
#: Faber–Jackson relation L ∝ σ⁴ in rest-frame Bessell R (AB):
#: M_R = FJ_M200 - 10 log10(σ / 200 km/s), scatter FJ_SCATTER mag
#: (normalisation from the SDSS early-type relation of Bernardi et al. 2003).
FJ_M200 = -21.4
FJ_SCATTER = 0.25


def fj_abs_mag(sigma_kms) -> np.ndarray:
    return FJ_M200 - 10.0 * np.log10(np.asarray(sigma_kms) / 200.0)


def fj_sigma(abs_mag) -> np.ndarray:
    return 200.0 * 10 ** ((FJ_M200 - np.asarray(abs_mag)) / 10.0)


# --- instrument -----------------------------------------------------------
@dataclass(frozen=True)
class Instrument:
    """Per-band Euclid Wide observing settings (dicts keyed by band)."""

    zero_point: dict  # AB mag of 1 e-/s
    sky_mag: dict  # mag / arcsec^2
    read_noise: dict  # e- per exposure
    n_exposures: dict
    exposure_time: dict  # total seconds
    psf_fwhm: dict  # arcsec, FWHM of the optical PSF before pixel integration (jittered ±PSF_JITTER per cutout)
    pixel_scale: dict
    psf_beta: dict  # Moffat β of the PSF (smaller: stronger wings)
    depth_scale: dict  # background σ multiplier that calibrates the depth to DEPTH_TARGET

    def sky_rate(self, band: str) -> float:
        """Sky per pixel in e-/s."""
        return 10 ** (-0.4 * (self.sky_mag[band] - self.zero_point[band])) * self.pixel_scale[band] ** 2

    def flux(self, band: str, mag) -> np.ndarray:
        """e-/s of a source of AB magnitude ``mag``."""
        return 10 ** (-0.4 * (np.asarray(mag, dtype=float) - self.zero_point[band]))

    def background_variance(self, band: str) -> float:
        """Per-pixel background variance (e-/s)²: sky Poisson + read noise, times ``depth_scale``²."""
        t = self.exposure_time[band]
        var = self.sky_rate(band) * t + self.n_exposures[band] * self.read_noise[band] ** 2
        return float(var * self.depth_scale[band] ** 2 / t ** 2)

    def noise_floor(self, band: str) -> float:
        """Per-pixel background noise σ (e-/s) at the nominal (median) depth."""
        return float(np.sqrt(self.background_variance(band)))


PSF_JITTER = 0.05
#: Euclid Wide median depths (SPEC §6): band -> (AB magnitude, S/N, source).  VIS: a
#: galaxy of 0.3″ FWHM (circular Gaussian before the PSF) in a 1.3″-diameter aperture at
#: 10σ; NISP: a point source at 5σ with PSF-weighted (optimal) photometry, median over
#: sub-pixel positions.  ``_sim_render.limiting_magnitude`` computes both.
DEPTH_TARGET = {"VIS": (24.5, 10.0, "extended"), "Y": (24.4, 5.0, "point"), "J": (24.4, 5.0, "point"),
                "H": (24.4, 5.0, "point")}
#: per-cutout depth variation across the survey: the background σ is scaled by
#: 10^(0.4 u), u uniform in ±DEPTH_JITTER_MAG (the nominal depth is the median)
DEPTH_JITTER_MAG = 0.15


_DEPTH_SCALE = {"VIS": 2.191, "Y": 1.503, "J": 1.707, "H": 1.607}


def _euclid_instrument() -> Instrument:
    from lenstronomy.SimulationAPI.ObservationConfig import Euclid as euclid

    obs = {"VIS": euclid.VIS_band_obs, "Y": euclid.Y_band_obs, "J": euclid.J_band_obs, "H": euclid.H_band_obs}
    cam = {"VIS": euclid.VIS_camera, "Y": euclid.NISP_camera, "J": euclid.NISP_camera, "H": euclid.NISP_camera}
    return Instrument(
        zero_point={b: float(obs[b]["magnitude_zero_point"]) for b in BANDS},
        sky_mag={b: float(obs[b]["sky_brightness"]) for b in BANDS},
        read_noise={b: float(cam[b]["read_noise"]) for b in BANDS},
        n_exposures={b: int(obs[b]["num_exposures"]) for b in BANDS},
        exposure_time={"VIS": 1800.0, "Y": 264.0, "J": 264.0, "H": 264.0},
        psf_fwhm={"VIS": 0.16, "Y": 0.38, "J": 0.40, "H": 0.43},
        pixel_scale={"VIS": 0.1, "Y": 0.3, "J": 0.3, "H": 0.3},
        psf_beta={"VIS": 2.5, "Y": 3.0, "J": 3.0, "H": 3.0},
        # background σ multipliers that put the depth at DEPTH_TARGET (computed with
        # _sim_render.calibrate_depth_scale for these PSFs; a test checks the depth)
        depth_scale=dict(_DEPTH_SCALE),
    )


INSTRUMENT = _euclid_instrument()


# --- galaxy colours from SkyPy templates ----------------------------------
#: Dirichlet parameters (alpha, weight) of the kcorrect template coefficients
#: per spectral class (the red / blue values of SkyPy's examples, after Herbel
#: et al. 2017): coefficients = Dirichlet(alpha) * weight, normalised.
_DIRICHLET = {
    "red": ([2.461, 2.358, 2.568, 2.268, 2.402], [3.84e9, 1.57e6, 3.91e8, 4.66e10, 3.03e7]),
    "blue": ([2.079, 3.524, 1.917, 1.992, 2.536], [3.47e9, 3.31e6, 2.13e9, 1.64e10, 1.01e9]),
    # young star-forming galaxies (the blue lensed sources of SLACS-like samples): SkyPy's blue
    # weights with the emission-line template boosted tenfold (VIS - H ≈ -0.3 at z = 1-2)
    "starburst": ([1.0, 3.0, 1.0, 1.0, 1.0], [3.47e9, 3.31e7, 2.13e9, 1.64e10, 1.01e9]),
}
SED_CLASSES = tuple(_DIRICHLET)
_SED_Z = np.linspace(0.02, 3.4, 86)
_FILTERS = ("Euclid-VIS", "Euclid-Y", "Euclid-J", "Euclid-H")


@dataclass(frozen=True)
class SedTable:
    """Maggies of the five kcorrect templates (unit stellar mass): ``obs[k, iz, band]``, ``rest_r[k]``.

    Maggies are linear in the template coefficients, so any galaxy's colours
    follow from this table without touching a spectrum again.
    """

    z: np.ndarray
    obs: np.ndarray  # (5, nz, 4) observed-frame maggies in VIS, Y, J, H
    rest_r: np.ndarray  # (5,) rest-frame Bessell R maggies at 10 pc

    def sample_coefficients(self, rng: np.random.Generator, cls: str) -> np.ndarray:
        """Template coefficients of one galaxy of spectral class ``cls`` (SkyPy/Herbel Dirichlet model)."""
        alpha, weight = _DIRICHLET[cls]
        c = rng.dirichlet(np.asarray(alpha, dtype=float)) * np.asarray(weight)
        return c / c.sum()

    def apparent(self, coeff: np.ndarray, z: float, abs_r: float) -> np.ndarray:
        """AB magnitudes in (VIS, Y, J, H) at redshift ``z`` for rest-frame M_R = ``abs_r``."""
        iz = np.clip(np.searchsorted(self.z, z) - 1, 0, len(self.z) - 2)
        w = np.clip((z - self.z[iz]) / (self.z[iz + 1] - self.z[iz]), 0.0, 1.0)
        maggies = (1 - w) * (coeff @ self.obs[:, iz, :]) + w * (coeff @ self.obs[:, iz + 1, :])
        m_unit = -2.5 * np.log10(maggies)
        m_abs_unit = -2.5 * np.log10(coeff @ self.rest_r)
        return m_unit + (abs_r - m_abs_unit)

    def colours(self, coeff: np.ndarray, z: float) -> np.ndarray:
        """Magnitude offsets of (VIS, Y, J, H) relative to VIS."""
        m = self.apparent(coeff, z, 0.0)
        return m - m[0]


def _cache_dir():
    from pathlib import Path

    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "lensengine"


_SED_CACHE_NAME = "sim_sed_table_v1.npz"


@lru_cache(maxsize=1)
def sed_table() -> SedTable:
    """The template colour table: from the user cache, else computed (≈5 s) and cached."""
    path = _cache_dir() / _SED_CACHE_NAME
    try:
        with np.load(path) as data:
            if np.array_equal(data["z"], _SED_Z):
                return SedTable(z=_SED_Z, obs=data["obs"], rest_r=data["rest_r"])
    except (OSError, KeyError, ValueError):
        pass
    table = _compute_sed_table()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez(tmp, z=table.z, obs=table.obs, rest_r=table.rest_r)
        os.replace(tmp, path)
    except OSError:  # a read-only home is fine: recompute next time
        pass
    return table


def _compute_sed_table() -> SedTable:
    """Observe the five kcorrect templates through the Euclid filters on a redshift grid."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # skypy/astropy deprecation noise on import
        from skypy.galaxies.spectrum import kcorrect
        import speclite.filters  # noqa: F401  (registers the Euclid responses)
    from astropy.cosmology import FlatLambdaCDM

    cosmo = FlatLambdaCDM(H0=H0, Om0=OM0)
    nz = len(_SED_Z)
    coeff = np.repeat(np.eye(5), nz, axis=0)
    z = np.tile(_SED_Z, 5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = kcorrect.apparent_magnitudes(coeff, z, list(_FILTERS), cosmo, stellar_mass=np.ones(len(z)))
        mr = kcorrect.absolute_magnitudes(np.eye(5), ["bessell-R"], stellar_mass=np.ones(5))
    obs = 10 ** (-0.4 * np.asarray(m, dtype=float).reshape(5, nz, 4))
    rest = 10 ** (-0.4 * np.asarray(mr, dtype=float).reshape(5))
    return SedTable(z=_SED_Z, obs=obs, rest_r=rest)
