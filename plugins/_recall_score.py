"""Scoring survey stores for the recall test: every model's P(lens), the ensemble, truth columns.

The stores go through the engine's scoring core
(:func:`lensengine.engine.scoring.score_store`), the code ``lensengine run``
scores with, so the recall test reports a run's numbers: the same
preprocessing, batching, output checks and ensemble.  A cutout a model cannot
score (bad band, unreadable chunk, an output that is not a probability) has
NaN for that model and counts as missed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

__all__ = ["TSNE_NAME", "ScoredSet", "score_store"]

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


def score_store(store_path, entries, *, name: str = "", ensemble: str | None = None, batch_size: int = 32,
                device: str = "auto", progress=None) -> ScoredSet:
    """Score every committed cutout of a store with ``entries`` (ModelEntry) and the run's ensemble.

    ``ensemble`` is the path of a fitted OU-T-SNE (its ``P_ENSEMBLE`` becomes
    the ``OU-T-SNE`` column) or None (no ensemble column).  ``progress`` is an
    optional callable taking the number of cutouts just scored; it is called
    once per sub-batch of ``batch_size`` cutouts, so a bar moves within a chunk.
    """
    from lensengine.catalogs.catalog import ENSEMBLE_COLUMN, score_column
    from lensengine.catalogs.store import SurveyStore
    from lensengine.engine.scoring import score_store as score_chunks

    truth_names = list(SurveyStore.open(store_path).truth_columns)
    wanted = {e.name: score_column(e.name) for e in entries}
    if ensemble is not None:
        wanted[TSNE_NAME] = ENSEMBLE_COLUMN
    ids, truth, scores = [], {t: [] for t in truth_names}, {k: [] for k in wanted}
    for rows in score_chunks(store_path, entries, ensemble, device=device, batch_size=batch_size,
                             rows_per_task=batch_size if progress is not None else None):
        ids.append(rows["OBJECT_ID"])
        for key, column in wanted.items():
            scores[key].append(rows[column])
        for t in truth_names:
            truth[t].append(rows[f"TRUTH_{t.upper()}"])
        if progress is not None:
            progress(len(rows["OBJECT_ID"]))
    cat = (lambda parts, dtype: np.concatenate(parts) if parts else np.zeros(0, dtype))
    return ScoredSet(name=name or Path(store_path).stem, object_id=cat(ids, np.int64),
                     scores={k: cat(v, np.float32) for k, v in scores.items()},
                     truth={k: cat(v, object) for k, v in truth.items()})
