"""The ensemble score that ranks candidates.

Three ensembles combine the seven CNNs:

* **OU-T-SNE** (SPEC §7, :mod:`lensengine.engine.ou_tsne`) when a fitted file
  is given (``--ensemble ou_tsne.npz``) or lies next to the ONNX models;
* the **stack** (:mod:`lensengine.engine.stack`), a logistic regression on the
  networks' log-odds fitted on validation scores, when a fitted file is given
  (``--ensemble ou_stack.json``) or lies next to the models (the shipped
  default, ``models/ou_stack.json``);
* otherwise, or with ``--ensemble mean``, the **mean** P(lens) of the models
  that could score the cutout: what the paper compares OU-T-SNE against; it
  needs no fitting and degrades gracefully when a band is bad for some models.

OU-T-SNE and the stack need all seven scores of a row; a row that lacks one
gets the mean of those it has, flagged ``PARTIAL_SCORES``.

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

__all__ = ["Column", "MeanEnsemble", "TSNEEnsemble", "StackEnsemble", "ensemble_class", "ensemble_from_path",
           "load_ensemble", "ENSEMBLE_FILE", "MEAN"]

ENSEMBLE_FILE = "ou_tsne.npz"
#: ``--ensemble mean``: the mean even where a fitted ensemble lies beside the models
MEAN = "mean"


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


class StackEnsemble:
    """The stacked ensemble (:mod:`lensengine.engine.stack`) on the seven P(lens); the mean stand-in where a model
    could not score."""

    name = "stack"
    columns: tuple[Column, ...] = ()

    def __init__(self, path: str | Path):
        from lensengine.engine.stack import Stack

        self.path = Path(path)
        self.model = Stack.load(self.path)
        if self.model.models != MODEL_NAMES:
            raise ValueError(f"{self.path} was fitted for models {list(self.model.models)}, not the seven "
                             f"{list(MODEL_NAMES)}")
        self._mean = MeanEnsemble()

    def score(self, probs: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
        mean, _, flags = self._mean.score(probs)
        complete = np.isfinite(probs).all(axis=1)
        score = mean.astype(np.float64)
        if complete.any():
            score[complete] = self.model.predict(probs[complete])
        return score.astype(np.float32), {}, flags


def _is_stack(path: str | Path) -> bool:
    return Path(path).suffix.lower() == ".json"


def ensemble_class(path: str | Path | None):
    """The class of the ensemble a run uses: OU-T-SNE for an ``.npz``, the stack for a ``.json``, the mean for None."""
    if path is None:
        return MeanEnsemble
    return StackEnsemble if _is_stack(path) else TSNEEnsemble


def ensemble_from_path(path: str | Path | None):
    """The ensemble of a fitted file's path (as :func:`ensemble_class`), the mean for None."""
    return MeanEnsemble() if path is None else ensemble_class(path)(path)


def load_ensemble(model_names: list[str], models_dir: Path | None, path: str | Path | None = None):
    """The run's ensemble: ``path`` (a fitted OU-T-SNE ``.npz`` or stack ``.json``; ``"mean"`` for the mean), else
    a fitted file beside the models (``ou_tsne.npz``, then ``ou_stack.json``) when all seven run, else the mean."""
    from lensengine.engine.stack import STACK_FILE

    if path is not None and str(path) == MEAN:
        return MeanEnsemble()
    if path is None and models_dir is not None:
        path = next((Path(models_dir) / f for f in (ENSEMBLE_FILE, STACK_FILE) if (Path(models_dir) / f).is_file()),
                    None)
    if path is None:
        return MeanEnsemble()
    cls = ensemble_class(path)
    if tuple(model_names) != MODEL_NAMES:
        log.warning("%s needs the seven models %s in order; this run has %s: using the mean", cls.name,
                    list(MODEL_NAMES), model_names)
        return MeanEnsemble()
    return cls(path)
