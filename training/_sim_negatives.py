"""Non-lens scenes: lens-like ellipticals and the confusers (spirals, rings, mergers, pairs, blends).

Three population mixes (documented with their sources in docs/simulation.md):
``NON_LENS_TYPES`` (challenge-like: mostly lens-like ellipticals),
``SKY_NEGATIVE_MIX`` (the sky's galaxies bright enough to be searched) and
``HARD_NEGATIVE_MIX`` (confusers only).  Ring galaxies and mergers are drawn
as real ones look (knotty, lopsided star-forming rings of their own colour;
curved, fading tidal tails and debris), not as Einstein-ring look-alikes.
Star-forming (irregular, clumpy) galaxies are real HST/JWST morphologies from
the simulator's half of the real stamps: their knots are the confuser that
compact lensed images are mistaken for.
Every random number comes from the one per-cutout generator.
"""

from __future__ import annotations

import numpy as np

from lensengine.training._sim_physics import sed_table
from lensengine.training._sim_real import add_stamp_galaxy, real_stamps
from lensengine.training._sim_render import GRID_X, GRID_Y, Scene, pixel_gaussian, ring, sersic, unit_on_grid, window
from lensengine.training._sim_scenes import (
    CROWDED_FRACTION, SURVEY_SIGMA, Galaxy, SystemTruth, _add_galaxy, _centre, _field_galaxy, _kpc_to_arcsec, _pick, _sample_sigma,
    add_environment, add_sky_environment, sample_deflector,
)

__all__ = ["NON_LENS_TYPES", "SKY_NEGATIVE_MIX", "HARD_NEGATIVE_MIX", "SKY_SIGMA", "SKY_MAG_LIMIT",
           "sample_non_lens"]

#: velocity dispersions of the galaxies a survey searches (plain VDF, no lensing weight): sky-negatives
SKY_SIGMA = (110.0, 380.0)
SKY_MAG_LIMIT = 22.5  # VIS AB: the central galaxies of sky-negatives are bright enough to be searched

NON_LENS_TYPES = {  # name -> probability: mostly lens-like ellipticals (as in the challenge), 45 % confusers
    "elliptical": 0.55, "spiral-face-on": 0.08, "spiral-edge-on": 0.06, "ring-galaxy": 0.05,
    "merger": 0.08, "close-pair": 0.09, "blend": 0.09,
}
#: The sky's population around galaxies bright enough to be searched for lenses (VIS ≲ 22.5), used by
#: ``sky-negatives`` (sources in docs/simulation.md): mostly early types and discs; rings, mergers,
#: pairs and blends at their observed rarity.
SKY_NEGATIVE_MIX = {
    "elliptical": 0.35, "spiral-face-on": 0.30, "spiral-edge-on": 0.10, "star-forming": 0.10, "close-pair": 0.06,
    "blend": 0.05, "merger": 0.03, "ring-galaxy": 0.01,
}
#: ``hard-negatives``: confusers only (no plain ellipticals)
HARD_NEGATIVE_MIX = {
    "ring-galaxy": 0.20, "merger": 0.20, "star-forming": 0.20, "spiral-face-on": 0.12, "spiral-edge-on": 0.08,
    "close-pair": 0.08, "blend": 0.12,
}
#: star-forming galaxies: half-light radius (arcsec) at VIS 21 and its log-normal scatter (dex), clipped
STAR_FORMING_RE = (0.35, 0.25, 0.12, 1.5)


def _starforming_mags(rng, z, m_vis, cls="starburst"):
    sed = sed_table()
    return m_vis + sed.colours(sed.sample_coefficients(rng, cls), z)


def _add_knots(scene, rng, positions, mags_total, size_range=(0.03, 0.08)):
    """Knots at ``positions`` sharing the flux of ``mags_total`` with log-normal weights (0.5 dex)."""
    w = 10 ** rng.normal(0, 0.5, len(positions))
    w /= w.sum()
    for (kx, ky), wi in zip(positions, w):
        where = window(kx, ky, 0.4)
        if where is not None:
            scene.add(pixel_gaussian(where[2], where[3], kx, ky, rng.uniform(*size_range)),
                      mags_total - 2.5 * np.log10(wi), where=where)


def _ring_galaxy(scene, rng, main: Galaxy):
    """A star-forming ring galaxy: a disc galaxy whose knotty ring has its own (blue) colour.

    Real (collisional or resonance) rings are made of HII-region knots, are
    brighter on one side, often off-centre from the nucleus, share the disc's
    inclination and redshift and have no counter-image; a collisional ring
    often has its intruder nearby.  The host is a bulge plus faint disc.
    """
    x, y, z = main.x, main.y, main.z
    q = rng.uniform(0.45, 1.0)
    phi = rng.uniform(0, np.pi)
    bulge = Galaxy(z, main.mags + rng.uniform(0.3, 1.2), main.r_e * rng.uniform(0.3, 0.7), rng.uniform(1.5, 4.0),
                   min(1.0, q + 0.2), phi, x, y)
    _add_galaxy(scene, bulge)
    radius = float(np.clip(_kpc_to_arcsec(rng.uniform(4.0, 15.0), z), 0.5, 3.0))
    # the ring's centre is displaced from the nucleus (up to 30 % of its radius)
    off, a_off = radius * rng.uniform(0.0, 0.3), rng.uniform(0, 2 * np.pi)
    rcx, rcy = x + off * np.cos(a_off), y + off * np.sin(a_off)
    width = radius * rng.uniform(0.06, 0.15)
    ring_mags = _starforming_mags(rng, z, main.mags[0] + rng.uniform(-0.3, 1.2),
                                  cls=("starburst", "blue")[rng.integers(2)])
    X, Y = GRID_X, GRID_Y
    lopsided = ring(X, Y, radius, width, q, phi, rcx, rcy, arms=1, arm_phase=rng.uniform(0, 2 * np.pi),
                    arm_contrast=rng.uniform(0.2, 0.8), pitch=1.5)
    f_knots = rng.uniform(0.3, 0.7)
    scene.add(lopsided, ring_mags - 2.5 * np.log10(1 - f_knots))
    n_knots = int(rng.integers(8, 26))
    th = rng.uniform(0, 2 * np.pi, n_knots)
    rr = radius + rng.normal(0, width / 2, n_knots)
    c, s_ = np.cos(phi), np.sin(phi)
    u, v = rr * np.cos(th) / np.sqrt(q), rr * np.sin(th) * np.sqrt(q)  # on the inclined ring
    pos = list(zip(rcx + c * u - s_ * v, rcy + s_ * u + c * v))
    _add_knots(scene, rng, pos, ring_mags - 2.5 * np.log10(f_knots))
    disk = sersic(X, Y, radius * 0.6, 1.0, q, phi, x, y)
    scene.add(disk, _starforming_mags(rng, z, main.mags[0] + rng.uniform(1.0, 2.5), cls="blue"))
    if rng.uniform() < 0.5:  # the intruder of a collisional ring
        sep, a = rng.uniform(2.0, 6.0), rng.uniform(0, 2 * np.pi)
        _add_galaxy(scene, _field_galaxy(rng, (main.mags[0] + 0.5, main.mags[0] + 3.0), x + sep * np.cos(a),
                                         y + sep * np.sin(a)))


def _tidal_tail(scene, rng, x0, y0, z, m_vis):
    """A curved, fading, widening stream of stellar light (sum of Gaussian blobs) with debris knots."""
    r0, r1 = rng.uniform(0.2, 0.6), rng.uniform(1.5, 5.0)
    th0, dth = rng.uniform(0, 2 * np.pi), rng.choice([-1, 1]) * np.radians(rng.uniform(50, 160))
    n = 14
    t = np.linspace(0, 1, n)
    px = x0 + (r0 + (r1 - r0) * t) * np.cos(th0 + dth * t)
    py = y0 + (r0 + (r1 - r0) * t) * np.sin(th0 + dth * t)
    w = np.exp(-t * rng.uniform(0.5, 2.5)) * rng.uniform(0.5, 1.5, n)
    w /= w.sum()
    mags = _starforming_mags(rng, z, m_vis, cls=("blue", "red")[int(rng.uniform() < 0.3)])
    for bx, by, wi, ti in zip(px, py, w, t):
        size = 0.25 + 0.6 * ti
        where = window(bx, by, 2.0 * size)
        if where is not None:
            scene.add(pixel_gaussian(where[2], where[3], bx, by, size), mags - 2.5 * np.log10(wi), where=where)
    k = int(rng.integers(0, 6))
    if k:
        idx = rng.integers(0, n, k)
        debris = [(px[i] + rng.normal(0, 0.2), py[i] + rng.normal(0, 0.2)) for i in idx]
        _add_knots(scene, rng, debris, _starforming_mags(rng, z, m_vis + rng.uniform(0.5, 1.5)))


def _merger(scene, rng, main: Galaxy):
    """Two interacting galaxies with asymmetric tidal tails and debris (no ring-like symmetry)."""
    x, y = main.x, main.y
    _add_galaxy(scene, main)
    sep, a = rng.uniform(0.5, 3.0), rng.uniform(0, 2 * np.pi)
    other = _field_galaxy(rng, (main.mags[0] - 0.3, main.mags[0] + 1.5), x + sep * np.cos(a), y + sep * np.sin(a))
    other.z = main.z
    _add_galaxy(scene, other)
    for _ in range(int(rng.integers(1, 3))):
        gx, gy = (x, y) if rng.uniform() < 0.6 else (other.x, other.y)
        _tidal_tail(scene, rng, gx, gy, main.z, main.mags[0] + rng.uniform(0.8, 2.5))


def _spiral(scene, rng, main: Galaxy, face: bool):
    """Red bulge, blue exponential disc, logarithmic arms with HII-region knots along them."""
    x, y = main.x, main.y
    X, Y = GRID_X, GRID_Y
    q = rng.uniform(0.5, 1.0) if face else rng.uniform(0.1, 0.25)
    r_d = main.r_e * rng.uniform(1.2, 2.5)
    bulge = Galaxy(main.z, main.mags + rng.uniform(0.7, 2.0), main.r_e * 0.4, rng.uniform(2, 4),
                   1.0 if face else 0.7, main.phi, x, y)
    _add_galaxy(scene, bulge)
    disk_mags = _starforming_mags(rng, main.z, main.mags[0] + rng.uniform(-0.3, 0.8), cls="blue")
    scene.add(sersic(X, Y, r_d, 1.0, q, main.phi, x, y), disk_mags + 0.5)
    n_arms, phase, pitch = int(rng.integers(2, 4)), rng.uniform(0, 2 * np.pi), rng.uniform(0.2, 0.5)
    arm_mags = disk_mags + rng.uniform(0.3, 1.0)
    arms = ring(X, Y, r_d * 0.9, r_d * 0.6, q, main.phi, x, y, arms=n_arms, arm_phase=phase, arm_contrast=0.9,
                pitch=pitch)
    scene.add(arms, arm_mags + 0.4)
    # knots on the arm crests: r = exp(tan(pitch) (θ - θ_k)), in the disc plane
    n_k = int(rng.integers(5, 20))
    rr = r_d * rng.uniform(0.4, 2.0, n_k)
    arm = rng.integers(0, n_arms, n_k)
    th = np.log(np.maximum(rr, 0.05)) / np.tan(pitch) - (phase - 2 * np.pi * arm) / n_arms
    c, s_ = np.cos(main.phi), np.sin(main.phi)
    u, v = rr * np.cos(th) / np.sqrt(q), rr * np.sin(th) * np.sqrt(q)
    _add_knots(scene, rng, list(zip(x + c * u - s_ * v, y + s_ * u + c * v)),
               _starforming_mags(rng, main.z, arm_mags[0] + 0.8))


def _star_forming(scene, rng, main: Galaxy):
    """A clumpy star-forming (irregular) galaxy of the searched magnitude: a real morphology when the stamps
    are available, else an exponential disc with 2-6 knots holding 30-70 % of its light.

    Blue or starburst colour at the central galaxy's redshift; sizes from a
    size-magnitude relation with a wide scatter, so that compact ones, whose
    knots sit 0.3-1″ apart like the images of a small lensed source, are common.
    """
    cls = ("starburst", "blue")[int(rng.integers(2))]
    m_vis = main.mags[0]
    re0, dex, lo, hi = STAR_FORMING_RE
    r_e = float(np.clip(re0 * 10 ** (-0.15 * (m_vis - 21.0) + rng.normal(0, dex)), lo, hi))
    g = Galaxy(main.z, _starforming_mags(rng, main.z, m_vis, cls), r_e, 1.0, rng.uniform(0.4, 1.0),
               rng.uniform(0, np.pi), main.x, main.y, sed=cls)
    stamps = real_stamps()
    if stamps:
        add_stamp_galaxy(scene, rng, stamps[int(rng.integers(len(stamps)))], g)
        return
    where = window(g.x, g.y, min(max(4.0 * r_e, 1.0), 8.0))
    if where is None:
        return
    X, Y = where[2], where[3]
    f_knots = rng.uniform(0.3, 0.7)
    light = (1 - f_knots) * unit_on_grid(sersic(X, Y, r_e, 1.0, g.q, g.phi, g.x, g.y))
    n_k = int(rng.integers(2, 7))
    rr, th = r_e * rng.uniform(0.2, 1.5, n_k), rng.uniform(0, 2 * np.pi, n_k)
    w = 10 ** rng.normal(0, 0.5, n_k)
    for kx, ky, wi in zip(g.x + rr * np.cos(th), g.y + rr * np.sin(th), f_knots * w / w.sum()):
        light += wi * unit_on_grid(pixel_gaussian(X, Y, kx, ky, rng.uniform(0.03, 0.12)))
    scene.add(light, g.mags, where=where)


def sample_non_lens(rng, subtype: str | None = None, *, mix: dict | None = None, central: str = "deflector",
                    environment: str = "sparse") -> tuple[Scene, SystemTruth]:
    """A galaxy scene without lensing: ellipticals and the usual confusers.

    ``mix`` (default ``NON_LENS_TYPES``) gives the type probabilities when
    ``subtype`` is None.  ``central``: "deflector" draws the central galaxy
    like a deflector (σ weighted by the lensing cross-section, × 0.7-1),
    "lens-like" exactly as the survey-lens deflectors (so that no network can
    tell lenses by their deflector's mass), "sky" from the plain
    velocity-dispersion function, brighter than ``SKY_MAG_LIMIT`` (the
    galaxies a survey searches).  ``environment``: "sparse" (the original neighbour density) or
    "sky" (realistic number counts, :func:`add_sky_environment`).
    """
    mix = NON_LENS_TYPES if mix is None else mix
    if subtype is None:
        subtype = _pick(rng, mix)
    x, y = _centre(rng)
    scene = Scene()
    if central == "sky":  # a searched galaxy: redraw the few fainter than the search limit
        for _ in range(50):
            sigma = _sample_sigma(rng, weight=0.0, lo=SKY_SIGMA[0], hi=SKY_SIGMA[1])
            main = sample_deflector(rng, sigma=sigma, x=x, y=y)
            if main.mags[0] <= SKY_MAG_LIMIT:
                break
    else:
        if central == "lens-like":  # exactly the survey-lens deflector population
            sigma = _sample_sigma(rng, 4.0, *SURVEY_SIGMA)
        elif central == "deflector":
            sigma = _sample_sigma(rng) * rng.uniform(0.7, 1.0)
        else:
            raise ValueError(f"unknown central population {central!r}; known: deflector, lens-like, sky")
        main = sample_deflector(rng, sigma=sigma, x=x, y=y)
    if subtype == "elliptical":
        _add_galaxy(scene, main)
    elif subtype in ("spiral-face-on", "spiral-edge-on"):
        _spiral(scene, rng, main, subtype == "spiral-face-on")
    elif subtype == "ring-galaxy":
        _ring_galaxy(scene, rng, main)
    elif subtype == "star-forming":
        _star_forming(scene, rng, main)
    elif subtype == "merger":
        _merger(scene, rng, main)
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
        raise ValueError(f"unknown non-lens type {subtype!r}; known: {', '.join({**NON_LENS_TYPES, **HARD_NEGATIVE_MIX})}")
    if environment == "sky":  # crowded as often as the survey lenses are, so crowding tells nothing
        n_nb = add_sky_environment(scene, rng, crowded=(x, y) if rng.uniform() < CROWDED_FRACTION else None)
    else:
        n_nb = add_environment(scene, rng)
    truth = SystemTruth(kind=subtype, label_candidate=False, z_lens=main.z, mag_lens=main.mags, x_lens=x, y_lens=y,
                        sigma_v=main.sigma, n_neighbours=n_nb)
    return scene, truth
