"""Euclid-like simulated cutouts: lenses, hard non-lenses and compound lenses.

The paper's training data (the Bologna Lens Factory images of the Euclid
lens-finding challenge) cannot be had here, so lensengine makes its own
(SPEC §6; physics, parameters, units and the labelling rule in
docs/simulation.md).  Cutouts are VIS 200 × 200 at 0.1″ and NISP Y, J, H
66 × 66 at 0.3″ in e-/s per pixel (sky subtracted), Euclid Wide exposures.

Determinism: cutout ``i`` of a run with seed ``s`` is drawn from its own
generator seeded by ``SeedSequence(s, spawn_key=(i,))``; the 63-bit integer
derived from it is stored in the ``seed`` truth column, and
:func:`render_cutout` with that seed (and the run's kind and options) redraws
the cutout alone.  A store is therefore identical for any worker count.

Labelling rule (applied to every system with lensed light): a system is a lens
when its noiseless, PSF-convolved lensed-source VIS image has at least
``LABEL_RULE.min_pixels`` pixels above ``LABEL_RULE.k_sigma`` times the
per-pixel noise, an arc S/N of at least ``LABEL_RULE.min_snr`` and a total
magnification of at least ``LABEL_RULE.min_magnification``.  Systems meant to be
lenses that fail it are redrawn from the same per-cutout generator (up to
``MAX_ATTEMPTS`` times); the few that still fail are kept with label 0.
``LABEL_RULE`` (arc S/N ≥ 25) is the easy rule of the challenge-like kinds;
``survey-lenses`` go down to the detection limit (``HARD_RULE``, arc S/N ≥ 6)
and ``training-mix`` lenses to ``TRAIN_RULE`` (arc S/N ≥ 10).  Every cutout
records ``label_easy`` as well, so recall can be read against arc S/N and θ_E.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lensengine.engine.specs import BANDS

log = logging.getLogger(__name__)

__all__ = [
    "KINDS",
    "LabelRule",
    "LABEL_RULE",
    "HARD_RULE",
    "TRAIN_RULE",
    "kind_rule",
    "TRUTH_COLUMNS",
    "cutout_seed",
    "render_cutout",
    "simulate_batch",
    "simulate_store",
    "example_store",
]

KINDS = ("lenses", "non-lenses", "mixed", "compound-arcs", "double-rings", "survey-lenses", "sky-negatives",
         "hard-negatives", "training-mix")
#: kinds whose every cutout is meant to be a lens
LENS_KINDS = ("lenses", "compound-arcs", "double-rings", "survey-lenses")
#: kinds that draw real HST/JWST galaxies (sources, neighbours, star-forming negatives) when the stamps are found
REAL_STAMP_KINDS = ("survey-lenses", "sky-negatives", "hard-negatives", "training-mix")
#: training-mix non-lenses: lens-like ellipticals (deflector population), the sky's mix, confusers
TRAINING_NEGATIVES = {"elliptical": 0.4, "sky": 0.3, "hard": 0.3}
MAX_ATTEMPTS = 20
#: bumped whenever the same (kind, seed) would give different pixels; stores record it and the cached
#: example store is rebuilt when it differs (2: Euclid Wide depth, Moffat PSFs, realistic negatives;
#: 3: real clumpy star-forming galaxies among the sky and hard negatives; 4: lensed light and real stamps averaged
#: over sub-pixel positions, star-forming knots integrated over the pixels)
SIMULATOR_VERSION = 4
TILE = "sim"
SURVEY = "euclid-sim"


@dataclass(frozen=True)
class LabelRule:
    """When lensed light counts as a detectable lens (see the module docstring)."""

    k_sigma: float = 1.5
    min_pixels: int = 20
    min_snr: float = 25.0
    min_magnification: float = 2.0


LABEL_RULE = LabelRule()
#: the detection limit: the label of ``survey-lenses`` (the hard tail down to arc S/N 6)
HARD_RULE = LabelRule(min_pixels=8, min_snr=6.0)
#: the label of ``training-mix`` lenses: visible arcs, but not only the easy ones
TRAIN_RULE = LabelRule(min_pixels=12, min_snr=10.0)
#: kind -> its default labelling rule
KIND_RULES = {"survey-lenses": HARD_RULE, "training-mix": TRAIN_RULE}


def kind_rule(kind: str, min_arc_snr: float | None = None) -> LabelRule:
    """The labelling rule of ``kind`` (``LABEL_RULE`` unless listed in ``KIND_RULES``), optionally with
    its arc S/N threshold replaced by ``min_arc_snr``."""
    import dataclasses

    rule = KIND_RULES.get(kind, LABEL_RULE)
    return rule if min_arc_snr is None else dataclasses.replace(rule, min_snr=float(min_arc_snr))

#: truth column -> numpy dtype string (the store's truth schema)
TRUTH_COLUMNS: dict[str, str] = {
    "label": "int8",
    "kind": "str",
    "seed": "int64",
    "theta_e": "float32",
    "theta_e2": "float32",
    "sigma_v": "float32",
    "sigma_v2": "float32",
    "z_lens": "float32",
    "z_lens2": "float32",
    "z_source": "float32",
    **{f"mag_lens_{b}": "float32" for b in BANDS},
    **{f"mag_source_{b}": "float32" for b in BANDS},
    "source_colour": "str",
    "n_images": "int16",
    "arc_snr": "float32",
    "arc_pixels": "int32",
    "magnification": "float32",
    "x_lens": "float32",
    "y_lens": "float32",
    **{f"psf_fwhm_{b}": "float32" for b in BANDS},
    "attempts": "int8",
    "label_easy": "int8",
    "lens_type": "str",
    "n_deflectors": "int8",
    "source_type": "str",
    "source_re": "float32",
    "n_neighbours": "int16",
    "depth_offset": "float32",
}


def cutout_seed(seed: int, index: int) -> int:
    """The 63-bit seed of cutout ``index`` of a run with ``seed`` (numpy SeedSequence)."""
    ss = np.random.SeedSequence(int(seed), spawn_key=(int(index),))
    return int(ss.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def _check_options(kind: str, lens_fraction: float, source_colour: str) -> None:
    from lensengine.training._sim_scenes import SOURCE_COLOURS

    if kind not in KINDS:
        raise ValueError(f"kind {kind!r} is not one of {', '.join(KINDS)}")
    if not 0.0 <= lens_fraction <= 1.0:
        raise ValueError(f"lens_fraction must be in [0, 1], got {lens_fraction}")
    if source_colour not in SOURCE_COLOURS:
        raise ValueError(f"source_colour {source_colour!r} is not one of {', '.join(SOURCE_COLOURS)}")


def render_cutout(kind: str, seed: int, *, lens_fraction: float = 0.72, source_colour: str = "mixed",
                  rule: LabelRule | None = None):
    """Render one cutout from its own seed: ``(vis (200,200), nisp (3,66,66), truth dict)``.

    ``rule`` defaults to the kind's (:func:`kind_rule`); ``label_easy`` in the
    truth always applies ``LABEL_RULE``.
    """
    from lensengine.training._sim_physics import INSTRUMENT
    from lensengine.training._sim_render import arc_statistics, render
    from lensengine.training._sim_scenes import sample_compound, sample_single_lens, sample_survey_lens

    _check_options(kind, lens_fraction, source_colour)
    rule = kind_rule(kind) if rule is None else rule
    rng = np.random.default_rng(seed)
    want_lens = kind in LENS_KINDS or (kind in ("mixed", "training-mix") and rng.uniform() < lens_fraction)
    attempts = 0
    while True:
        attempts += 1
        if not want_lens:
            scene, truth = _sample_negative(kind, rng)
        elif kind in ("compound-arcs", "double-rings"):
            scene, truth = sample_compound(rng, kind, source_colour)
        elif kind in ("survey-lenses", "training-mix"):
            scene, truth = sample_survey_lens(rng, source_colour)
        else:
            scene, truth = sample_single_lens(rng, source_colour)
        out = render(scene, rng)
        npix, snr, n_img = arc_statistics(out.lensed_vis, out.sigma_vis, rule.k_sigma)
        if truth.label_candidate:
            mu = float(out.lensed_vis.sum() / INSTRUMENT.flux("VIS", truth.mag_source[0]))
            is_lens = _passes(rule, npix, snr, mu)
            # the easy rule needs its own pixel statistics only when it thresholds at another k_sigma
            easy_stats = (npix, snr) if LABEL_RULE.k_sigma == rule.k_sigma else \
                arc_statistics(out.lensed_vis, out.sigma_vis, LABEL_RULE.k_sigma)[:2]
            easy = _passes(LABEL_RULE, *easy_stats, mu)
        else:
            mu, is_lens, easy = float("nan"), False, False
        if is_lens or not want_lens or attempts >= MAX_ATTEMPTS:
            break
    t = {
        "label": int(is_lens), "kind": truth.kind, "seed": int(seed),
        "theta_e": truth.theta_e, "theta_e2": truth.theta_e2, "sigma_v": truth.sigma_v, "sigma_v2": truth.sigma_v2,
        "z_lens": truth.z_lens, "z_lens2": truth.z_lens2, "z_source": truth.z_source,
        **{f"mag_lens_{b}": truth.mag_lens[i] for i, b in enumerate(BANDS)},
        **{f"mag_source_{b}": truth.mag_source[i] for i, b in enumerate(BANDS)},
        "source_colour": truth.source_colour, "n_images": n_img if truth.label_candidate else 0,
        "arc_snr": snr, "arc_pixels": npix, "magnification": mu, "x_lens": truth.x_lens, "y_lens": truth.y_lens,
        **{f"psf_fwhm_{b}": out.fwhm[b] for b in BANDS}, "attempts": attempts,
        "label_easy": int(easy), "lens_type": truth.lens_type, "n_deflectors": truth.n_deflectors,
        "source_type": truth.source_type, "source_re": truth.source_re, "n_neighbours": truth.n_neighbours,
        "depth_offset": out.depth_offset,
    }
    return out.vis, out.nisp, t


def _passes(rule: LabelRule, npix: int, snr: float, mu: float) -> bool:
    """Whether lensed light with these arc statistics and magnification is a lens under ``rule``."""
    return npix >= rule.min_pixels and snr >= rule.min_snr and mu >= rule.min_magnification


def _sample_negative(kind, rng):
    """The non-lens scene of ``kind``: challenge-like (``non-lenses``, ``mixed``), the sky's mix, confusers only,
    or the training mix of the three (``TRAINING_NEGATIVES``)."""
    from lensengine.training._sim_negatives import HARD_NEGATIVE_MIX, SKY_NEGATIVE_MIX, sample_non_lens

    if kind == "training-mix":
        names = list(TRAINING_NEGATIVES)
        kind = {"elliptical": "lens-like", "sky": "sky-negatives", "hard": "hard-negatives"}[
            names[rng.choice(len(names), p=np.array(list(TRAINING_NEGATIVES.values())))]]
    if kind == "sky-negatives":
        return sample_non_lens(rng, mix=SKY_NEGATIVE_MIX, central="sky", environment="sky")
    if kind == "hard-negatives":
        return sample_non_lens(rng, mix=HARD_NEGATIVE_MIX, environment="sky")
    if kind == "lens-like":
        return sample_non_lens(rng, "elliptical", central="lens-like", environment="sky")
    return sample_non_lens(rng)


def _sky_position(index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic positions: a 30″ grid, 1000 cutouts per row, starting at (150°, +2°)."""
    dec = 2.0 + (index // 1000) * 30.0 / 3600.0
    ra = 150.0 + (index % 1000) * 30.0 / 3600.0 / np.cos(np.radians(dec))
    return ra, dec


def simulate_batch(kind: str, n: int, seed: int, start_index: int = 0, *, lens_fraction: float = 0.72,
                   source_colour: str = "mixed", rule: LabelRule | None = None):
    """Render cutouts ``start_index .. start_index + n - 1`` of a run as a :class:`CutoutBatch`."""
    from threadpoolctl import threadpool_limits

    from lensengine.catalogs.store import CutoutBatch

    _check_options(kind, lens_fraction, source_colour)
    vis = np.empty((n, 200, 200), dtype=np.float32)
    nisp = np.empty((n, 3, 66, 66), dtype=np.float32)
    truth = {name: [] for name in TRUTH_COLUMNS}
    # many small matrix products: a multi-threaded BLAS only thrashes here
    with threadpool_limits(limits=1, user_api="blas"):
        for j in range(n):
            v, ni, t = render_cutout(kind, cutout_seed(seed, start_index + j), lens_fraction=lens_fraction,
                                     source_colour=source_colour, rule=rule)
            vis[j], nisp[j] = v, ni
            for name in TRUTH_COLUMNS:
                truth[name].append(t[name])
    index = np.arange(start_index, start_index + n, dtype=np.int64)
    ra, dec = _sky_position(index)
    cols = {name: np.asarray(vals, dtype=str if dt == "str" else dt) for (name, dt), vals in
            zip(TRUTH_COLUMNS.items(), truth.values())}
    return CutoutBatch(object_id=index, ra=ra, dec=dec, vis=vis, nisp=nisp, flags=np.zeros(n, dtype=np.uint32),
                       truth=cols)


def _blocks(n: int, block: int) -> list[tuple[int, int]]:
    return [(s, min(block, n - s)) for s in range(0, n, block)]


#: the libraries whose releases can move a simulated pixel (profiles, cosmology, sampling, the stamps' cleaning)
PIXEL_LIBRARIES = ("lensengine", "numpy", "scipy", "lenstronomy", "skypy", "astropy", "scikit-image")


def library_versions() -> dict[str, str]:
    """Installed versions of :data:`PIXEL_LIBRARIES`: the same seed is the same store only on the same ones."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in PIXEL_LIBRARIES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "absent"
    return out


def simulate_store(path, kind: str, n: int, seed: int, *, lens_fraction: float = 0.72, source_colour: str = "mixed",
                   workers: int = 1, chunk_size: int = 1024, progress: bool = True, block: int = 32,
                   overwrite: bool = False, min_arc_snr: float | None = None,
                   max_seconds: float | None = None) -> Path:
    """Simulate ``n`` cutouts into a new survey store (tile ``sim``); returns its path.

    With ``workers`` > 1 the blocks are rendered on a local Dask cluster of
    ``workers`` single-threaded processes; blocks are appended in index
    order, so the store does not depend on the worker count.

    ``max_seconds`` is a time budget: once it has passed no further block is
    waited for, and the store holds cutouts 0 … k-1 (at least the first block),
    each the same as in a store simulated to the end (cutout i depends on
    (seed, i) alone).  The provenance then records ``n`` = k, ``n_asked`` and
    why it stopped.
    """
    from lensengine.catalogs.store import CutoutBatch, SurveyStore

    _check_options(kind, lens_fraction, source_colour)
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    path = Path(path)
    from lensengine.training._sim_real import real_stamps, stamps_disabled

    rule = kind_rule(kind, min_arc_snr)
    options = {"lens_fraction": lens_fraction, "source_colour": source_colour, "rule": rule}
    n_stamps = len(real_stamps())
    if kind in REAL_STAMP_KINDS and not n_stamps and not stamps_disabled():
        log.warning("%s: real galaxy stamps not found, so this %s store is drawn with analytic sources and "
                    "neighbours only (provenance real_stamps=0) and differs from the store the same seed gives "
                    "with them; set LENSENGINE_SHARED to the folder that holds real/galaxies, or "
                    "LENSENGINE_SIM_REAL=0 to draw without them on purpose", path, kind)
    provenance = {"generator": "lensengine.training.simulate", "simulator_version": SIMULATOR_VERSION,
                  "kind": kind, "n": n, "seed": seed,
                  "lens_fraction": lens_fraction, "source_colour": source_colour, "label_rule": dict(rule.__dict__),
                  "easy_rule": dict(LABEL_RULE.__dict__), "real_stamps": n_stamps,
                  "units": "e-/s per pixel, sky subtracted", "versions": library_versions()}
    store = SurveyStore.create(path, survey=SURVEY, chunk_size=chunk_size, truth_columns=TRUTH_COLUMNS,
                               provenance=provenance, overwrite=overwrite)
    blocks = _blocks(n, block)
    pending: dict[int, CutoutBatch] = {}
    buffer: list[CutoutBatch] = []
    buffered = 0
    next_start = 0

    def flush(force=False):
        nonlocal buffer, buffered
        if buffer and (force or buffered >= chunk_size):
            store.append(TILE, CutoutBatch.concatenate(buffer))
            buffer, buffered = [], 0

    def accept(start, batch):
        nonlocal next_start, buffered
        pending[start] = batch
        while next_start in pending:
            b = pending.pop(next_start)
            buffer.append(b)
            buffered += len(b)
            next_start += len(b)
            flush()

    deadline = None if max_seconds is None else time.monotonic() + max_seconds

    def out_of_time() -> bool:  # never before the first block is in
        return deadline is not None and next_start > 0 and time.monotonic() > deadline

    with _progress(progress, n, f"simulating {kind}") as advance:
        if workers <= 1:
            from lensengine.training._sim_physics import sed_table

            sed_table()
            for start, count in blocks:
                if out_of_time():
                    break
                accept(start, simulate_batch(kind, count, seed, start, **options))
                advance(count)
        else:
            asked = logging.getLogger("distributed").level  # the CLI's choice (-v or not): importing resets it
            from dask.distributed import Client, LocalCluster, as_completed

            if asked:
                logging.getLogger("distributed").setLevel(asked)
            # ":0": any free port (the scheduler serves HTTP even without a dashboard); this machine only
            cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                                   dashboard_address="127.0.0.1:0")
            with cluster, Client(cluster) as client:
                futures = [client.submit(simulate_batch, kind, count, seed, start, pure=False, **options)
                           for start, count in blocks]
                starts = {f.key: s for f, (s, _) in zip(futures, blocks)}
                for fut in as_completed(futures):
                    batch = fut.result()
                    accept(starts[fut.key], batch)
                    advance(len(batch))
                    fut.release()
                    if out_of_time():
                        client.cancel([f for f in futures if not f.done()])
                        break
    flush(force=True)
    if next_start < n:
        log.info("%s: the time budget of %.0f s ran out after %d of %d cutouts; the store holds cutouts 0-%d",
                 path, max_seconds, next_start, n, next_start - 1)
        store.update_provenance(n=next_start, n_asked=n,
                                stopped=f"time budget of {max_seconds:g} s ran out after {next_start} cutouts")
    return path


class _progress:
    """A rich progress bar (quiet when not on a terminal or when disabled)."""

    def __init__(self, enabled: bool, total: int, label: str):
        import sys

        self.enabled = enabled and sys.stderr.isatty()
        self.total, self.label = total, label

    def __enter__(self):
        if not self.enabled:
            return lambda k: None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                             TimeRemainingColumn(), transient=False)
        self._bar.__enter__()
        task = self._bar.add_task(self.label, total=self.total)
        return lambda k: self._bar.advance(task, k)

    def __exit__(self, *exc):
        if self.enabled:
            self._bar.__exit__(*exc)
        return False


EXAMPLE_N = 200
EXAMPLE_SEED = 2022


def _default_example_path() -> Path:
    from lensengine.training._sim_physics import _cache_dir

    return _cache_dir() / "example.zarr"


def example_store(path=None) -> Path:
    """The small README quickstart store: 200 mixed cutouts (72 % lenses), seed 2022, cached.

    Made on first use (well under a minute) at ``path`` or
    ``~/.cache/lensengine/example.zarr``; later calls return the cached store
    unless it was made by another ``SIMULATOR_VERSION``.
    """
    from lensengine.catalogs.store import SurveyStore

    path = Path(path) if path is not None else _default_example_path()
    if path.exists():
        try:
            store = SurveyStore.open(path)
            prov = store.attrs.get("provenance", {})
            if (store.total_cutouts() == EXAMPLE_N and prov.get("seed") == EXAMPLE_SEED
                    and prov.get("simulator_version") == SIMULATOR_VERSION):
                return path
        except (OSError, ValueError, KeyError) as exc:
            log.warning("rebuilding the example store at %s (%s)", path, exc)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    simulate_store(tmp, "mixed", EXAMPLE_N, EXAMPLE_SEED, progress=False, chunk_size=256, overwrite=True)
    if path.exists():
        import shutil

        shutil.rmtree(path)
    tmp.rename(path)
    return path
