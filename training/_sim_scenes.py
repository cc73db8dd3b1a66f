"""Scene samplers: galaxies, environments, lens systems (single, compound, survey).

Each sampler draws every random number from the one per-cutout
``numpy.random.Generator`` it is given, so a cutout is a pure function of its
seed.  Populations (documented in docs/simulation.md):

* Deflectors: velocity dispersion from the Choi et al. (2007) Schechter VDF
  weighted by the lensing cross-section (∝ σ⁴) for lenses; rest-frame M_R from
  Faber–Jackson (+0.25 mag scatter); red kcorrect SED; early-type
  size–luminosity relation (Shen et al. 2003).
* Sources: Smail-type n(z) (SkyPy's ``smail`` form), unlensed VIS magnitude
  uniform in ``SOURCE_MAG``; Sérsic with 0-4 star-forming clumps; colour
  class per ``source_colour``.
* Every stamp has neighbours and faint background galaxies (a sparse field for
  the challenge-like kinds, realistic counts for the survey kinds).

Non-lens scenes are in :mod:`lensengine.training._sim_negatives`, real galaxy
morphologies in :mod:`lensengine.training._sim_real`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from lensengine.training._sim_physics import (
    OM0, H0, RAD2ARCSEC, Z_REF, angular_distance, fj_abs_mag, FJ_SCATTER, sed_table,
    theta_e_reference, theta_e_sis,
)
from lensengine.training._sim_real import (
    REAL_NEIGHBOUR_FRACTION, REAL_SOURCE_FRACTION, Stamp, add_stamp_galaxy, real_galaxy_role, real_stamps, stamp_sb,
)
from lensengine.training._sim_render import GRID_X, GRID_Y, Scene, pixel_average, sersic, subpixel_grid, window

__all__ = ["Galaxy", "SystemTruth", "sample_deflector", "sample_single_lens", "sample_compound",
           "sample_survey_lens", "SURVEY_LENS_TYPES", "SOURCE_COLOURS", "add_environment", "add_sky_environment",
           "real_galaxy_role"]

# --- tunable population parameters (documented in docs/simulation.md) -------
LENS_Z = (0.55, 0.22, 0.15, 1.1)  # truncated normal: mean, sd, min, max
VDF = (161.0, 2.32, 2.67)  # Choi et al. 2007: sigma*, alpha, beta
LENS_SIGMA = (180.0, 380.0)
SOURCE_Z = (1.6, 0.3, 3.3)  # Smail median, min gap above the deflector, max
SOURCE_MAG = (20.5, 24.0)  # unlensed VIS AB
SOURCE_RE = (0.25, 0.25)  # log-normal median (arcsec), sd (dex)
SOURCE_OFFSET = 0.6  # max source-plane offset from the deflector, in units of θ_E
CENTRE_SD = 1.5  # arcsec, offset of the main galaxy from the stamp centre (clipped at 6")
SHEAR_SD = 0.05  # per component, single lenses
COMPOUND_SHEAR_MAX = 0.5  # per component, paper's Table 1 (published code: 0.05)
SOURCE_COLOURS = ("blue", "red", "mixed")
#: survey lenses (the hard tail): deflector σ range (VDF × σ⁴), unlensed source VIS magnitudes
#: (number counts, slope COUNT_SLOPE), source sizes (log-normal median, dex), source-plane offset (units of θ_E)
SURVEY_SIGMA = (160.0, 380.0)
SURVEY_SOURCE_MAG = (21.5, 26.5)
SURVEY_SOURCE_RE = (0.18, 0.25)
SURVEY_SOURCE_OFFSET = 1.0
#: realistic field: mean numbers of neighbours (VIS 20-24.5) and faint galaxies (24.5-27) per
#: 20″ × 20″ stamp (≈ 40 and ≈ 110 per arcmin², deep I-band counts) and the count slope dlogN/dm
SKY_NEIGHBOURS = 4.0
SKY_FAINT = 12.0
#: crowded fields (groups, clusters): this share of survey lenses (lens type "crowded") and of the
#: non-lenses in a realistic field, with CROWDED_DENSITY times the counts plus close companions
CROWDED_FRACTION = 0.10
CROWDED_DENSITY = 3.0
#: sub-populations of survey lenses (docs/simulation.md)
SURVEY_LENS_TYPES = {"galaxy": 0.70 - CROWDED_FRACTION, "compact": 0.15, "group": 0.15, "crowded": CROWDED_FRACTION}
COUNT_SLOPE = 0.3
#: field galaxies of the realistic environment: spectral classes (faint field galaxies are mostly
#: star-forming) and redshift: normal of mean z0 + dz (VIS - 20), sd, truncated to 0.05-3
SKY_FIELD_CLASSES = {"red": 0.2, "blue": 0.5, "starburst": 0.3}
SKY_FIELD_Z = (0.35, 0.17, 0.35)
#: source colour -> SED classes and their probabilities
_SOURCE_SED = {"blue": (("starburst",), (1.0,)), "red": (("red",), (1.0,)),
               "mixed": (("starburst", "blue", "red"), (0.65, 0.2, 0.15))}


@dataclass
class Galaxy:
    z: float
    mags: np.ndarray  # VIS, Y, J, H
    r_e: float
    n: float
    q: float
    phi: float
    x: float
    y: float
    sigma: float = float("nan")
    sed: str = "red"


@dataclass
class SystemTruth:
    kind: str
    label_candidate: bool  # contains lensed light (the labelling rule decides the label)
    theta_e: float = 0.0
    theta_e2: float = float("nan")
    sigma_v: float = float("nan")
    sigma_v2: float = float("nan")
    z_lens: float = float("nan")
    z_lens2: float = float("nan")
    z_source: float = float("nan")
    mag_lens: np.ndarray = field(default_factory=lambda: np.full(4, np.nan))
    mag_source: np.ndarray = field(default_factory=lambda: np.full(4, np.nan))
    source_colour: str = ""
    x_lens: float = 0.0
    y_lens: float = 0.0
    source_flux_vis: float = 0.0  # unlensed e-/s in VIS (for the magnification)
    lens_type: str = ""  # survey lenses: galaxy, compact, group, crowded; "" otherwise
    n_deflectors: int = 0
    source_type: str = ""  # "sersic" or "real:<name>" (the lensed source's light)
    source_re: float = float("nan")  # arcsec, unlensed half-light radius
    n_neighbours: int = 0  # galaxies brighter than VIS 24.5 added around the system


# --- helpers -----------------------------------------------------------------
@lru_cache(maxsize=8)
def _vdf_inverse_cdf(weight: float, lo: float, hi: float):
    s_star, alpha, beta = VDF
    s = np.linspace(lo, hi, 2001)
    pdf = (s / s_star) ** alpha * np.exp(-((s / s_star) ** beta)) / s * s ** weight  # VDF x σ^weight
    cdf = np.cumsum(pdf)
    cdf = (cdf - cdf[0]) / (cdf[-1] - cdf[0])
    return cdf, s


def _sample_sigma(rng, weight: float = 4.0, lo: float = LENS_SIGMA[0], hi: float = LENS_SIGMA[1]):
    """σ from the Choi et al. VDF on [lo, hi] times σ^weight (4: the lensing cross-section; 0: all galaxies)."""
    cdf, s = _vdf_inverse_cdf(float(weight), float(lo), float(hi))
    return float(np.interp(rng.uniform(), cdf, s))


@lru_cache(maxsize=1)
def _smail_inverse_cdf():
    z_med = SOURCE_Z[0]
    z0 = z_med / 1.412  # alpha=2, beta=1.5: median ≈ 1.412 z0
    z = np.linspace(0.0, 6.0, 3001)
    pdf = z ** 2 * np.exp(-((z / z0) ** 1.5))
    cdf = np.cumsum(pdf)
    return cdf / cdf[-1], z


def _sample_source_z(rng, z_min):
    cdf, z = _smail_inverse_cdf()
    lo, hi = np.interp([z_min, SOURCE_Z[2]], z, cdf)
    return float(np.interp(rng.uniform(lo, hi), cdf, z))


def _trunc_normal(rng, mean, sd, lo, hi):
    for _ in range(100):
        v = rng.normal(mean, sd)
        if lo <= v <= hi:
            return float(v)
    return float(np.clip(mean, lo, hi))


def _kpc_to_arcsec(r_kpc, z):
    return float(r_kpc / (angular_distance(z) * 1e3) * RAD2ARCSEC)


def _centre(rng, sd=CENTRE_SD, lim=6.0):
    return float(np.clip(rng.normal(0, sd), -lim, lim)), float(np.clip(rng.normal(0, sd), -lim, lim))


def _e1e2(q, phi):
    e = (1 - q) / (1 + q)
    return e * np.cos(2 * phi), e * np.sin(2 * phi)


def sample_deflector(rng, sigma=None, z=None, x=0.0, y=0.0) -> Galaxy:
    """A massive early type: σ (VDF × σ⁴), FJ magnitude, red SED, Shen et al. size."""
    sed = sed_table()
    if sigma is None:
        sigma = _sample_sigma(rng)
    if z is None:
        z = _trunc_normal(rng, *LENS_Z)
    abs_r = float(fj_abs_mag(sigma)) + rng.normal(0, FJ_SCATTER)
    mags = sed.apparent(sed.sample_coefficients(rng, "red"), z, abs_r)
    r_kpc = 10 ** (0.60 + 0.26 * (-abs_r - 21.5) + rng.normal(0, 0.12))
    return Galaxy(z=z, mags=mags, r_e=max(_kpc_to_arcsec(r_kpc, z), 0.15), n=rng.uniform(3.0, 6.0),
                  q=rng.uniform(0.6, 1.0), phi=rng.uniform(0, np.pi), x=x, y=y, sigma=float(sigma), sed="red")


def _source_sed(rng, source_colour):
    classes, probs = _SOURCE_SED[source_colour]
    return classes[rng.choice(len(classes), p=probs)]


def _add_source(scene, rng, bx, by, z_s, cx, cy, sed_cls, *, where=None, mag_range=SOURCE_MAG, r_e=None,
                stamp: Stamp | None = None, max_clumps: int = 4, mag_slope: float = 0.0):
    """A lensed source evaluated at ray-traced coordinates (bx, by) of :func:`subpixel_grid` positions (averaged
    over each pixel, so sources and clumps smaller than a pixel keep their flux); returns its magnitudes.

    A Sérsic profile with 0-``max_clumps`` star-forming clumps, or the real
    galaxy ``stamp`` scaled to ``r_e`` (random orientation and mirror).
    ``r_e`` (arcsec) defaults to a draw from ``SOURCE_RE``.  The unlensed VIS
    magnitude is uniform in ``mag_range``, or follows number counts of slope
    ``mag_slope`` (dlogN/dm) when that is non-zero.
    """
    sed = sed_table()
    m_vis = _count_mag(rng, *mag_range, slope=mag_slope) if mag_slope else rng.uniform(*mag_range)
    colours = sed.colours(sed.sample_coefficients(rng, sed_cls), z_s)
    mags = m_vis + colours
    if r_e is None:
        r_e = float(np.clip(SOURCE_RE[0] * 10 ** rng.normal(0, SOURCE_RE[1]), 0.05, 1.0))
    if stamp is not None:
        sb = stamp_sb(stamp, bx, by, cx, cy, r_e, rng.uniform(0, 2 * np.pi), bool(rng.integers(2)))
        scene.add(pixel_average(sb), mags, lensed=True, where=where)
        return mags
    n = rng.uniform(0.5, 2.0)
    q, phi = rng.uniform(0.4, 1.0), rng.uniform(0, np.pi)
    n_clumps = rng.integers(0, max_clumps + 1)
    f_clumps = rng.uniform(0.1, 0.4) if n_clumps else 0.0
    scene.add(pixel_average(sersic(bx, by, r_e, n, q, phi, cx, cy)), mags - 2.5 * np.log10(1 - f_clumps), lensed=True,
              where=where)
    if n_clumps:
        # clumps are younger (bluer) than the host: shift their colours by up to 0.3 mag
        clump_col = colours * rng.uniform(0.4, 1.0)
        for _ in range(n_clumps):
            rr, th = r_e * rng.uniform(0.2, 1.2), rng.uniform(0, 2 * np.pi)
            sb = sersic(bx, by, rng.uniform(0.02, 0.06), 0.5, 1.0, 0.0, cx + rr * np.cos(th), cy + rr * np.sin(th))
            scene.add(pixel_average(sb), m_vis + clump_col - 2.5 * np.log10(f_clumps / n_clumps), lensed=True,
                      where=where)
    return mags


def _add_galaxy(scene, g: Galaxy):
    """An unlensed Sérsic galaxy, evaluated on a window of ±max(8 R_e, 1.5″) (capped at 12″)."""
    where = window(g.x, g.y, min(max(8.0 * g.r_e, 1.5), 12.0))
    if where is not None:
        scene.add(sersic(where[2], where[3], g.r_e, g.n, g.q, g.phi, g.x, g.y), g.mags, where=where)


def _field_galaxy(rng, m_range, x=None, y=None, cls=None, z=None):
    sed = sed_table()
    cls = cls or ("red" if rng.uniform() < 0.35 else "blue")
    z = float(rng.uniform(0.2, 2.5)) if z is None else float(z)
    m_vis = rng.uniform(*m_range)
    mags = m_vis + sed.colours(sed.sample_coefficients(rng, cls), z)
    r_e = float(np.clip(0.5 * 10 ** (-0.15 * (m_vis - 21.0) + rng.normal(0, 0.15)), 0.05, 2.5))
    n = rng.uniform(2.5, 5.0) if cls == "red" else rng.uniform(0.6, 1.8)
    x = rng.uniform(-10, 10) if x is None else x
    y = rng.uniform(-10, 10) if y is None else y
    return Galaxy(z=z, mags=mags, r_e=r_e, n=n, q=rng.uniform(0.3, 1.0), phi=rng.uniform(0, np.pi), x=x, y=y, sed=cls)


def add_environment(scene, rng, n_neighbours=None) -> int:
    """Neighbours (VIS 21-24.5) and faint background galaxies (24.5-26.5) anywhere in the stamp; returns the
    number of neighbours (the original, sparse field of the challenge-like kinds)."""
    n_nb = rng.poisson(1.0) if n_neighbours is None else n_neighbours
    for _ in range(n_nb):
        _add_galaxy(scene, _field_galaxy(rng, (21.0, 24.5)))
    for _ in range(rng.poisson(4.0)):
        _add_galaxy(scene, _field_galaxy(rng, (24.5, 26.5)))
    return int(n_nb)


def _count_mag(rng, lo, hi, slope=COUNT_SLOPE):
    """A magnitude from number counts dN/dm ∝ 10^(slope m) on [lo, hi]."""
    a, b = 10 ** (slope * lo), 10 ** (slope * hi)
    return float(np.log10(a + rng.uniform() * (b - a)) / slope)


def add_sky_environment(scene, rng, crowded: tuple[float, float] | None = None) -> int:
    """A realistic field: Poisson numbers of neighbours (VIS 20-24.5) and faint galaxies (24.5-27).

    Magnitudes follow the counts' slope (most are faint); a fraction
    ``REAL_NEIGHBOUR_FRACTION`` of the neighbours are real galaxy stamps
    when those are available.  ``crowded`` = (x, y) of the central galaxy
    makes a crowded field (group or cluster environment): ``CROWDED_DENSITY``
    times the mean counts plus 1-3 companions (VIS 21-24) 1.5-4″ from the
    central galaxy.  Returns the number of neighbours (companions included).
    """
    density = CROWDED_DENSITY if crowded is not None else 1.0
    n_nb = int(rng.poisson(SKY_NEIGHBOURS * density))
    stamps = real_stamps()
    for _ in range(n_nb):
        g = _sky_field_galaxy(rng, 20.0, 24.5)
        if stamps and rng.uniform() < REAL_NEIGHBOUR_FRACTION:
            add_stamp_galaxy(scene, rng, stamps[int(rng.integers(len(stamps)))], g)
        else:
            _add_galaxy(scene, g)
    for _ in range(int(rng.poisson(SKY_FAINT * density))):
        _add_galaxy(scene, _sky_field_galaxy(rng, 24.5, 27.0))
    if crowded is not None:
        x, y = crowded
        for _ in range(int(rng.integers(1, 4))):
            sep, a = rng.uniform(1.5, 4.0), rng.uniform(0, 2 * np.pi)
            _add_galaxy(scene, _field_galaxy(rng, (21.0, 24.0), x + sep * np.cos(a), y + sep * np.sin(a)))
            n_nb += 1
    return n_nb


def _sky_field_galaxy(rng, lo, hi) -> Galaxy:
    """A field galaxy of the realistic environment: magnitude from the counts, redshift growing with
    magnitude, spectral class from ``SKY_FIELD_CLASSES``."""
    m_vis = _count_mag(rng, lo, hi)
    names = list(SKY_FIELD_CLASSES)
    cls = names[rng.choice(len(names), p=np.array(list(SKY_FIELD_CLASSES.values())))]
    z = _trunc_normal(rng, SKY_FIELD_Z[0] + SKY_FIELD_Z[1] * (m_vis - 20.0), SKY_FIELD_Z[2], 0.05, 3.0)
    return _field_galaxy(rng, (m_vis, m_vis), cls=cls, z=z)


def _pick(rng, mix: dict) -> str:
    names = list(mix)
    return names[rng.choice(len(names), p=np.array(list(mix.values())))]


# --- lens models (lenstronomy), cached per process ---------------------------
@lru_cache(maxsize=1)
def _single_plane():
    from lenstronomy.LensModel.lens_model import LensModel

    return LensModel(["SIE", "SHEAR"])


@lru_cache(maxsize=1)
def _astropy_cosmo():
    from astropy.cosmology import FlatLambdaCDM

    return FlatLambdaCDM(H0=H0, Om0=OM0)


def _multi_plane(model_list, z_list, z_source):
    import warnings

    from lenstronomy.LensModel.lens_model import LensModel

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Cosmology is provided", category=UserWarning)
        return LensModel(model_list, multi_plane=True, lens_redshift_list=list(z_list), z_source=z_source,
                         z_source_convention=Z_REF, cosmo=_astropy_cosmo())


def _ray_trace(model, x, y, kw) -> tuple[np.ndarray, np.ndarray]:
    """Source-plane positions of the :func:`subpixel_grid` samples of the pixels at (x, y)."""
    sx, sy = subpixel_grid(x, y)
    bx, by = model.ray_shooting(sx, sy, kw)
    return np.asarray(bx, dtype=np.float32), np.asarray(by, dtype=np.float32)


def _sie_kwargs(theta_e, g: Galaxy, rng):
    q_mass = float(np.clip(g.q + rng.normal(0, 0.1), 0.4, 1.0))
    e1, e2 = _e1e2(q_mass, g.phi + rng.normal(0, 0.1))
    return {"theta_E": float(theta_e), "e1": e1, "e2": e2, "center_x": g.x, "center_y": g.y}


# --- systems -------------------------------------------------------------------
def sample_single_lens(rng, source_colour="mixed") -> tuple[Scene, SystemTruth]:
    """SIE + shear deflector with its light, a lensed Sérsic source with clumps, environment."""
    x, y = _centre(rng)
    lens = sample_deflector(rng, x=x, y=y)
    z_s = _sample_source_z(rng, lens.z + SOURCE_Z[1])
    theta_e = float(theta_e_sis(lens.sigma, lens.z, z_s))
    kw = [_sie_kwargs(theta_e, lens, rng),
          {"gamma1": rng.normal(0, SHEAR_SD), "gamma2": rng.normal(0, SHEAR_SD), "ra_0": x, "dec_0": y}]
    # lensed images lie within ~2 θ_E of the deflector: trace only that window
    where = window(x, y, 2.0 * theta_e + 2.5)
    bx, by = _ray_trace(_single_plane(), where[2], where[3], kw)
    r_src = theta_e * SOURCE_OFFSET * np.sqrt(rng.uniform())  # uniform in area inside SOURCE_OFFSET θ_E
    a = rng.uniform(0, 2 * np.pi)
    sed_cls = _source_sed(rng, source_colour)
    scene = Scene()
    _add_galaxy(scene, lens)
    mags_s = _add_source(scene, rng, bx, by, z_s, x + r_src * np.cos(a), y + r_src * np.sin(a), sed_cls,
                         where=where)
    n_nb = add_environment(scene, rng)
    truth = SystemTruth(kind="lens", label_candidate=True, theta_e=theta_e, sigma_v=lens.sigma, z_lens=lens.z,
                        z_source=z_s, mag_lens=lens.mags, mag_source=mags_s, source_colour=sed_cls, x_lens=x, y_lens=y,
                        n_deflectors=1, source_type="sersic", n_neighbours=n_nb)
    return scene, truth


def sample_compound(rng, kind: str, source_colour="mixed") -> tuple[Scene, SystemTruth]:
    """Two deflectors at different redshifts and a background source, multi-plane ray tracing (paper §2.2).

    ``kind`` "compound-arcs": deflectors within ±5″ of the source position;
    "double-rings": within ±0.25″.  The source lies at ±5″ (Table 1) -
    clipped here to ±4″ so the system stays in the stamp.  The second
    deflector's own light is a second lensed plane (lensed by the first
    deflector), which makes the inner ring of a double ring.
    """
    spread = 5.0 if kind == "compound-arcs" else 0.25
    # redshifts and masses in pairs from the single-lens distributions; the
    # lower-redshift deflector is the more massive 2/3 of the time
    z_pair = sorted(_trunc_normal(rng, *LENS_Z) for _ in range(2))
    while z_pair[1] - z_pair[0] < 0.1:
        z_pair = sorted(_trunc_normal(rng, *LENS_Z) for _ in range(2))
    s_pair = sorted((_sample_sigma(rng), _sample_sigma(rng)), reverse=rng.uniform() < 2 / 3)
    z_s = _sample_source_z(rng, z_pair[1] + SOURCE_Z[1])
    te = [float(theta_e_sis(s, z, z_s)) for s, z in zip(s_pair, z_pair)]
    for _ in range(200):  # strong-lensing preselection on positions only (cheap)
        xs, ys = rng.uniform(-4, 4, 2)
        pos = [(xs + rng.uniform(-spread, spread), ys + rng.uniform(-spread, spread)) for _ in range(2)]
        near = any(np.hypot(px - xs, py - ys) < 1.2 * t for (px, py), t in zip(pos, te))
        if near and all(abs(p) < 8.0 for xy in pos for p in xy):
            break
    l1 = sample_deflector(rng, sigma=s_pair[0], z=z_pair[0], x=pos[0][0], y=pos[0][1])
    l2 = sample_deflector(rng, sigma=s_pair[1], z=z_pair[1], x=pos[1][0], y=pos[1][1])
    for g_ in (l1, l2):  # Table 1: axis ratio 0.3-1, angle 0-π
        g_.q, g_.phi = rng.uniform(0.3, 1.0), rng.uniform(0, np.pi)
    g = COMPOUND_SHEAR_MAX
    shear = {"gamma1": rng.uniform(-g, g), "gamma2": rng.uniform(-g, g), "ra_0": l1.x, "dec_0": l1.y}
    # lenstronomy multi-plane theta_E is defined for a source at Z_REF: convert
    te_ref = [float(theta_e_reference(t, z, z_s)) for t, z in zip(te, z_pair)]
    kw1, kw2 = _sie_kwargs(te_ref[0], l1, rng), _sie_kwargs(te_ref[1], l2, rng)
    # the shear is given at the first plane for a source at Z_REF too
    to_source = _multi_plane(["SIE", "SHEAR", "SIE"], [l1.z, l1.z, l2.z], z_s)
    bx, by = _ray_trace(to_source, GRID_X, GRID_Y, [kw1, shear, kw2])
    to_l2 = _multi_plane(["SIE", "SHEAR"], [l1.z, l1.z], l2.z)
    b2x, b2y = _ray_trace(to_l2, GRID_X, GRID_Y, [kw1, shear])
    sed_cls = _source_sed(rng, source_colour)
    scene = Scene()
    _add_galaxy(scene, l1)
    # the second deflector's light, lensed by the first deflector
    scene.add(pixel_average(sersic(b2x, b2y, l2.r_e, l2.n, l2.q, l2.phi, l2.x, l2.y)), l2.mags)
    mags_s = _add_source(scene, rng, bx, by, z_s, xs, ys, sed_cls)
    n_nb = add_environment(scene, rng)
    truth = SystemTruth(kind=kind.rstrip("s"), label_candidate=True, theta_e=te[0], theta_e2=te[1],
                        sigma_v=l1.sigma, sigma_v2=l2.sigma, z_lens=l1.z, z_lens2=l2.z, z_source=z_s,
                        mag_lens=l1.mags, mag_source=mags_s, source_colour=sed_cls, x_lens=l1.x, y_lens=l1.y,
                        n_deflectors=2, source_type="sersic", n_neighbours=n_nb)
    return scene, truth


@lru_cache(maxsize=4)
def _group_plane(n_deflectors: int):
    from lenstronomy.LensModel.lens_model import LensModel

    return LensModel(["SIE"] * n_deflectors + ["SHEAR"])


def sample_survey_lens(rng, source_colour="mixed") -> tuple[Scene, SystemTruth]:
    """A lens as a survey sees them, hard tail included (docs/simulation.md, "Survey lenses").

    Sub-populations (``SURVEY_LENS_TYPES``): "galaxy" - one deflector, source
    anywhere within ``SURVEY_SOURCE_OFFSET`` θ_E (full rings, partial arcs,
    doubles); "compact" - a small source (R_e 0.04-0.12″) close to the caustic
    centre (compact quads and doubles); "group" - the deflector plus 1-2
    satellites at the same redshift within 1.2-4″, each an SIE with its own
    light; "crowded" - a field three times as dense plus 1-3 close companions.
    Deflector σ from the VDF × σ⁴ on ``SURVEY_SIGMA`` (small θ_E included);
    unlensed source magnitudes ``SURVEY_SOURCE_MAG`` down to the detection
    limit; real galaxy stamps as the source light for ``REAL_SOURCE_FRACTION``
    of non-compact sources (when available); realistic field counts.
    """
    lens_type = _pick(rng, SURVEY_LENS_TYPES)
    x, y = _centre(rng)
    lens = sample_deflector(rng, sigma=_sample_sigma(rng, 4.0, *SURVEY_SIGMA), x=x, y=y)
    z_s = _sample_source_z(rng, lens.z + SOURCE_Z[1])
    theta_e = float(theta_e_sis(lens.sigma, lens.z, z_s))
    deflectors = [lens]
    kw = [_sie_kwargs(theta_e, lens, rng)]
    reach = 0.0
    if lens_type == "group":
        for _ in range(int(rng.integers(1, 3))):
            sep, a = rng.uniform(1.2, 4.0), rng.uniform(0, 2 * np.pi)
            sat = sample_deflector(rng, sigma=lens.sigma * rng.uniform(0.45, 0.8), z=lens.z + rng.normal(0, 0.003),
                                   x=x + sep * np.cos(a), y=y + sep * np.sin(a))
            deflectors.append(sat)
            kw.append(_sie_kwargs(float(theta_e_sis(sat.sigma, sat.z, z_s)), sat, rng))
            reach = max(reach, sep)
    kw.append({"gamma1": rng.normal(0, SHEAR_SD), "gamma2": rng.normal(0, SHEAR_SD), "ra_0": x, "dec_0": y})
    where = window(x, y, 2.0 * theta_e + 2.5 + reach)
    bx, by = _ray_trace(_group_plane(len(deflectors)), where[2], where[3], kw)
    compact = lens_type == "compact"
    offset = 0.35 if compact else SURVEY_SOURCE_OFFSET
    r_src = theta_e * offset * np.sqrt(rng.uniform())
    a = rng.uniform(0, 2 * np.pi)
    sed_cls = _source_sed(rng, source_colour)
    if compact:
        r_e = float(rng.uniform(0.04, 0.12))
    else:
        r_e = float(np.clip(SURVEY_SOURCE_RE[0] * 10 ** rng.normal(0, SURVEY_SOURCE_RE[1]), 0.05, 0.8))
    stamps = real_stamps()
    stamp = None
    if rng.uniform() < REAL_SOURCE_FRACTION and stamps and not compact:
        stamp = stamps[int(rng.integers(len(stamps)))]
    scene = Scene()
    for d in deflectors:
        _add_galaxy(scene, d)
    mags_s = _add_source(scene, rng, bx, by, z_s, x + r_src * np.cos(a), y + r_src * np.sin(a), sed_cls,
                         where=where, mag_range=SURVEY_SOURCE_MAG, r_e=r_e, stamp=stamp,
                         max_clumps=0 if compact else 4, mag_slope=COUNT_SLOPE)
    n_nb = add_sky_environment(scene, rng, crowded=(x, y) if lens_type == "crowded" else None)
    truth = SystemTruth(kind="lens", label_candidate=True, theta_e=theta_e, sigma_v=lens.sigma, z_lens=lens.z,
                        z_source=z_s, mag_lens=lens.mags, mag_source=mags_s, source_colour=sed_cls, x_lens=x, y_lens=y,
                        lens_type=lens_type, n_deflectors=len(deflectors),
                        source_type=f"real:{stamp.name}" if stamp is not None else "sersic", source_re=r_e,
                        n_neighbours=n_nb)
    return scene, truth
