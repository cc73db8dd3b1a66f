"""The scoring core: the one implementation of "cutouts in, score-table rows out".

Every command that scores cutouts calls this module, so their numbers cannot
drift apart: ``lensengine run`` (:func:`score_chunk` on the Dask workers),
``lensengine evaluate`` and ``lensengine recall-test`` (:func:`score_store`,
chunk by chunk in the calling process, the same function on the same chunks).

One read of a chunk feeds every model: :func:`score_batch` preprocesses each
sub-batch once (shared resampling and scaling, :class:`Preprocessor`), each
model's runner scores its input, a model output that is NaN or outside [0, 1]
is withheld and flagged ``BAD_MODEL_OUTPUT``, the ensemble combines the
scores.  :func:`score_chunk` adds the identity, truth and flag-text columns and
the plugins' columns.  Nothing here raises for bad data: an unreadable chunk or
a bad cutout comes back as rows with flags, so every input cutout is accounted
for, and an unreadable chunk's rows carry every column of :func:`row_schema`,
exactly like a scored chunk's.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import queue
import threading
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Iterator

import numpy as np

from lensengine.catalogs.catalog import ENSEMBLE_COLUMN, score_column
from lensengine.catalogs.flags import Flag, describe
from lensengine.engine.buffers import pool
from lensengine.engine.cascade import Cascade
from lensengine.engine.ensemble import ensemble_class
from lensengine.engine.heap import keep_batch_memory
from lensengine.engine.models import ModelEntry
from lensengine.engine.preprocess import Preprocessor

log = logging.getLogger(__name__)

__all__ = ["ChunkTask", "score_chunk", "score_batch", "score_store", "row_schema", "make_runner",
           "preprocessor_for", "open_store"]

Runner = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class ChunkTask:
    """One store chunk to score: what a Dask worker receives (paths and model entries; sessions do not pickle)."""

    store: str
    tile: str
    index: int
    start: int
    stop: int
    models: tuple[ModelEntry, ...]
    device: str = "auto"
    threads: int = 0
    batch_size: int = 32
    ensemble: str | None = None  # path of a fitted OU-T-SNE (.npz) or stack (.json), None for the mean stand-in
    precision: str = "fp32"      # "fp32" (ONNX Runtime) or one a make_runner plugin answers ("bf16")
    cascade: Cascade | None = None  # --cascade: the gate (engine.cascade); None scores every model everywhere
    lanes: int = 1               # networks run side by side (each runner then uses ``threads`` threads)
    #: (tile, index, start, stop) of the range this process scores next, where that is known (one worker, or
    #: scoring in order in one process): its first piece is read once this task's last one is, while the
    #: networks score this task's last sub-batches (:func:`_store_sub_batches`)
    ahead: tuple[str, int, int, int] | None = None
    #: the networks' threads of every worker on this machine are one per core (the default CPU run): reading and
    #: preprocessing then take no thread of their own (:func:`_prep_mode`)
    fills_cores: bool = False

    @property
    def key(self) -> str:
        return f"{self.tile}/{self.index}"


def with_read_ahead(tasks: Iterator[ChunkTask]) -> Iterator[ChunkTask]:
    """``tasks`` in order, each told the range of the one after it (``ahead``): for one process scoring them in
    this order.  Made one task ahead of the iteration, so a lazy sequence stays lazy."""
    previous = None
    for task in tasks:
        if previous is not None:
            yield dataclasses.replace(previous, ahead=(task.tile, task.index, task.start, task.stop))
        previous = task
    if previous is not None:
        yield previous


# --- the row schema ---------------------------------------------------------------

def row_schema(models, ensemble: str | None, truth_columns: dict[str, str]):
    """The :class:`pyarrow.Schema` of every score-table row, known before any chunk is scored.

    Columns in order: ``OBJECT_ID``, ``TILE``, ``CHUNK``, ``ROW``, ``RA``,
    ``DEC``, one ``P_<MODEL>`` per model (in the given order), ``P_ENSEMBLE``,
    the ensemble's declared columns (OU-T-SNE: ``P_OU_TSNE``, ``TSNE_CELL``,
    ``TSNE_X``, ``TSNE_Y``), ``FLAGS``, ``FLAG_TEXT``, ``ERROR``, then one
    ``TRUTH_<NAME>`` per store truth column.  ``ensemble`` is the path of a
    fitted OU-T-SNE or None for the mean (as in :class:`ChunkTask`);
    ``truth_columns`` maps name to dtype (``"str"`` for text) as the store
    declares them.  Columns that ``process_batch`` plugins add come after these.
    """
    import pyarrow as pa

    fields = [("OBJECT_ID", pa.int64()), ("TILE", pa.string()), ("CHUNK", pa.int32()), ("ROW", pa.int64()),
              ("RA", pa.float64()), ("DEC", pa.float64())]
    fields += [(score_column(m.name), pa.float32()) for m in models]
    fields.append((ENSEMBLE_COLUMN, pa.float32()))
    fields += [(c.name, pa.from_numpy_dtype(np.dtype(c.dtype))) for c in ensemble_class(ensemble).columns]
    fields += [("FLAGS", pa.uint32()), ("FLAG_TEXT", pa.string()), ("ERROR", pa.string())]
    fields += [(_truth_column(name), pa.string() if dtype == "str" else pa.from_numpy_dtype(np.dtype(dtype)))
               for name, dtype in truth_columns.items()]
    names = [name for name, _ in fields]
    clashes = sorted({n for n in names if names.count(n) > 1})
    if clashes:
        raise ValueError(f"score-table columns {clashes} occur twice: model names "
                         f"{[m.name for m in models]} must map to distinct P_<MODEL> columns")
    return pa.schema(fields)


def _truth_column(name: str) -> str:
    return f"TRUTH_{name.upper()}"


@lru_cache(maxsize=8)
def _schema(models: tuple[ModelEntry, ...], ensemble: str | None, truth: tuple[tuple[str, str], ...]):
    return row_schema(models, ensemble, dict(truth))


def _numpy_dtype(arrow_type) -> np.dtype:
    import pyarrow as pa

    return np.dtype(object) if pa.types.is_string(arrow_type) else np.dtype(arrow_type.to_pandas_dtype())


def _blank(arrow_type, n: int) -> np.ndarray:
    """A column of ``n`` unknown values: NaN for floats, -1 for integers, "" for text."""
    dtype = _numpy_dtype(arrow_type)
    if dtype == object:
        return np.full(n, "", dtype=object)
    return np.full(n, np.nan if dtype.kind == "f" else -1, dtype=dtype)


# --- runners and preprocessing (cached per process) --------------------------------

@lru_cache(maxsize=32)
def make_runner(model: ModelEntry, precision: str = "fp32", device: str = "auto", threads: int = 0) -> Runner:
    """``run(x) -> p`` for one model with the runner ``precision`` names for it (:mod:`lensengine.engine.runners`).

    ``precision`` is a runner plan: ``fp32`` (ONNX Runtime), ``bf16``, a
    runner name, or ``per-model:...``.  Built once per process (sessions do
    not pickle, so each Dask worker builds its own from the model's path).
    """
    from lensengine.engine.runners import build_runner, runner_for

    return build_runner(model, runner_for(precision, model.name), device, threads)


@lru_cache(maxsize=8)
def preprocessor_for(models: tuple[ModelEntry, ...]) -> Preprocessor:
    """The shared preprocessor of a tuple of models, from each model's own bands and stamp; its arrays come
    from the process's buffer pool (engine/buffers.py)."""
    return Preprocessor([m.as_spec() for m in models], buffers=pool)


@lru_cache(maxsize=4)
def open_store(path: str):
    """The store at ``path`` (a local path or a URL), opened once per process: workers score and check against it."""
    from lensengine.catalogs.store import SurveyStore

    return SurveyStore.open(path)


@lru_cache(maxsize=4)
def _ensemble(path: str | None):
    from lensengine.engine.ensemble import ensemble_from_path

    return ensemble_from_path(path)


# --- the core -------------------------------------------------------------------------

#: Cutouts read from the store at a time inside a task: large enough that the per-read cost of the small
#: columns (IDs, truth) stays small, small enough that no task holds more than a few tens of MB of pixels.
READ_PIECE = 128


class _ReadAhead:
    """The first piece of the range a process scores next, read while its networks finish the current one.

    At most one piece is held; taking it (or anything else) empties the slot, so a piece that was not
    wanted after all (another range came next) is let go at the next task's start.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._slot: tuple | None = None

    def put(self, key: tuple, piece) -> None:
        with self._lock:
            self._slot = (key, piece)

    def take(self, key: tuple):
        with self._lock:
            slot, self._slot = self._slot, None
        return slot[1] if slot is not None and slot[0] == key else None


_read_ahead = _ReadAhead()

#: Prepared sub-batches that may wait for the networks: one in work, one or two ready.
PREFETCH_DEPTH = 2
#: The most stamp pixels (cutouts x height x width of a network's input) in one network call on the CPU: 16
#: cutouts of the 200-px networks, the whole sub-batch of the 66-px ones (up to 146).  Their activations grow
#: with the call: on one thread OU-200 in calls of 32 held 1.32 GB and scored 39 img/s, in calls of 16 0.66 GB
#: and 46 img/s (OU-VIS 1.20 / 0.53 GB, 49 / 55 img/s); the 66-px networks run at the same speed from 16 to 64
#: (docs/performance.md, "Stop 31").  A cutout's score does not depend on its call.  On a GPU: GPU_CALL_PIXELS.
CPU_CALL_PIXELS = 16 * 200 * 200
#: The same cap on a GPU: 64 cutouts of the 200-px networks, 587 of the 66-px ones.  On one H200 (ONNX Runtime
#: CUDA, fp32; two runs) OU-200 scored 6 100-9 600 img/s in calls of 64 and 4 300-4 500 in calls of 1 024, and
#: failed in calls of 4 096 (cuDNN refuses a tensor that large); OU-VIS 15 200-16 600 / 4 800-6 000; the 66-px
#: networks peak at 256-1 024 (70 000-132 000 img/s).  Calls of 1 024 also made the GPU memory arenas of four
#: or more workers' sessions run out (docs/performance.md, "The GPU benchmark").
GPU_CALL_PIXELS = 64 * 200 * 200
_DONE = object()


def _run_model(model: ModelEntry, runner: Runner, x: np.ndarray, usable: np.ndarray,
               call_size: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(p, bad)``: P(lens) of the usable cutouts (NaN elsewhere) and the mask of outputs refused.

    ``call_size`` (0: all at once) caps the cutouts per network call.

    An output that is NaN or outside [0, 1] is not a probability: it is
    withheld (NaN) and marked, never passed on.  A wrong number of outputs is a
    broken model, not bad data, and raises naming the model file.
    """
    out = np.full(len(x), np.nan, np.float32)
    bad = np.zeros(len(x), dtype=bool)
    rows = np.flatnonzero(usable)
    if rows.size:
        x = x if rows.size == len(x) else x[rows]
        step = call_size or rows.size
        p = np.concatenate([np.asarray(runner(np.ascontiguousarray(x[i:i + step])), dtype=np.float32).reshape(-1)
                            for i in range(0, rows.size, step)])
        if p.size != rows.size:
            raise ValueError(f"model {model.name} ({model.path}) returned {p.size} scores for {rows.size} cutouts")
        ok = (p >= 0) & (p <= 1)
        out[rows[ok]] = p[ok]
        bad[rows[~ok]] = True
        if not ok.all():
            log.warning("model %s returned %d value(s) that are NaN or outside [0, 1]: withheld and flagged "
                        "BAD_MODEL_OUTPUT", model.name, int((~ok).sum()))
    return out, bad


def _in_background(items: Iterator, depth: int = PREFETCH_DEPTH) -> Iterator:
    """Yield ``items`` in order while a thread produces the next ones (at most ``depth`` wait).

    Reading and preprocessing the next sub-batch then overlaps with the networks
    scoring this one: ONNX Runtime, zarr's decompression and NumPy's large
    operations all release the GIL.  An exception in the producer is raised
    here, at the item where it happened; a consumer that stops early stops the
    producer (it finishes the item in hand first).
    """
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((True, item)):
                    return
            put((True, _DONE))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which raises it
            put((False, exc))

    worker = threading.Thread(target=produce, name="lensengine-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            ok, item = q.get()
            if not ok:
                raise item
            if item is _DONE:
                return
            yield item
    finally:
        stop.set()
        worker.join()


def _on_lanes(items: Iterator, lanes: int) -> Iterator:
    """Yield ``items`` in order, each next one made by a job on the lane pool while the caller uses this one.

    Where every lane is one thread on its own core, a separate read thread would take turns with the lanes on
    the same cores; as a lane job, reading and preprocessing the next sub-batch instead runs between two
    network calls.  The job is queued before the caller starts this item's networks, so the lanes take it
    first.  An exception in it is raised here, at its item; a caller that stops early waits for a job in
    progress (the sequence is never advanced by two threads at once).
    """
    pool = _lane_pool(lanes)
    items = iter(items)
    job = pool.submit(next, items, _DONE)
    try:
        while True:
            item = job.result()
            if item is _DONE:
                return
            job = pool.submit(next, items, _DONE)
            yield item
    finally:
        if not job.cancel():
            wait([job])


def _stages(models, cascade: Cascade | None) -> tuple[tuple[ModelEntry, ...], tuple[ModelEntry, ...]]:
    """(models run on every cutout, models run only past the cascade's gate)."""
    if cascade is None:
        return tuple(models), ()
    return (tuple(m for m in models if m.name in cascade.cheap),
            tuple(m for m in models if m.name in cascade.expensive))


def _sub_batches(batch, start: int, batch_size: int) -> Iterator[tuple[int, int, dict, np.ndarray]]:
    """``(lo, hi, bands, store_flags)`` of each ``batch_size`` slice of an in-memory batch (lo, hi from ``start``)."""
    bands = batch.bands()
    flags = np.asarray(batch.flags, np.uint32)
    for lo in range(0, len(batch), batch_size):
        hi = min(lo + batch_size, len(batch))
        yield (start + lo, start + hi, {b: (None if a is None else a[lo:hi]) for b, a in bands.items()},
               flags[lo:hi])


@lru_cache(maxsize=4)
def _lane_pool(lanes: int) -> ThreadPoolExecutor:
    """The process's pool of ``lanes`` threads that run networks side by side (shared by its tasks)."""
    return ThreadPoolExecutor(lanes, thread_name_prefix="lensengine-lane")


def split_lanes(lanes: int, threads: int, models, precision: str = "fp32", device: str = "auto") -> tuple[int, int]:
    """``(lanes, threads per network)`` for a scorer with ``threads`` threads (0: unknown, ONNX Runtime's default).

    ``lanes`` N splits the threads into N lanes.  Auto (0) takes two lanes on
    the CPU when there are two threads or more, two networks or more and every
    runner is a built-in ONNX Runtime or OpenVINO one: two networks on one
    thread each keep two cores busier than one network on two threads, whose
    operators wait for each other between layers (on a 2-core machine the seven
    networks score 11-15 % more cutouts/s; docs/performance.md).  Otherwise one
    lane with all the threads, as before lanes existed.
    """
    from lensengine.engine.runners import RUNNERS, runner_for

    if lanes == 0:
        kinds = [RUNNERS.get(runner_for(precision, m.name)) for m in models]
        builtin = all(kind is not None and not kind.torch_weights for kind in kinds)
        on_cpu = not _on_gpu(device)
        lanes = 2 if (threads >= 2 and len(models) >= 2 and builtin and on_cpu) else 1
    if lanes == 1:
        return 1, threads
    return lanes, max(1, threads // lanes)


def _gpu_here() -> bool:
    """Whether ``--device auto`` would run the networks on a GPU in this process."""
    from lensengine.engine.sessions import choose_providers

    return choose_providers("auto")[0] != "CPUExecutionProvider"


def _on_gpu(device: str) -> bool:
    """Whether the networks of ``device`` run on a GPU in this process."""
    return device in ("cuda", "tensorrt") or (device == "auto" and _gpu_here())


def call_size(shape: tuple[int, ...], n: int, lanes: int = 1, call_pixels: int = CPU_CALL_PIXELS) -> int:
    """Cutouts per network call for a sub-batch of ``n`` inputs of ``shape`` (``(n, bands, height, width)``).

    With ``lanes`` > 1, 1/``lanes`` of the sub-batch (the lanes' calls together hold about what one call of the
    whole sub-batch would); then at most ``call_pixels`` stamp pixels a call (:data:`CPU_CALL_PIXELS`; 0: no
    cap).  At least one cutout.
    """
    size = -(-n // max(1, lanes))
    if call_pixels:
        size = min(size, call_pixels // max(1, int(np.prod(shape[2:]))))
    return max(1, size)


def _launch(models, runners: dict[str, Runner], prep, lanes: int,
            call_pixels: int = CPU_CALL_PIXELS) -> list[tuple[ModelEntry, Future]]:
    """Start each model on its input: in the calling thread, one after the other, when ``lanes`` is 1; else on
    the lane pool, largest input first (the 200-px networks start first, the 66-px ones fill the gaps), in calls
    of 1/``lanes`` of the sub-batch (the same speed on one thread each; the memory of one full call).  Calls hold
    at most ``call_pixels`` stamp pixels (:func:`call_size`)."""
    def args(m: ModelEntry) -> tuple:
        x = prep.inputs[m.name]
        return m, runners[m.name], x, prep.usable[m.name], call_size(x.shape, len(prep.flags), lanes, call_pixels)

    jobs = []
    if lanes <= 1:
        for m in models:
            job: Future = Future()
            job.set_result(_run_model(*args(m)))
            jobs.append((m, job))
        return jobs
    pool = _lane_pool(lanes)
    for m in sorted(models, key=lambda m: -int(np.prod(prep.inputs[m.name].shape[1:]))):
        jobs.append((m, pool.submit(_run_model, *args(m))))
    return jobs


def _score_sub_batches(sub_batches: Iterator, n: int, models, ensemble, *, runners: dict[str, Runner],
                       cascade: Cascade | None = None, preprocessor: Preprocessor | None = None,
                       prefetch: bool = True, lanes: int = 1, prep_on_lanes: bool = False,
                       call_pixels: int = CPU_CALL_PIXELS) -> dict[str, np.ndarray]:
    """The core of :func:`score_batch` and :func:`score_chunk`: score ``n`` cutouts given as sub-batches.

    ``sub_batches`` yields ``(lo, hi, bands, store_flags)`` covering rows
    ``[0, n)`` in order.  Each is preprocessed for the first-stage models (all
    of them, or the cascade's cheap ones) -- ahead, when ``prefetch``: in a
    background thread, or with ``prep_on_lanes`` and more than one lane as a
    job on the lanes (:func:`_on_lanes`) -- and scored; with a cascade, the rows
    whose cheap scores pass the gate are preprocessed for the expensive models
    and scored by them (in groups of at most the sub-batch size, so the networks
    see the same inputs as in a full run), and the others are flagged
    ``CASCADE_SKIPPED``.
    The ensemble scores only the rows every model was asked to score; a
    skipped row's ensemble columns stay unknown (NaN, -1).

    ``lanes`` > 1 runs the networks side by side on that many threads (each
    runner single- or few-threaded): a sub-batch's networks are started before
    the previous sub-batch's results are collected, so a lane that finishes
    early starts on the next sub-batch.  The scores are the same as with one
    lane (each cutout's score does not depend on what shares its call), and
    results are written in the calling thread.  ``call_pixels`` caps each
    network call (:func:`call_size`; 0 on a GPU).
    """
    first, second = _stages(models, cascade)
    column = {m.name: j for j, m in enumerate(models)}
    prep1 = preprocessor if (preprocessor is not None and cascade is None) else preprocessor_for(first)
    probs = np.full((n, len(models)), np.nan, np.float32)
    store_flags = np.zeros(n, np.uint32)
    flags = np.zeros(n, np.uint32)
    went_on = np.ones(n, dtype=bool)

    def prepared(items):
        for lo, hi, bands, sflags in items:
            yield lo, hi, bands, sflags, prep1(bands, hi - lo)

    def collect(jobs, at: np.ndarray) -> None:
        for m, job in jobs:
            p, bad = job.result()
            probs[at, column[m.name]] = p
            flags[at[bad]] |= np.uint32(Flag.BAD_MODEL_OUTPUT)

    def finish(item, jobs) -> None:
        lo, hi, bands, sflags, prep = item
        store_flags[lo:hi] = sflags
        flags[lo:hi] |= sflags | prep.flags
        collect(jobs, np.arange(lo, hi))
        if not second:
            return
        on = cascade.passes(probs[lo:hi][:, [column[name] for name in cascade.cheap]])
        went_on[lo:hi] = on
        rows = np.flatnonzero(on)
        if not rows.size:
            return
        prep2 = preprocessor_for(second)({b: (None if a is None else a[rows]) for b, a in bands.items()}, rows.size)
        at = lo + rows
        flags[at] |= prep2.flags
        collect(_launch(second, runners, prep2, lanes, call_pixels), at)

    stream = prepared(sub_batches)
    if prefetch:
        stream = _on_lanes(stream, lanes) if prep_on_lanes and lanes > 1 else _in_background(stream)
    launched: list[tuple] = []  # (sub-batch, its networks' jobs) started and not yet collected, oldest first
    try:
        for item in stream:
            launched.append((item, _launch(first, runners, item[4], lanes, call_pixels)))
            if len(launched) > 1:
                finish(*launched[0])
                launched.pop(0)
        while launched:
            finish(*launched[0])
            launched.pop(0)
    finally:
        for _, jobs in launched:  # a failure: the networks not yet started are not run
            for _, job in jobs:
                job.cancel()
    # a band the store marked missing for a cutout arrives as NaN: report it as missing, not as bad pixels
    missing = (store_flags & np.uint32(Flag.MISSING_BAND)) != 0
    flags[missing] &= ~np.uint32(Flag.NONFINITE)
    skipped = ~went_on
    flags[skipped] |= np.uint32(Flag.CASCADE_SKIPPED)

    out = {score_column(m.name): probs[:, j] for j, m in enumerate(models)}
    if ensemble is not None:
        # never hand the ensemble a skipped row: its missing expensive scores would read as "could not score"
        scored = np.flatnonzero(went_on)
        out[ENSEMBLE_COLUMN] = np.full(n, np.nan, np.float32)
        extra: dict[str, np.ndarray] = {}
        if scored.size:
            score, extra, ens_flags = ensemble.score(probs if scored.size == n else probs[scored])
            out[ENSEMBLE_COLUMN][scored] = np.asarray(score, np.float32)
            flags[scored] |= np.asarray(ens_flags, np.uint32)
        for column_ in ensemble.columns:
            if scored.size and column_.name not in extra:
                raise RuntimeError(f"ensemble {ensemble.name} did not return its declared column {column_.name}")
            dtype = np.dtype(column_.dtype)
            values = np.full(n, np.nan if dtype.kind == "f" else -1, dtype=dtype)
            if scored.size:
                values[scored] = np.asarray(extra[column_.name], dtype=dtype)
            out[column_.name] = values
    out["FLAGS"] = flags
    return out


def score_batch(batch, models, ensemble, *, runners: dict[str, Runner], preprocessor: Preprocessor | None = None,
                batch_size: int, cascade: Cascade | None = None, prefetch: bool = True,
                lanes: int = 1, call_pixels: int = CPU_CALL_PIXELS) -> dict[str, np.ndarray]:
    """Score one in-memory batch of cutouts with every model and the ensemble.

    ``batch`` is a :class:`~lensengine.catalogs.store.CutoutBatch`, ``models``
    the :class:`ModelEntry` sequence, ``ensemble`` an object with
    ``score(probs) -> (score, columns, flags)`` and declared ``columns``
    (:mod:`lensengine.engine.ensemble`) or None for no ensemble, ``runners``
    maps model name to ``run(x) -> p`` (:func:`make_runner`),
    ``preprocessor`` is :func:`preprocessor_for` of the models (made here when
    not given).  Cutouts go through the networks ``batch_size`` at a time, in
    order, the next sub-batch preprocessed while the networks run (``prefetch``).
    ``cascade`` (:class:`~lensengine.engine.cascade.Cascade`) runs its
    expensive models only past its gate.  ``lanes`` > 1 runs the networks side
    by side on that many threads (the same scores); ``call_pixels`` caps each
    network call (:func:`call_size`; 0: calls of the whole sub-batch, as on a GPU).

    Returns ``{P_<MODEL>: ..., P_ENSEMBLE: ..., <ensemble columns>, FLAGS: ...}``
    (no ensemble entries when ``ensemble`` is None), one value per cutout.
    """
    return _score_sub_batches(_sub_batches(batch, 0, batch_size), len(batch), models, ensemble, runners=runners,
                              cascade=cascade, preprocessor=preprocessor, prefetch=prefetch, lanes=lanes,
                              call_pixels=call_pixels)


def _index_rows(store, task: ChunkTask) -> dict[str, np.ndarray]:
    """Object IDs and positions of a chunk whose images cannot be read (-1 / NaN where unknowable)."""
    n = task.stop - task.start
    out = {"OBJECT_ID": np.full(n, -1, np.int64), "RA": np.full(n, np.nan), "DEC": np.full(n, np.nan)}
    try:
        index = store.read_index(task.tile, task.start, task.stop)
        out.update(OBJECT_ID=index["object_id"].astype(np.int64), RA=index["ra"].astype(np.float64),
                   DEC=index["dec"].astype(np.float64))
    except Exception as exc:  # noqa: BLE001 - the index is best effort for a corrupt chunk
        log.warning("chunk %s: index columns unreadable too (%s)", task.key, exc)
    return out


def _read_step(task: ChunkTask) -> int:
    """Cutouts per store read inside a task: whole sub-batches, about :data:`READ_PIECE`."""
    return max(task.batch_size, READ_PIECE // task.batch_size * task.batch_size)


def _store_sub_batches(store, task: ChunkTask, read: list) -> Iterator[tuple[int, int, dict, np.ndarray]]:
    """The task's rows as sub-batches, read ``READ_PIECE`` cutouts at a time (images dropped once split).

    Appends each piece, without its images, to ``read`` (IDs, positions,
    truth); raises :class:`~lensengine.catalogs.store.ChunkReadError` for a
    piece that cannot be read or comes back short, which makes the whole task
    unreadable, as a whole-chunk read would.  The first piece may have been read
    by the task before (``ahead``); once the last piece is read, the first of
    ``task.ahead`` is read for the next task.
    """
    from lensengine.catalogs.store import ChunkReadError

    step = _read_step(task)
    for a in range(task.start, task.stop, step) or (task.start,):  # an empty task still reads its (empty) range
        b = min(a + step, task.stop)
        piece = _read_ahead.take((task.store, task.tile, a, b)) if a == task.start else None
        if piece is None:
            piece = store.read(task.tile, a, b, empty=pool.empty)  # image pieces in kept memory (engine/buffers.py)
        if len(piece) != b - a:
            raise ChunkReadError(task.tile, task.index, f"read {len(piece)} cutouts of rows [{a}, {b}), "
                                                        f"expected {b - a}")
        yield from _sub_batches(piece, a - task.start, task.batch_size)
        read.append(dataclasses.replace(piece, vis=None, nisp=None))
    if task.ahead is not None:
        _read_next(store, task)


def _read_next(store, task: ChunkTask) -> None:
    """Read the first piece of ``task.ahead`` into the read-ahead slot; a failure is left for that task to meet."""
    tile, _, start, stop = task.ahead
    b = min(start + _read_step(task), stop)
    try:
        _read_ahead.put((task.store, tile, start, b), store.read(tile, start, b, empty=pool.empty))
    except Exception as exc:  # noqa: BLE001 - only a head start: the next task reads it again and reports
        log.debug("reading ahead rows [%d, %d) of tile %s: %s", start, b, tile, exc)


def _prep_mode(task: ChunkTask) -> str:
    """How a task reads and preprocesses its next sub-batch while the networks score one: ``"thread"`` (a read
    thread of its own, on cores the networks leave over), ``"lanes"`` (a job on the lanes) or ``"inline"``
    (in the task's thread, between sub-batches).

    Where the networks' threads are one per core on this machine (``fills_cores``: one worker with a lane per
    core, or as many one-thread workers as cores), a read thread would only take turns with them on the same
    cores: a worker with lanes then prepares on them, a worker with one network thread prepares in turn
    (the other workers keep the other cores busy).  Not on a GPU, whose calls leave the CPU free.
    """
    if not task.fills_cores or task.threads != 1 or _on_gpu(task.device):
        return "thread"
    return "lanes" if task.lanes > 1 else "inline"


def score_chunk(task: ChunkTask) -> dict[str, np.ndarray]:
    """Score every cutout of one chunk; returns the score-table rows as columns in :func:`row_schema` order.

    An unreadable chunk gives the same columns: its scores and truth are
    unknown (NaN, -1 or ""), its FLAGS ``UNREADABLE`` and its ERROR the reason.
    Columns added by ``process_batch`` plugins follow the schema's.
    """
    from lensengine.catalogs.store import ChunkReadError, CutoutBatch

    keep_batch_memory()  # with LENSENGINE_HEAP=keep, once per process (engine/heap.py)
    store = open_store(task.store)
    n = task.stop - task.start
    schema = _schema(task.models, task.ensemble, tuple(store.truth_columns.items()))
    rows: dict[str, np.ndarray] = {"TILE": np.full(n, task.tile, dtype=object),
                                   "CHUNK": np.full(n, task.index, np.int32),
                                   "ROW": np.arange(task.start, task.stop, dtype=np.int64)}
    read: list = []  # the small columns of each piece read, in order
    try:
        runners = {m.name: make_runner(m, task.precision, task.device, task.threads) for m in task.models}
        mode = _prep_mode(task)
        scored = _score_sub_batches(_store_sub_batches(store, task, read), n, task.models, _ensemble(task.ensemble),
                                    runners=runners, cascade=task.cascade, lanes=task.lanes,
                                    prefetch=mode != "inline", prep_on_lanes=mode == "lanes",
                                    call_pixels=GPU_CALL_PIXELS if _on_gpu(task.device) else CPU_CALL_PIXELS)
    except ChunkReadError as exc:
        log.warning("unreadable chunk: %s", exc)
        rows.update(_index_rows(store, task), FLAGS=np.full(n, np.uint32(Flag.UNREADABLE), np.uint32),
                    ERROR=np.full(n, str(exc), dtype=object))
    else:
        batch = CutoutBatch.concatenate(read)
        rows.update(OBJECT_ID=batch.object_id, RA=batch.ra, DEC=batch.dec, ERROR=np.full(n, "", dtype=object),
                    **scored)
        rows.update({_truth_column(k): v for k, v in batch.truth.items() if k in store.truth_columns})
    # a chunk holds few distinct flag values: describe each once, not once per cutout
    values, inverse = np.unique(rows["FLAGS"], return_inverse=True)
    rows["FLAG_TEXT"] = np.array([describe(v) for v in values], dtype=object)[inverse.ravel()]
    out = {f.name: (np.asarray(rows[f.name]).astype(_numpy_dtype(f.type), copy=False) if f.name in rows
                    else _blank(f.type, n)) for f in schema}
    return _plugin_columns(out, task)


def _plugin_columns(rows: dict[str, np.ndarray], task: ChunkTask) -> dict[str, np.ndarray]:
    from lensengine.plugins.manager import get_plugin_manager

    n = task.stop - task.start
    context = {"tile": task.tile, "chunk": task.index, "store": task.store}
    for extra in get_plugin_manager().hook.process_batch(batch=rows, context=context):
        for key, values in (extra or {}).items():
            values = np.asarray(values)
            if values.shape[:1] != (n,):
                raise ValueError(f"plugin column {key!r} has {values.shape[:1]} rows for a chunk of {n}")
            rows[key] = values
    return rows


def score_store(store, models, ensemble: str | None = None, *, device: str = "auto", threads: int = 0,
                batch_size: int = 32, precision: str = "fp32", rows_per_task: int | None = None,
                cascade: Cascade | None = None, lanes: int = 0) -> Iterator[dict[str, np.ndarray]]:
    """Yield :func:`score_chunk`'s rows for every chunk of ``store``, in store order, in this process.

    What ``lensengine evaluate`` and ``lensengine recall-test`` score with: the
    same tasks ``lensengine run`` hands its workers, so the numbers are run's.
    ``store`` is a path or an open :class:`~lensengine.catalogs.store.SurveyStore`;
    ``ensemble`` as in :class:`ChunkTask`.  ``rows_per_task`` splits each chunk
    into tasks of at most that many rows (the same scores, yielded sooner), so
    a caller's progress bar can move within a chunk.  ``cascade`` as in
    :class:`ChunkTask` (the cascade benchmark's steady state; evaluate and the
    recall test score every model).  ``lanes`` as in :class:`ChunkTask`, 0 (auto)
    as :func:`split_lanes` decides for ``threads`` (0: this machine's cores).
    """
    from lensengine.catalogs.store import location_key

    models = tuple(models)
    lanes, per_lane = split_lanes(lanes, threads or (os.cpu_count() or 1), models, precision, device)
    threads = per_lane if lanes > 1 else threads
    fills = lanes * max(threads, 1) >= (os.cpu_count() or 1)
    path = location_key(getattr(store, "path", store))  # a URL as given, a local path made absolute
    open_store.cache_clear()  # a command sees the store as it is now, not as an earlier command in this process did
    opened = open_store(path)

    def tasks() -> Iterator[ChunkTask]:
        for tile in opened.tiles:
            for index, (start, stop) in enumerate(opened.chunk_slices(tile)):
                step = rows_per_task or (stop - start) or 1
                for lo in range(start, stop, step):
                    yield ChunkTask(path, tile, index, lo, min(lo + step, stop), models, device, threads,
                                    batch_size, ensemble, precision, cascade, lanes, fills_cores=fills)

    for task in with_read_ahead(tasks()):  # scored in order here: each reads the next one's first piece
        yield score_chunk(task)
