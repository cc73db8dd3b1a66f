"""The ensemble score that ranks candidates.

OU-T-SNE (SPEC §7, :mod:`lensengine.engine.ou_tsne`) combines the seven CNNs
when a fitted model is available (``ou_tsne.npz`` next to the ONNX models, or
``--ensemble PATH``) and the run scores all seven.  Otherwise the documented
stand-in is the mean P(lens) of the models that could score the cutout: it is
what the paper compares OU-T-SNE against, needs no fitting, and degrades
gracefully when a band is bad for some models.

Each ensemble declares the extra columns it adds to every row (name and dtype)
in ``columns``, so the score table's schema is known before any chunk is
scored and an unreadable chunk's rows carry exactly the columns a scored
chunk's rows do.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import NamedTuple

import numpy as np

from lensengine.catalogs.flags import Flag
from lensengine.engine.specs import MODEL_NAMES

log = logging.getLogger(__name__)

__all__ = ["Column", "MeanEnsemble", "TSNEEnsemble", "ensemble_class", "load_ensemble", "ENSEMBLE_FILE"]

ENSEMBLE_FILE = "ou_tsne.npz"


class Column(NamedTuple):
    """An extra column an ensemble adds: its name and NumPy dtype.

    A row the ensemble cannot place (an unreadable chunk, a model that could
    not score) holds NaN in a float column and -1 in an integer one.
    """

    name: str
    dtype: str


class MeanEnsemble:
    """Mean P(lens) over the models that scored a cutout (NaN where none could)."""

    name = "mean"
    columns: tuple[Column, ...] = ()

    def score(self, probs: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
        valid = np.isfinite(probs)
        count = valid.sum(axis=1)
        total = np.where(valid, probs, 0.0).sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(count > 0, total / np.maximum(count, 1), np.nan)
        flags = np.where((count > 0) & (count < probs.shape[1]), np.uint32(Flag.PARTIAL_SCORES), np.uint32(0))
        return mean.astype(np.float32), {}, flags.astype(np.uint32)


class TSNEEnsemble:
    """OU-T-SNE on the seven P(lens); the mean stand-in where a model could not score."""

    name = "OU-T-SNE"
    columns = (Column("P_OU_TSNE", "float32"), Column("TSNE_CELL", "int32"), Column("TSNE_X", "float32"),
               Column("TSNE_Y", "float32"))

    def __init__(self, path: str | Path):
        from lensengine.engine.ou_tsne import OUTSNE

        self.path = Path(path)
        self.model = OUTSNE.load(self.path)
        self._mean = MeanEnsemble()

    def score(self, probs: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
        mean, _, flags = self._mean.score(probs)
        where = self.model.locate(probs, missing="nan")
        complete = np.isfinite(where.scores)
        flags = flags | np.where(where.outside, np.uint32(Flag.OUTSIDE_TSNE_GRID), np.uint32(0))
        cell = np.where(complete, where.cells[:, 0] * self.model.grid_size + where.cells[:, 1], -1)
        score = np.where(complete, where.scores, mean).astype(np.float32)
        extra = {"P_OU_TSNE": where.scores.astype(np.float32), "TSNE_CELL": cell.astype(np.int32),
                 "TSNE_X": where.coords[:, 0].astype(np.float32), "TSNE_Y": where.coords[:, 1].astype(np.float32)}
        return score, extra, flags.astype(np.uint32)


def ensemble_class(path: str | Path | None):
    """The class of the ensemble a run uses: OU-T-SNE for a fitted file's path, the mean for None."""
    return MeanEnsemble if path is None else TSNEEnsemble


def load_ensemble(model_names: list[str], models_dir: Path | None, path: str | Path | None = None):
    """OU-T-SNE when a fitted model is given or found beside the models and all seven run; else the mean."""
    if path is None and models_dir is not None and (Path(models_dir) / ENSEMBLE_FILE).is_file():
        path = Path(models_dir) / ENSEMBLE_FILE
    if path is None:
        return MeanEnsemble()
    if tuple(model_names) != MODEL_NAMES:
        log.warning("OU-T-SNE needs the seven models %s in order; this run has %s: using the mean",
                    list(MODEL_NAMES), model_names)
        return MeanEnsemble()
    return TSNEEnsemble(path)
