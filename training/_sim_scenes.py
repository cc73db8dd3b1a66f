"""Scene samplers: galaxies, lens systems, compound lenses and hard non-lenses.

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
* Every stamp has neighbours and faint background galaxies.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from lensengine.training._sim_physics import (
    OM0, H0, RAD2ARCSEC, Z_REF, angular_distance, fj_abs_mag, FJ_SCATTER, sed_table,
    theta_e_reference, theta_e_sis,
)
from lensengine.training._sim_render import GRID_X, GRID_Y, Scene, ring, sersic, window

__all__ = ["Galaxy", "SystemTruth", "sample_single_lens", "sample_compound", "sample_non_lens",
           "NON_LENS_TYPES", "SOURCE_COLOURS"]

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


# --- helpers -----------------------------------------------------------------
@lru_cache(maxsize=1)
def _vdf_inverse_cdf():
    s_star, alpha, beta = VDF
    s = np.linspace(*LENS_SIGMA, 2001)
    pdf = (s / s_star) ** alpha * np.exp(-((s / s_star) ** beta)) / s * s ** 4  # VDF x cross-section
    cdf = np.cumsum(pdf)
    cdf = (cdf - cdf[0]) / (cdf[-1] - cdf[0])
    return cdf, s


def _sample_sigma(rng):
    cdf, s = _vdf_inverse_cdf()
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


def _add_source(scene, rng, bx, by, z_s, cx, cy, sed_cls, *, where=None, mag_range=SOURCE_MAG):
    """A Sérsic source with clumps, evaluated at ray-traced coordinates (bx, by); returns its magnitudes."""
    sed = sed_table()
    m_vis = rng.uniform(*mag_range)
    colours = sed.colours(sed.sample_coefficients(rng, sed_cls), z_s)
    mags = m_vis + colours
    r_e = float(np.clip(SOURCE_RE[0] * 10 ** rng.normal(0, SOURCE_RE[1]), 0.05, 1.0))
    n = rng.uniform(0.5, 2.0)
    q, phi = rng.uniform(0.4, 1.0), rng.uniform(0, np.pi)
    n_clumps = rng.integers(0, 5)
    f_clumps = rng.uniform(0.1, 0.4) if n_clumps else 0.0
    scene.add(sersic(bx, by, r_e, n, q, phi, cx, cy), mags - 2.5 * np.log10(1 - f_clumps), lensed=True, where=where)
    if n_clumps:
        # clumps are younger (bluer) than the host: shift their colours by up to 0.3 mag
        clump_col = colours * rng.uniform(0.4, 1.0)
        for _ in range(n_clumps):
            rr, th = r_e * rng.uniform(0.2, 1.2), rng.uniform(0, 2 * np.pi)
            sb = sersic(bx, by, rng.uniform(0.02, 0.06), 0.5, 1.0, 0.0, cx + rr * np.cos(th), cy + rr * np.sin(th))
            scene.add(sb, m_vis + clump_col - 2.5 * np.log10(f_clumps / n_clumps), lensed=True, where=where)
    return mags


def _add_galaxy(scene, g: Galaxy):
    """An unlensed Sérsic galaxy, evaluated on a window of ±max(8 R_e, 1.5″) (capped at 12″)."""
    where = window(g.x, g.y, min(max(8.0 * g.r_e, 1.5), 12.0))
    if where is not None:
        scene.add(sersic(where[2], where[3], g.r_e, g.n, g.q, g.phi, g.x, g.y), g.mags, where=where)


def _field_galaxy(rng, m_range, x=None, y=None, cls=None):
    sed = sed_table()
    cls = cls or ("red" if rng.uniform() < 0.35 else "blue")
    z = float(rng.uniform(0.2, 2.5))
    m_vis = rng.uniform(*m_range)
    mags = m_vis + sed.colours(sed.sample_coefficients(rng, cls), z)
    r_e = float(np.clip(0.5 * 10 ** (-0.15 * (m_vis - 21.0) + rng.normal(0, 0.15)), 0.05, 2.5))
    n = rng.uniform(2.5, 5.0) if cls == "red" else rng.uniform(0.6, 1.8)
    x = rng.uniform(-10, 10) if x is None else x
    y = rng.uniform(-10, 10) if y is None else y
    return Galaxy(z=z, mags=mags, r_e=r_e, n=n, q=rng.uniform(0.3, 1.0), phi=rng.uniform(0, np.pi), x=x, y=y, sed=cls)


def add_environment(scene, rng, n_neighbours=None):
    """Neighbours (VIS 21-24.5) and faint background galaxies (24.5-26.5) anywhere in the stamp."""
    n_nb = rng.poisson(1.0) if n_neighbours is None else n_neighbours
    for _ in range(n_nb):
        _add_galaxy(scene, _field_galaxy(rng, (21.0, 24.5)))
    for _ in range(rng.poisson(4.0)):
        _add_galaxy(scene, _field_galaxy(rng, (24.5, 26.5)))


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
    bx, by = _single_plane().ray_shooting(where[2], where[3], kw)
    bx, by = np.asarray(bx, dtype=np.float32), np.asarray(by, dtype=np.float32)
    r_src = theta_e * SOURCE_OFFSET * np.sqrt(rng.uniform())  # uniform in area inside SOURCE_OFFSET θ_E
    a = rng.uniform(0, 2 * np.pi)
    sed_cls = _source_sed(rng, source_colour)
    scene = Scene()
    _add_galaxy(scene, lens)
    mags_s = _add_source(scene, rng, bx, by, z_s, x + r_src * np.cos(a), y + r_src * np.sin(a), sed_cls,
                         where=where)
    add_environment(scene, rng)
    truth = SystemTruth(kind="lens", label_candidate=True, theta_e=theta_e, sigma_v=lens.sigma, z_lens=lens.z,
                        z_source=z_s, mag_lens=lens.mags, mag_source=mags_s, source_colour=sed_cls, x_lens=x, y_lens=y)
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
    bx, by = (np.asarray(a, dtype=np.float32) for a in to_source.ray_shooting(GRID_X, GRID_Y, [kw1, shear, kw2]))
    to_l2 = _multi_plane(["SIE", "SHEAR"], [l1.z, l1.z], l2.z)
    b2x, b2y = (np.asarray(a, dtype=np.float32) for a in to_l2.ray_shooting(GRID_X, GRID_Y, [kw1, shear]))
    sed_cls = _source_sed(rng, source_colour)
    scene = Scene()
    _add_galaxy(scene, l1)
    scene.add(sersic(b2x, b2y, l2.r_e, l2.n, l2.q, l2.phi, l2.x, l2.y), l2.mags)  # lensed by the first deflector
    mags_s = _add_source(scene, rng, bx, by, z_s, xs, ys, sed_cls)
    add_environment(scene, rng)
    truth = SystemTruth(kind=kind.rstrip("s"), label_candidate=True, theta_e=te[0], theta_e2=te[1],
                        sigma_v=l1.sigma, sigma_v2=l2.sigma, z_lens=l1.z, z_lens2=l2.z, z_source=z_s,
                        mag_lens=l1.mags, mag_source=mags_s, source_colour=sed_cls, x_lens=l1.x, y_lens=l1.y)
    return scene, truth


# --- hard non-lenses ---------------------------------------------------------
NON_LENS_TYPES = {  # name -> probability: mostly lens-like ellipticals (as in the challenge), 45 % confusers
    "elliptical": 0.55, "spiral-face-on": 0.08, "spiral-edge-on": 0.06, "ring-galaxy": 0.05,
    "merger": 0.08, "close-pair": 0.09, "blend": 0.09,
}


def _starforming_mags(rng, z, m_vis):
    sed = sed_table()
    return m_vis + sed.colours(sed.sample_coefficients(rng, "starburst"), z)


def sample_non_lens(rng, subtype: str | None = None) -> tuple[Scene, SystemTruth]:
    """A galaxy scene without lensing: ellipticals and the usual confusers."""
    names = list(NON_LENS_TYPES)
    if subtype is None:
        subtype = names[rng.choice(len(names), p=np.array(list(NON_LENS_TYPES.values())))]
    x, y = _centre(rng)
    scene = Scene()
    sigma = _sample_sigma(rng) * rng.uniform(0.7, 1.0)
    main = sample_deflector(rng, sigma=sigma, x=x, y=y)
    X, Y = GRID_X, GRID_Y
    if subtype == "elliptical":
        _add_galaxy(scene, main)
    elif subtype in ("spiral-face-on", "spiral-edge-on"):
        face = subtype == "spiral-face-on"
        q = rng.uniform(0.6, 1.0) if face else rng.uniform(0.1, 0.25)
        r_d = main.r_e * rng.uniform(1.2, 2.5)
        bulge = Galaxy(main.z, main.mags + rng.uniform(0.7, 2.0), main.r_e * 0.4, rng.uniform(2, 4),
                       1.0 if face else 0.7, main.phi, x, y)
        _add_galaxy(scene, bulge)
        disk_mags = _starforming_mags(rng, main.z, main.mags[0] + rng.uniform(-0.3, 0.8))
        scene.add(sersic(X, Y, r_d, 1.0, q, main.phi, x, y), disk_mags + 0.5)
        arms = ring(X, Y, r_d * 0.9, r_d * 0.6, q, main.phi, x, y, arms=int(rng.integers(2, 4)),
                    arm_phase=rng.uniform(0, 2 * np.pi), arm_contrast=0.9, pitch=rng.uniform(0.2, 0.5))
        scene.add(arms, disk_mags + rng.uniform(0.3, 1.0))
    elif subtype == "ring-galaxy":
        _add_galaxy(scene, main)
        radius = rng.uniform(0.6, 2.5)
        rmag = _starforming_mags(rng, main.z, main.mags[0] + rng.uniform(0.0, 2.0))
        scene.add(ring(X, Y, radius, rng.uniform(0.08, 0.3), rng.uniform(0.6, 1.0), rng.uniform(0, np.pi), x, y,
                       arms=int(rng.integers(0, 5)), arm_phase=rng.uniform(0, 6.3), arm_contrast=rng.uniform(0, 0.8),
                       pitch=1.5), rmag)
    elif subtype == "merger":
        _add_galaxy(scene, main)
        sep, a = rng.uniform(0.5, 2.5), rng.uniform(0, 2 * np.pi)
        other = _field_galaxy(rng, (main.mags[0] - 0.5, main.mags[0] + 1.5), x + sep * np.cos(a), y + sep * np.sin(a))
        _add_galaxy(scene, other)
        for _ in range(rng.integers(1, 3)):  # tidal tails: curved star-forming streams
            radius = rng.uniform(1.0, 3.5)
            tail = ring(X, Y, radius, rng.uniform(0.1, 0.35), rng.uniform(0.3, 0.8), rng.uniform(0, np.pi), x, y,
                        arms=1, arm_phase=rng.uniform(0, 6.3), arm_contrast=1.0, pitch=1.4)
            scene.add(tail, _starforming_mags(rng, main.z, main.mags[0] + rng.uniform(0.5, 2.5)))
    elif subtype == "close-pair":
        _add_galaxy(scene, main)
        sep, a = rng.uniform(1.0, 4.0), rng.uniform(0, 2 * np.pi)
        other = sample_deflector(rng, sigma=sigma * rng.uniform(0.6, 1.0), z=main.z + rng.normal(0, 0.02),
                                 x=x + sep * np.cos(a), y=y + sep * np.sin(a))
        if rng.uniform() < 0.4:
            other = _field_galaxy(rng, (main.mags[0], main.mags[0] + 2), other.x, other.y, cls="blue")
        _add_galaxy(scene, other)
    elif subtype == "blend":
        _add_galaxy(scene, main)
        for _ in range(rng.integers(2, 5)):
            sep, a = rng.uniform(0.8, 3.0), rng.uniform(0, 2 * np.pi)
            _add_galaxy(scene, _field_galaxy(rng, (main.mags[0] + 0.5, main.mags[0] + 4.0),
                                             x + sep * np.cos(a), y + sep * np.sin(a)))
    else:
        raise ValueError(f"unknown non-lens type {subtype!r}; known: {', '.join(NON_LENS_TYPES)}")
    add_environment(scene, rng)
    truth = SystemTruth(kind=subtype, label_candidate=False, z_lens=main.z, mag_lens=main.mags, x_lens=x, y_lens=y,
                        sigma_v=main.sigma)
    return scene, truth
