"""Scoring one chunk: the task every Dask worker runs.

One read of a chunk feeds every model: the chunk is preprocessed once per
sub-batch (shared resampling and scaling, :class:`Preprocessor`), each model's
session runs on its input, the ensemble combines the scores, and plugins add
columns.  Nothing here raises for bad data: an unreadable chunk or a bad
cutout comes back as rows with flags, so every input cutout is accounted for.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from lensengine.catalogs.catalog import score_column
from lensengine.catalogs.flags import Flag, describe
from lensengine.engine.models import ModelEntry
from lensengine.engine.preprocess import Preprocessor
from lensengine.engine.sessions import get_session

log = logging.getLogger(__name__)

__all__ = ["ChunkTask", "score_chunk"]


@dataclass(frozen=True)
class ChunkTask:
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
    precision: str = "fp32"      # "fp32" (ONNX Runtime) or "bf16" (torch autocast on the .pt weights)

    @property
    def key(self) -> str:
        return f"{self.tile}/{self.index}"


@lru_cache(maxsize=4)
def _open_store(path: str):
    from lensengine.catalogs.store import SurveyStore

    return SurveyStore.open(path)


@lru_cache(maxsize=4)
def _ensemble(path: str | None, names: tuple[str, ...]):
    from lensengine.engine.ensemble import MeanEnsemble, TSNEEnsemble

    return MeanEnsemble() if path is None else TSNEEnsemble(path)


@lru_cache(maxsize=8)
def _preprocessor(models: tuple[ModelEntry, ...]) -> Preprocessor:
    return Preprocessor([m.as_spec() for m in models])


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


def _run_model(runner, x: np.ndarray, usable: np.ndarray) -> np.ndarray:
    out = np.full(len(x), np.nan, np.float32)
    if usable.any():
        out[usable] = runner(np.ascontiguousarray(x[usable]))
    return out


def _runner(model: ModelEntry, task: ChunkTask):
    """A callable x -> P(lens) for one model in the task's precision (cached per process)."""
    if task.precision == "bf16":
        from lensengine.engine.reduced import bf16_runner

        return bf16_runner(str(model.path), model.name, task.threads)
    sess = get_session(str(model.path), task.device, task.threads, model.name)
    return lambda x: sess.run(["p_lens"], {"cutout": x})[0]


def score_chunk(task: ChunkTask) -> dict[str, np.ndarray]:
    """Score every cutout of one chunk; returns the score-table rows as columns."""
    from lensengine.catalogs.store import ChunkReadError

    store = _open_store(task.store)
    n = task.stop - task.start
    names = tuple(m.name for m in task.models)
    base = {"TILE": np.full(n, task.tile, dtype=object), "CHUNK": np.full(n, task.index, np.int32),
            "ROW": np.arange(task.start, task.stop, dtype=np.int64)}
    try:
        batch = store.read_chunk(task.tile, task.index)
        if len(batch) != n:
            raise ChunkReadError(task.tile, task.index, f"read {len(batch)} cutouts, expected {n}")
    except ChunkReadError as exc:
        log.warning("unreadable chunk: %s", exc)
        rows = {**_index_rows(store, task), **base}
        for name in names:
            rows[score_column(name)] = np.full(n, np.nan, np.float32)
        rows["P_ENSEMBLE"] = np.full(n, np.nan, np.float32)
        rows["FLAGS"] = np.full(n, np.uint32(Flag.UNREADABLE), np.uint32)
        rows["ERROR"] = np.full(n, str(exc), dtype=object)
        return _finish(rows, store, task, truth=None)

    prep = _preprocessor(task.models)
    runners = {m.name: _runner(m, task) for m in task.models}
    probs = np.full((n, len(names)), np.nan, np.float32)
    flags = np.asarray(batch.flags, np.uint32).copy()
    all_bands = batch.bands()
    for lo in range(0, n, task.batch_size):
        hi = min(lo + task.batch_size, n)
        sub = {b: (None if a is None else a[lo:hi]) for b, a in all_bands.items()}
        prepared = prep(sub, hi - lo)
        flags[lo:hi] |= prepared.flags
        for j, m in enumerate(task.models):
            probs[lo:hi, j] = _run_model(runners[m.name], prepared.inputs[m.name], prepared.usable[m.name])
    # a band the store marked missing for a cutout arrives as NaN: report it as missing, not as bad pixels
    missing = (np.asarray(batch.flags) & np.uint32(Flag.MISSING_BAND)) != 0
    flags[missing] &= ~np.uint32(Flag.NONFINITE)

    ensemble = _ensemble(task.ensemble, names)
    score, extra, ens_flags = ensemble.score(probs)
    flags |= ens_flags
    rows = {"OBJECT_ID": np.asarray(batch.object_id, np.int64), **base,
            "RA": np.asarray(batch.ra, np.float64), "DEC": np.asarray(batch.dec, np.float64)}
    for j, name in enumerate(names):
        rows[score_column(name)] = probs[:, j]
    rows["P_ENSEMBLE"] = score
    rows.update(extra)
    rows["FLAGS"] = flags
    rows["ERROR"] = np.full(n, "", dtype=object)
    return _finish(rows, store, task, truth=batch.truth)


def _finish(rows: dict, store, task: ChunkTask, truth) -> dict[str, np.ndarray]:
    n = task.stop - task.start
    # a chunk holds few distinct flag values: describe each once, not once per cutout
    values, inverse = np.unique(rows["FLAGS"], return_inverse=True)
    rows["FLAG_TEXT"] = np.array([describe(v) for v in values], dtype=object)[inverse.ravel()]
    for name, dtype in store.truth_columns.items():
        col = f"TRUTH_{name.upper()}"
        if truth is not None and name in truth:
            rows[col] = np.asarray(truth[name])
        elif dtype == "str":
            rows[col] = np.full(n, "", dtype=object)
        else:  # unknown truth of an unreadable chunk: NaN for floats, -1 for integers
            kind = np.dtype(dtype).kind
            rows[col] = np.full(n, np.nan if kind == "f" else -1, dtype=np.dtype(dtype))
    from lensengine.plugins.manager import get_plugin_manager

    context = {"tile": task.tile, "chunk": task.index, "store": task.store}
    for extra in get_plugin_manager().hook.process_batch(batch=rows, context=context):
        for key, values in (extra or {}).items():
            values = np.asarray(values)
            if values.shape[:1] != (n,):
                raise ValueError(f"plugin column {key!r} has {values.shape[:1]} rows for a chunk of {n}")
            rows[key] = values
    return rows
