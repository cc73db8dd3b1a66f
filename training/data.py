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
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lensengine.catalogs.flags import Flag
from lensengine.engine.preprocess import Preprocessor
from lensengine.engine.specs import NATIVE_STAMP, ModelSpec

log = logging.getLogger(__name__)

__all__ = ["LoadReport", "CutoutSet", "load_cutouts", "split_indices", "BatchLoader", "iter_store_chunks"]

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
    unreadable_chunks: list = field(default_factory=list)  # [(tile, index, reason)]
    seconds: float = 0.0

    @property
    def n_skipped(self) -> int:
        return self.skipped_flags + self.skipped_unusable + self.skipped_label

    def as_dict(self) -> dict:
        return {"store": self.store, "n_read": self.n_read, "n_used": self.n_used, "n_skipped": self.n_skipped,
                "skipped_flags": self.skipped_flags, "skipped_unusable": self.skipped_unusable,
                "skipped_label": self.skipped_label, "unreadable_chunks": len(self.unreadable_chunks),
                "seconds": round(self.seconds, 2)}


class CutoutSet:
    """The usable cutouts of one store for one model: labels plus prepared inputs or raw bands."""

    def __init__(self, spec: ModelSpec, labels: np.ndarray, *, inputs: np.ndarray | None = None,
                 raw: dict[str, np.ndarray] | None = None):
        if (inputs is None) == (raw is None):
            raise ValueError("give exactly one of inputs (prepared) or raw bands")
        self.spec = spec
        self.labels = np.asarray(labels, dtype=np.int64)
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

    def batch(self, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Network inputs (len(index), C, S, S) float32 and labels for the given rows."""
        index = np.asarray(index)
        if self.inputs is not None:
            return self.inputs[index], self.labels[index]
        prepared = self._prep({b: self.raw[b][index] for b in self.spec.bands}, len(index))
        return prepared.inputs[self.spec.name], self.labels[index]

    def subset(self, index: np.ndarray) -> "CutoutSet":
        index = np.asarray(index)
        if self.inputs is not None:
            return CutoutSet(self.spec, self.labels[index], inputs=self.inputs[index])
        return CutoutSet(self.spec, self.labels[index], raw={b: a[index] for b, a in self.raw.items()})


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
                 max_memory_gb: float = 6.0, progress=None) -> tuple[CutoutSet, LoadReport]:
    """Read the usable, labelled cutouts of ``store`` (a path or an open SurveyStore) for ``spec``.

    ``limit`` stops reading once that many usable cutouts are held (store
    order, so deterministic).  ``progress`` is an optional callable
    ``progress(n_read, n_total)``.
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
        rows = np.flatnonzero(ok)[: capacity - n]
        k = rows.size
        if inputs is not None:
            inputs[n:n + k] = prepared.inputs[spec.name][rows]
        else:
            for b in spec.bands:
                raw[b][n:n + k] = np.asarray(bands[b], dtype=np.float32)[rows]
        labels[n:n + k] = label[rows]
        n += k
        if progress is not None:
            progress(report.n_read, total)
    report.n_used = n
    report.seconds = time.perf_counter() - t0
    if inputs is not None:
        data = CutoutSet(spec, labels[:n].copy(), inputs=inputs[:n])
    else:
        data = CutoutSet(spec, labels[:n].copy(), raw={b: a[:n] for b, a in raw.items()})
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

    After (or during) iteration ``wait_s`` is the time the consumer spent
    waiting for a batch that was not ready yet: the data-starvation measure.
    """

    def __init__(self, data: CutoutSet, order: np.ndarray, batch_size: int, prefetch: int = 2):
        self.data = data
        self.order = np.asarray(order)
        self.batch_size = int(batch_size)
        self.prefetch = max(1, int(prefetch))
        self.wait_s = 0.0

    def __len__(self) -> int:
        return (self.order.size + self.batch_size - 1) // self.batch_size

    def _batches(self):
        for start in range(0, self.order.size, self.batch_size):
            yield self.data.batch(self.order[start:start + self.batch_size])

    def __iter__(self):
        q: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()
        done = object()

        def put(item) -> bool:
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def work():
            try:
                for item in self._batches():
                    if not put(item):
                        return
                put(done)
            except BaseException as exc:  # hand any failure to the consumer
                put(exc)

        thread = threading.Thread(target=work, name="lensengine-batches", daemon=True)
        thread.start()
        try:
            while True:
                t0 = time.perf_counter()
                item = q.get()
                self.wait_s += time.perf_counter() - t0
                if item is done:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            thread.join(timeout=5)
