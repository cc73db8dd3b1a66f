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

import logging
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from lensengine.catalogs.catalog import ENSEMBLE_COLUMN, score_column
from lensengine.catalogs.flags import Flag, describe
from lensengine.engine.ensemble import ensemble_class
from lensengine.engine.models import INPUT_NAME, OUTPUT_NAME, ModelEntry
from lensengine.engine.preprocess import Preprocessor
from lensengine.engine.sessions import get_session

log = logging.getLogger(__name__)

__all__ = ["ChunkTask", "score_chunk", "score_batch", "score_store", "row_schema", "make_runner",
           "preprocessor_for"]

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
    ensemble: str | None = None  # path of a fitted OU-T-SNE, None for the mean stand-in
    precision: str = "fp32"      # "fp32" (ONNX Runtime) or one a make_runner plugin answers ("bf16")

    @property
    def key(self) -> str:
        return f"{self.tile}/{self.index}"


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
    """``run(x) -> p`` for one model: ONNX Runtime for fp32, else the ``make_runner`` plugin hook.

    Built once per process (sessions do not pickle, so each Dask worker builds
    its own from the model's path).
    """
    if precision == "fp32":
        sess = get_session(str(model.path), device, threads, model.name)
        return lambda x: sess.run([OUTPUT_NAME], {INPUT_NAME: x})[0]
    from lensengine.plugins.manager import get_plugin_manager

    runner = get_plugin_manager().hook.make_runner(model=model, precision=precision, threads=threads)
    if runner is None:
        raise ValueError(f"no plugin runs model {model.name} ({model.path}) in precision {precision!r} "
                         "(the make_runner hook); for bf16 install the training extra: "
                         "pip install 'lensengine[training]'")
    return runner


@lru_cache(maxsize=8)
def preprocessor_for(models: tuple[ModelEntry, ...]) -> Preprocessor:
    """The shared preprocessor of a tuple of models, from each model's own bands and stamp."""
    return Preprocessor([m.as_spec() for m in models])


@lru_cache(maxsize=4)
def _open_store(path: str):
    from lensengine.catalogs.store import SurveyStore

    return SurveyStore.open(path)


@lru_cache(maxsize=4)
def _ensemble(path: str | None):
    from lensengine.engine.ensemble import MeanEnsemble, TSNEEnsemble

    return MeanEnsemble() if path is None else TSNEEnsemble(path)


# --- the core -------------------------------------------------------------------------

def _run_model(model: ModelEntry, runner: Runner, x: np.ndarray, usable: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(p, bad)``: P(lens) of the usable cutouts (NaN elsewhere) and the mask of outputs refused.

    An output that is NaN or outside [0, 1] is not a probability: it is
    withheld (NaN) and marked, never passed on.  A wrong number of outputs is a
    broken model, not bad data, and raises naming the model file.
    """
    out = np.full(len(x), np.nan, np.float32)
    bad = np.zeros(len(x), dtype=bool)
    rows = np.flatnonzero(usable)
    if rows.size:
        p = np.asarray(runner(np.ascontiguousarray(x[rows])), dtype=np.float32).reshape(-1)
        if p.size != rows.size:
            raise ValueError(f"model {model.name} ({model.path}) returned {p.size} scores for {rows.size} cutouts")
        ok = (p >= 0) & (p <= 1)
        out[rows[ok]] = p[ok]
        bad[rows[~ok]] = True
        if not ok.all():
            log.warning("model %s returned %d value(s) that are NaN or outside [0, 1]: withheld and flagged "
                        "BAD_MODEL_OUTPUT", model.name, int((~ok).sum()))
    return out, bad


def score_batch(batch, models, ensemble, *, runners: dict[str, Runner], preprocessor: Preprocessor,
                batch_size: int) -> dict[str, np.ndarray]:
    """Score one batch of cutouts with every model and the ensemble.

    ``batch`` is a :class:`~lensengine.catalogs.store.CutoutBatch`, ``models``
    the :class:`ModelEntry` sequence, ``ensemble`` an object with
    ``score(probs) -> (score, columns, flags)`` and declared ``columns``
    (:mod:`lensengine.engine.ensemble`) or None for no ensemble, ``runners``
    maps model name to ``run(x) -> p`` (:func:`make_runner`),
    ``preprocessor`` is :func:`preprocessor_for` of the models.  Cutouts go
    through the networks ``batch_size`` at a time, in order.

    Returns ``{P_<MODEL>: ..., P_ENSEMBLE: ..., <ensemble columns>, FLAGS: ...}``
    (no ensemble entries when ``ensemble`` is None), one value per cutout.
    """
    n = len(batch)
    probs = np.full((n, len(models)), np.nan, np.float32)
    store_flags = np.asarray(batch.flags, np.uint32)
    flags = store_flags.copy()
    bands = batch.bands()
    for lo in range(0, n, batch_size):
        hi = min(lo + batch_size, n)
        prepared = preprocessor({b: (None if a is None else a[lo:hi]) for b, a in bands.items()}, hi - lo)
        flags[lo:hi] |= prepared.flags
        for j, m in enumerate(models):
            p, bad = _run_model(m, runners[m.name], prepared.inputs[m.name], prepared.usable[m.name])
            probs[lo:hi, j] = p
            flags[lo:hi][bad] |= np.uint32(Flag.BAD_MODEL_OUTPUT)
    # a band the store marked missing for a cutout arrives as NaN: report it as missing, not as bad pixels
    missing = (store_flags & np.uint32(Flag.MISSING_BAND)) != 0
    flags[missing] &= ~np.uint32(Flag.NONFINITE)

    out = {score_column(m.name): probs[:, j] for j, m in enumerate(models)}
    if ensemble is not None:
        score, extra, ens_flags = ensemble.score(probs)
        flags |= ens_flags
        out[ENSEMBLE_COLUMN] = np.asarray(score, np.float32)
        for column in ensemble.columns:
            if column.name not in extra:
                raise RuntimeError(f"ensemble {ensemble.name} did not return its declared column {column.name}")
            out[column.name] = np.asarray(extra[column.name], dtype=column.dtype)
    out["FLAGS"] = flags
    return out


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


def score_chunk(task: ChunkTask) -> dict[str, np.ndarray]:
    """Score every cutout of one chunk; returns the score-table rows as columns in :func:`row_schema` order.

    An unreadable chunk gives the same columns: its scores and truth are
    unknown (NaN, -1 or ""), its FLAGS ``UNREADABLE`` and its ERROR the reason.
    Columns added by ``process_batch`` plugins follow the schema's.
    """
    from lensengine.catalogs.store import ChunkReadError

    store = _open_store(task.store)
    n = task.stop - task.start
    schema = _schema(task.models, task.ensemble, tuple(store.truth_columns.items()))
    rows: dict[str, np.ndarray] = {"TILE": np.full(n, task.tile, dtype=object),
                                   "CHUNK": np.full(n, task.index, np.int32),
                                   "ROW": np.arange(task.start, task.stop, dtype=np.int64)}
    try:
        batch = store.read_chunk(task.tile, task.index)
        if len(batch) != n:
            raise ChunkReadError(task.tile, task.index, f"read {len(batch)} cutouts, expected {n}")
    except ChunkReadError as exc:
        log.warning("unreadable chunk: %s", exc)
        rows.update(_index_rows(store, task), FLAGS=np.full(n, np.uint32(Flag.UNREADABLE), np.uint32),
                    ERROR=np.full(n, str(exc), dtype=object))
    else:
        runners = {m.name: make_runner(m, task.precision, task.device, task.threads) for m in task.models}
        rows.update(OBJECT_ID=batch.object_id, RA=batch.ra, DEC=batch.dec,
                    ERROR=np.full(n, "", dtype=object),
                    **score_batch(batch, task.models, _ensemble(task.ensemble), runners=runners,
                                  preprocessor=preprocessor_for(task.models), batch_size=task.batch_size))
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
                batch_size: int = 32, precision: str = "fp32") -> Iterator[dict[str, np.ndarray]]:
    """Yield :func:`score_chunk`'s rows for every chunk of ``store``, in store order, in this process.

    What ``lensengine evaluate`` and ``lensengine recall-test`` score with: the
    same tasks ``lensengine run`` hands its workers, so the numbers are run's.
    ``store`` is a path or an open :class:`~lensengine.catalogs.store.SurveyStore`;
    ``ensemble`` as in :class:`ChunkTask`.
    """
    path = str(Path(getattr(store, "path", store)).resolve())
    _open_store.cache_clear()  # a command sees the store as it is now, not as an earlier command in this process did
    opened = _open_store(path)
    models = tuple(models)
    for tile in opened.tiles:
        for index, (start, stop) in enumerate(opened.chunk_slices(tile)):
            yield score_chunk(ChunkTask(path, tile, index, start, stop, models, device, threads, batch_size,
                                        ensemble, precision))
