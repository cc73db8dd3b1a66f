"""Survey store -> training tensors, through the engine's one Preprocessor.

:func:`load_cutouts` reads every chunk of a :class:`~lensengine.catalogs.store.SurveyStore`
once, keeps the cutouts one model can use (store flags, then the
:class:`~lensengine.engine.preprocess.Preprocessor` usable mask, then a 0/1
``label``) and holds them in memory in one of two forms:

* ``"prepared"``: the network inputs (n, C, S, S) float32, preprocessed once
  (the OU-66 family: 70 KB per 4-band cutout);
* ``"raw"``: the model's bands at native size, preprocessed per batch by the
  same Preprocessor (the OU-200 family: 212 KB per cutout instead of 640 KB).

``cache="auto"`` picks prepared when it fits ``max_memory_gb``.  Either way
training and inference share the preprocessing code, so they cannot drift.
:class:`BatchLoader` assembles batches on a background thread (NumPy releases
the GIL in the resampling matmuls) and measures how long the consumer waited.

:class:`Augmenter` perturbs training batches per cutout (docs/training.md,
"The sky recipe"): ``"flips"`` applies one of the eight dihedral transforms to
the network input; ``"full"`` first jitters the raw bands in physical units
(extra Gaussian noise at a fraction of the cutout's own background rms, a
sky gradient, a small Gaussian blur) and then preprocesses them, because the
per-cutout min-max scaling would otherwise change what "a fraction of the
noise" means from cutout to cutout.  The dihedral transforms commute with the
preprocessing (the resampling matrices are centro-symmetric and min-max
scaling ignores pixel order), so transforming the input equals preprocessing
the transformed cutout; tests/training/test_augment.py checks both.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from lensengine.catalogs.flags import Flag
from lensengine.engine.preprocess import Preprocessor
from lensengine.engine.specs import NATIVE_STAMP, ModelSpec

log = logging.getLogger(__name__)

__all__ = ["LoadReport", "CutoutSet", "load_cutouts", "split_indices", "BatchLoader", "iter_store_chunks",
           "AUGMENT_MODES", "Augmenter", "AugmentDraw", "dihedral", "border_rms"]

#: Store flags that make a whole cutout unusable whatever band a model reads;
#: band-specific problems are found again by the Preprocessor per model.
_UNUSABLE = np.uint32(Flag.UNREADABLE | Flag.INCOMPLETE_WRITE)


@dataclass
class LoadReport:
    """What :func:`load_cutouts` read and why it skipped what it skipped."""

    store: str = ""
    n_read: int = 0              # cutouts in the chunks that could be read
    n_used: int = 0
    skipped_flags: int = 0       # store flags UNREADABLE / INCOMPLETE_WRITE
    skipped_unusable: int = 0    # the Preprocessor found a bad band this model reads
    skipped_label: int = 0       # label not 0 or 1
    skipped_faint: int = 0       # lenses whose arc S/N is below ``min_arc_snr`` (training only)
    unreadable_chunks: list = field(default_factory=list)  # [(tile, index, reason)]
    seconds: float = 0.0

    @property
    def n_skipped(self) -> int:
        return self.skipped_flags + self.skipped_unusable + self.skipped_label + self.skipped_faint

    def as_dict(self) -> dict:
        return {"store": self.store, "n_read": self.n_read, "n_used": self.n_used, "n_skipped": self.n_skipped,
                "skipped_flags": self.skipped_flags, "skipped_unusable": self.skipped_unusable,
                "skipped_label": self.skipped_label, "skipped_faint": self.skipped_faint,
                "unreadable_chunks": len(self.unreadable_chunks),
                "seconds": round(self.seconds, 2)}


#: ``--augment`` choices: no augmentation, the eight flips/turns, or those plus raw-band jitter.
AUGMENT_MODES = ("none", "flips", "full")


def dihedral(x: np.ndarray, rot: int, flip: bool) -> np.ndarray:
    """One of the eight symmetries of the square on the last two axes: mirror left-right, then turn ``rot``×90°.

    Acts on raw bands (n, S, S) and network inputs (n, C, S, S) alike.
    """
    if flip:
        x = x[..., ::-1]
    return np.rot90(x, int(rot) % 4, axes=(-2, -1))


def border_rms(images: np.ndarray, width: int | None = None) -> np.ndarray:
    """Background rms of each image (n, S, S) from its border frame: 1.4826 × the median absolute deviation.

    The frame (``width`` pixels, default S // 16: 4 for NISP, 12 for VIS) lies
    8–10″ from the centre, mostly sky; the MAD ignores the few neighbour pixels
    that fall on it.  Returns (n,) float32.
    """
    n, s = images.shape[0], images.shape[-1]
    w = width or max(2, s // 16)
    frame = np.concatenate([images[:, :w, :].reshape(n, -1), images[:, -w:, :].reshape(n, -1),
                            images[:, w:-w, :w].reshape(n, -1), images[:, w:-w, -w:].reshape(n, -1)], axis=1)
    med = np.median(frame, axis=1, keepdims=True)
    return (1.4826 * np.median(np.abs(frame - med), axis=1)).astype(np.float32)


def _gaussian_blur(images: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """Blur each image (n, S, S) with its own normalised Gaussian of ``sigma`` pixels (0: unchanged).

    Separable, truncated at 3σ, mirror ("symmetric") padding: the kernel and the
    padding are symmetric, so the blur commutes with :func:`dihedral`.
    """
    radius = int(np.ceil(3 * float(sigma.max(initial=0.0))))
    if radius == 0:
        return images
    taps = np.arange(-radius, radius + 1, dtype=np.float32)
    s = np.maximum(sigma.astype(np.float32), 1e-3)[:, None]
    w = np.exp(-0.5 * (taps[None, :] / s) ** 2)
    w /= w.sum(axis=1, keepdims=True)
    size = images.shape[-1]
    out = images
    for axis in (1, 2):
        pad = [(0, 0)] * 3
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode="symmetric")
        acc = np.zeros_like(images)
        for j in range(2 * radius + 1):
            window = padded[:, j:j + size, :] if axis == 1 else padded[:, :, j:j + size]
            acc += w[:, j, None, None] * window
        out = acc
    return out


@dataclass
class AugmentDraw:
    """The random choices for one batch: a dihedral transform per cutout and, for "full", jitter per cutout and band.

    ``noise``: extra noise rms as a fraction of the cutout's border rms; ``blur``:
    Gaussian sigma in native pixels; ``gradient``: sky-gradient (dy, dx) in
    units of the border rms across the stamp; ``noise_seed`` seeds the noise field.
    """

    rot: np.ndarray
    flip: np.ndarray
    noise: dict = field(default_factory=dict)
    blur: dict = field(default_factory=dict)
    gradient: dict = field(default_factory=dict)
    noise_seed: int = 0


class Augmenter:
    """Per-cutout training augmentation for one model (``mode`` in :data:`AUGMENT_MODES`).

    ``noise_max``: the extra Gaussian noise has rms ``U(0, noise_max)`` × the
    band's border rms, so the total noise grows by up to √(1 + noise_max²)
    (1.0: up to 0.38 mag shallower; our simulations were ~1 mag deeper than
    Euclid Wide).  ``blur_max_px``: Gaussian sigma ``U(0, blur_max_px)`` native
    pixels (0.5 px widens a 1.6-px-FWHM PSF, VIS 0.16″ or NISP 0.48″, by up to
    ~20 %).  ``gradient_max``: a linear sky gradient of ``U(0, gradient_max)``
    × rms from edge to edge in a uniform direction.  A constant sky offset is
    not offered: the per-cutout min-max scaling removes it exactly.
    """

    def __init__(self, mode: str, bands, *, noise_max: float = 1.0, blur_max_px: float = 0.5,
                 gradient_max: float = 0.5):
        if mode not in AUGMENT_MODES:
            raise ValueError(f"augment must be one of {', '.join(AUGMENT_MODES)}, got {mode!r}")
        if min(noise_max, blur_max_px, gradient_max) < 0:
            raise ValueError(f"augmentation strengths must be >= 0, got noise {noise_max}, blur {blur_max_px}, "
                             f"gradient {gradient_max}")
        self.mode = mode
        self.bands = tuple(bands)
        self.noise_max, self.blur_max_px, self.gradient_max = noise_max, blur_max_px, gradient_max

    @property
    def jitters_raw(self) -> bool:
        return self.mode == "full"

    def draw(self, n: int, rng: np.random.Generator) -> AugmentDraw:
        """Draw the choices for a batch of ``n`` (the same ``rng`` state gives the same draw)."""
        d = AugmentDraw(rot=rng.integers(0, 4, n), flip=rng.integers(0, 2, n).astype(bool))
        if self.jitters_raw:
            for b in self.bands:
                d.noise[b] = rng.uniform(0, self.noise_max, n).astype(np.float32)
                d.blur[b] = rng.uniform(0, self.blur_max_px, n).astype(np.float32)
                angle = rng.uniform(0, 2 * np.pi, n)
                amp = rng.uniform(0, self.gradient_max, n)
                d.gradient[b] = np.stack([amp * np.cos(angle), amp * np.sin(angle)], axis=1).astype(np.float32)
            d.noise_seed = int(rng.integers(0, 2**63 - 1))
        return d

    def jitter_raw(self, bands: dict[str, np.ndarray], d: AugmentDraw) -> dict[str, np.ndarray]:
        """Blur, sky gradient and extra noise on raw bands (n, S, S), in the bands' own units.

        The rms is measured on the unblurred cutout; blurring first lowers the
        cutout's own noise a little, the extra noise then adds to it.
        """
        noise_rng = np.random.default_rng(d.noise_seed)
        out = {}
        for b in self.bands:
            x = np.asarray(bands[b], dtype=np.float32)
            n, size = x.shape[0], x.shape[-1]
            rms = border_rms(x)[:, None, None]
            x = _gaussian_blur(x, d.blur[b])
            u = (np.arange(size, dtype=np.float32) - (size - 1) / 2) / (size - 1)  # -0.5 .. 0.5 edge to edge
            g = d.gradient[b]
            x = x + rms * (g[:, 0, None, None] * u[None, :, None] + g[:, 1, None, None] * u[None, None, :])
            x = x + (d.noise[b][:, None, None] * rms) * noise_rng.standard_normal((n, size, size), dtype=np.float32)
            out[b] = x
        return out

    def transform_inputs(self, inputs: np.ndarray, d: AugmentDraw) -> np.ndarray:
        """Apply each cutout's dihedral transform to network inputs (n, C, S, S)."""
        out = np.empty_like(inputs)
        for i in range(inputs.shape[0]):
            out[i] = dihedral(inputs[i], d.rot[i], d.flip[i])
        return out


class CutoutSet:
    """The usable cutouts of one store for one model: labels plus prepared inputs or raw bands."""

    def __init__(self, spec: ModelSpec, labels: np.ndarray, *, inputs: np.ndarray | None = None,
                 raw: dict[str, np.ndarray] | None = None, rows: np.ndarray | None = None):
        if (inputs is None) == (raw is None):
            raise ValueError("give exactly one of inputs (prepared) or raw bands")
        self.spec = spec
        self.labels = np.asarray(labels, dtype=np.int64)
        # each cutout's row in the store it was read from (store order over tiles and chunks)
        self.rows = np.arange(self.labels.size) if rows is None else np.asarray(rows, dtype=np.int64)
        self.inputs = inputs
        self.raw = raw
        self._prep = Preprocessor([spec]) if raw is not None else None

    @property
    def mode(self) -> str:
        return "prepared" if self.inputs is not None else "raw"

    def __len__(self) -> int:
        return int(self.labels.size)

    @property
    def lens_fraction(self) -> float:
        return float(self.labels.mean()) if len(self) else float("nan")

    @property
    def nbytes(self) -> int:
        arrays = [self.inputs] if self.inputs is not None else list(self.raw.values())
        return int(sum(a.nbytes for a in arrays) + self.labels.nbytes)

    def batch(self, index: np.ndarray, augmenter: Augmenter | None = None,
              rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Network inputs (len(index), C, S, S) float32 and labels for the given rows.

        With an ``augmenter`` (mode other than "none") the choices are drawn from
        ``rng``: raw bands are jittered before the Preprocessor ("full"), then each
        input gets its dihedral transform.
        """
        index = np.asarray(index)
        if augmenter is None or augmenter.mode == "none":
            if self.inputs is not None:
                return self.inputs[index], self.labels[index]
            prepared = self._prep({b: self.raw[b][index] for b in self.spec.bands}, len(index))
            return prepared.inputs[self.spec.name], self.labels[index]
        d = augmenter.draw(len(index), rng)
        if augmenter.jitters_raw:
            if self.raw is None:
                raise ValueError("augment 'full' jitters the raw bands before preprocessing, but this data set "
                                 "holds prepared inputs: load it with cache='raw'")
            bands = augmenter.jitter_raw({b: self.raw[b][index] for b in self.spec.bands}, d)
            x = self._prep(bands, len(index)).inputs[self.spec.name]
        elif self.inputs is not None:
            x = self.inputs[index]
        else:
            x = self._prep({b: self.raw[b][index] for b in self.spec.bands}, len(index)).inputs[self.spec.name]
        return augmenter.transform_inputs(x, d), self.labels[index]

    def subset(self, index: np.ndarray) -> "CutoutSet":
        index = np.asarray(index)
        if self.inputs is not None:
            return CutoutSet(self.spec, self.labels[index], inputs=self.inputs[index], rows=self.rows[index])
        return CutoutSet(self.spec, self.labels[index], raw={b: a[index] for b, a in self.raw.items()},
                         rows=self.rows[index])


def _open_store(store):
    from lensengine.catalogs.store import SurveyStore

    return store if isinstance(store, SurveyStore) else SurveyStore.open(store)


def iter_store_chunks(store, report: LoadReport | None = None):
    """Yield ``(tile, index, CutoutBatch)`` for every readable chunk; unreadable ones are logged and recorded."""
    from lensengine.catalogs.store import ChunkReadError

    for tile in store.tiles:
        for index in range(len(store.chunk_slices(tile))):
            try:
                batch = store.read_chunk(tile, index)
            except ChunkReadError as exc:
                log.warning("skipping unreadable chunk %s[%d]: %s", tile, index, exc)
                if report is not None:
                    report.unreadable_chunks.append((tile, index, str(exc)))
                continue
            yield tile, index, batch


def load_cutouts(store, spec: ModelSpec, *, limit: int | None = None, cache: str = "auto",
                 max_memory_gb: float = 6.0, progress=None,
                 min_arc_snr: float | None = None) -> tuple[CutoutSet, LoadReport]:
    """Read the usable, labelled cutouts of ``store`` (a path or an open SurveyStore) for ``spec``.

    ``limit`` stops reading once that many usable cutouts are held (store
    order, so deterministic).  ``progress`` is an optional callable
    ``progress(n_read, n_total)``.  ``min_arc_snr`` leaves out the lenses
    whose arcs are fainter than that (truth column ``arc_snr``): a lens the
    noise hides teaches the network nothing but to call noise a lens, so
    training may keep only the lenses it can see (negatives are all kept).
    """
    if cache not in ("auto", "prepared", "raw"):
        raise ValueError(f"cache must be 'auto', 'prepared' or 'raw', got {cache!r}")
    t0 = time.perf_counter()
    store = _open_store(store)
    report = LoadReport(store=str(getattr(store, "path", store)))
    missing = [b for b in spec.bands if b not in store.bands]
    if missing:
        raise ValueError(f"model {spec.name} reads bands {list(spec.bands)} but store {report.store} holds "
                         f"{list(store.bands)}: missing {missing}")
    if min_arc_snr is not None and "arc_snr" not in store.truth_columns:
        raise ValueError(f"min_arc_snr needs the truth column 'arc_snr', which store {report.store} lacks "
                         f"(found {sorted(store.truth_columns)}); simulate the store with `lensengine simulate`")
    if "label" not in store.truth_columns:
        raise ValueError(f"store {report.store} has no truth column 'label' (found {sorted(store.truth_columns)}); "
                         "training and evaluation need labelled cutouts")
    total = int(store.total_cutouts())
    capacity = total if limit is None else min(total, int(limit))
    per_prepared = spec.channels * spec.stamp * spec.stamp * 4
    if cache == "auto":
        cache = "prepared" if capacity * per_prepared <= max_memory_gb * 2**30 else "raw"
    # np.empty only commits the pages it writes: over-allocating to the upper bound is free
    if cache == "prepared":
        inputs = np.empty((capacity, spec.channels, spec.stamp, spec.stamp), dtype=np.float32)
        raw = None
    else:
        inputs = None
        raw = {b: np.empty((capacity, NATIVE_STAMP[b], NATIVE_STAMP[b]), dtype=np.float32) for b in spec.bands}
    labels = np.empty(capacity, dtype=np.int64)
    store_rows = np.empty(capacity, dtype=np.int64)
    first_row = store.first_rows()
    prep = Preprocessor([spec])
    n = 0
    for tile, index, batch in iter_store_chunks(store, report):
        if n >= capacity:
            break
        m = len(batch)
        report.n_read += m
        ok = (np.asarray(batch.flags, dtype=np.uint32) & _UNUSABLE) == 0
        report.skipped_flags += int((~ok).sum())
        bands = batch.bands()
        prepared = prep(bands, m)
        usable = prepared.usable[spec.name]
        report.skipped_unusable += int((ok & ~usable).sum())
        ok &= usable
        label = np.asarray(batch.truth["label"])
        good_label = np.isin(label, (0, 1))
        report.skipped_label += int((ok & ~good_label).sum())
        ok &= good_label
        if min_arc_snr is not None:
            faint = (label == 1) & ~(np.asarray(batch.truth["arc_snr"], dtype=np.float64) >= min_arc_snr)
            report.skipped_faint += int((ok & faint).sum())
            ok &= ~faint
        rows = np.flatnonzero(ok)[: capacity - n]
        k = rows.size
        if inputs is not None:
            inputs[n:n + k] = prepared.inputs[spec.name][rows]
        else:
            for b in spec.bands:
                raw[b][n:n + k] = np.asarray(bands[b], dtype=np.float32)[rows]
        labels[n:n + k] = label[rows]
        store_rows[n:n + k] = first_row[tile] + index * store.chunk_size + rows  # chunk_slices' start
        n += k
        if progress is not None:
            progress(report.n_read, total)
    report.n_used = n
    report.seconds = time.perf_counter() - t0
    if inputs is not None:
        data = CutoutSet(spec, labels[:n].copy(), inputs=inputs[:n], rows=store_rows[:n].copy())
    else:
        data = CutoutSet(spec, labels[:n].copy(), raw={b: a[:n] for b, a in raw.items()}, rows=store_rows[:n].copy())
    log.info("%s: %d usable cutouts for %s from %s (%d skipped, %d unreadable chunks, %s cache, %.1f s)",
             spec.name, n, spec.name, report.store, report.n_skipped, len(report.unreadable_chunks), data.mode,
             report.seconds)
    return data, report


def split_indices(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic (train, validation) row split: a seeded permutation, validation first.

    Both halves are returned sorted, so the split depends only on ``n``, ``fraction`` and ``seed``.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"validation fraction must be in (0, 1), got {fraction}")
    n_val = max(1, int(round(n * fraction)))
    if n_val >= n:
        raise ValueError(f"cannot split {n} cutouts into training and a {fraction:.0%} validation set")
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


class BatchLoader:
    """Iterate over ``order`` in batches of ``batch_size``, assembled ``prefetch`` batches ahead.

    ``workers`` threads assemble batches (NumPy releases the GIL in the
    resampling matmuls, the noise and the blur); batches come out in order and,
    with an ``augmenter``, batch ``k`` draws from a generator seeded by
    ``(seed, k)`` alone, so neither the thread count nor the timing changes a
    batch.  After (or during) iteration ``wait_s`` is the time the consumer
    spent waiting for a batch that was not ready yet: the data-starvation measure.
    """

    def __init__(self, data: CutoutSet, order: np.ndarray, batch_size: int, prefetch: int = 2,
                 augmenter: Augmenter | None = None, seed: int = 0, workers: int = 1):
        self.data = data
        self.order = np.asarray(order)
        self.batch_size = int(batch_size)
        self.workers = max(1, int(workers))
        self.prefetch = max(self.workers, int(prefetch))
        self.augmenter = augmenter
        self.seed = int(seed)
        self.wait_s = 0.0

    def __len__(self) -> int:
        return (self.order.size + self.batch_size - 1) // self.batch_size

    def batch_rng(self, number: int) -> np.random.Generator:
        """The augmentation generator of batch ``number``."""
        return np.random.default_rng([self.seed, number])

    def _make(self, number: int):
        index = self.order[number * self.batch_size:(number + 1) * self.batch_size]
        if self.augmenter is None:
            return self.data.batch(index)
        return self.data.batch(index, self.augmenter, self.batch_rng(number))

    def __iter__(self):
        numbers = iter(range(len(self)))
        with ThreadPoolExecutor(self.workers, thread_name_prefix="lensengine-batches") as pool:
            pending = deque(pool.submit(self._make, k) for k in itertools.islice(numbers, self.prefetch))
            try:
                while pending:
                    t0 = time.perf_counter()
                    item = pending.popleft().result()  # re-raises a worker's failure here
                    self.wait_s += time.perf_counter() - t0
                    nxt = next(numbers, None)
                    if nxt is not None:
                        pending.append(pool.submit(self._make, nxt))
                    yield item
            finally:  # the consumer stopped early: drop what has not started
                for future in pending:
                    future.cancel()
