"""Scoring survey stores for the recall test: every model's P(lens), OU-T-SNE, truth columns.

ONNX Runtime sessions on :class:`~lensengine.engine.preprocess.Preprocessor`
outputs, chunk by chunk (the store's chunks), so a 10 000-cutout set never sits
in memory as network inputs.  A cutout a model cannot score (bad band) gets NaN
for that model.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lensengine.engine.preprocess import Preprocessor
from lensengine.engine.specs import MODEL_NAMES

log = logging.getLogger(__name__)

__all__ = ["TSNE_NAME", "ScoredSet", "score_store", "load_tsne"]

TSNE_NAME = "OU-T-SNE"


@dataclass
class ScoredSet:
    """P(lens) per model (NaN where a model could not score) and the truth columns of one store."""

    name: str
    object_id: np.ndarray
    scores: dict[str, np.ndarray]
    truth: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.object_id)

    @property
    def lenses(self) -> np.ndarray:
        """Mask of the true lenses (``label`` == 1; every row when the store has no labels)."""
        if "label" in self.truth:
            return np.asarray(self.truth["label"]).astype(int) == 1
        return np.ones(len(self), dtype=bool)


def load_tsne(path):
    """A fitted OU-T-SNE, or None when ``path`` is None or the ensemble code is unavailable."""
    if path is None:
        return None
    try:
        from lensengine.engine.ou_tsne import OUTSNE
    except ImportError as exc:  # pragma: no cover - part of the engine
        log.warning("OU-T-SNE unavailable (%s); scoring the CNNs only", exc)
        return None
    return OUTSNE.load(path)


def _run(session, x: np.ndarray, usable: np.ndarray, batch_size: int) -> np.ndarray:
    out = np.full(len(x), np.nan, dtype=np.float32)
    rows = np.flatnonzero(usable)
    name = session.get_inputs()[0].name
    for k in range(0, len(rows), batch_size):
        sel = rows[k:k + batch_size]
        out[sel] = session.run(None, {name: np.ascontiguousarray(x[sel])})[0].reshape(-1)
    return out


def score_store(store_path, entries, *, name: str = "", tsne=None, batch_size: int = 32, device: str = "auto",
                limit: int | None = None, progress=None) -> ScoredSet:
    """Score every committed cutout of a store with ``entries`` (ModelEntry) and, if given, OU-T-SNE.

    ``progress`` is an optional callable taking the number of cutouts just scored.
    OU-T-SNE needs all seven models; cutouts missing one of them get NaN.
    """
    from lensengine.catalogs.store import SurveyStore
    from lensengine.engine.sessions import get_session

    store = SurveyStore.open(store_path)
    pre = Preprocessor([e.as_spec() for e in entries])
    sessions = {e.name: get_session(str(e.path), device=device, model_name=e.name) for e in entries}
    ids, truth, scores = [], {}, {e.name: [] for e in entries}
    seen = 0
    for tile in store.tiles:
        for index in range(len(store.chunk_slices(tile))):
            batch = store.read_chunk(tile, index)
            if limit is not None and seen + len(batch) > limit:
                keep = slice(0, limit - seen)
                batch = type(batch)(object_id=batch.object_id[keep], ra=batch.ra[keep], dec=batch.dec[keep],
                                    vis=None if batch.vis is None else batch.vis[keep],
                                    nisp=None if batch.nisp is None else batch.nisp[keep],
                                    flags=batch.flags[keep], truth={k: v[keep] for k, v in batch.truth.items()},
                                    held=getattr(batch, "held", None))
            prepared = pre(batch.bands(), len(batch))
            for e in entries:
                scores[e.name].append(_run(sessions[e.name], prepared.inputs[e.name], prepared.usable[e.name],
                                           batch_size))
            ids.append(np.asarray(batch.object_id))
            for k, v in batch.truth.items():
                truth.setdefault(k, []).append(np.asarray(v))
            seen += len(batch)
            if progress is not None:
                progress(len(batch))
            if limit is not None and seen >= limit:
                break
        if limit is not None and seen >= limit:
            break
    out = {k: np.concatenate(v) if v else np.zeros(0, np.float32) for k, v in scores.items()}
    if tsne is not None:
        names = [e.name for e in entries]
        if all(m in names for m in MODEL_NAMES):
            P = np.column_stack([out[m] for m in MODEL_NAMES]).astype(np.float64)
            complete = np.isfinite(P).all(axis=1)
            t = np.full(len(P), np.nan, dtype=np.float32)
            if complete.any():
                t[complete] = tsne.score_lens(P[complete])
            out[TSNE_NAME] = t
        else:
            log.warning("OU-T-SNE needs all seven models; only %s were scored", names)
    return ScoredSet(name=name or Path(store_path).stem, object_id=np.concatenate(ids) if ids else np.zeros(0, np.int64),
                     scores=out, truth={k: np.concatenate(v) for k, v in truth.items()})
