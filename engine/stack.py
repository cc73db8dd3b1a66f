"""The stacked ensemble: a logistic regression on the seven networks' log-odds, fitted on labelled validation scores.

The mean of the seven P(lens) weighs every network alike, yet on the realistic simulations the networks are
far from alike (sky AUROC 0.58 to 0.72, docs/ou-tsne.md "The stacked ensemble"): the mean lets the weak ones
pull good candidates down.  The stack learns one weight per network on a *validation* score table (never the
sets it is judged on):

    z = b + sum_i w_i * logit(clip(P_i)),     P_ENSEMBLE = 1 / (1 + exp(-z))

``clip`` keeps each P in [1e-6, 1 - 1e-6] so a saturated network adds a bounded log-odds.  The fit is
scikit-learn's L2-regularised logistic regression (C = 1 by default) on the rows whose seven scores are all
finite; ``lensengine stack fit`` pools several tables and weighs the two classes equally (``balance``), so a
lens-rich validation set and a large set of realistic negatives count alike.  P_ENSEMBLE is then a probability
at a 1:1 prior (at the table's lens fraction without ``balance``): candidates are still chosen by thresholds set
on negatives (the sky check's FPR 1 % / 0.1 %), which do not depend on that prior.

The fitted file (``ou_stack.json`` beside the models makes it the default ensemble) records the models it was
fitted for (names, and SHA-256 when the fit was given the model directory), the validation table, its size and
the regularisation; :meth:`Stack.load` refuses a file that is not one.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

__all__ = ["STACK_FILE", "CLIP", "Stack", "logit"]

STACK_FILE = "ou_stack.json"
KIND = "lensengine logistic stack"
CLIP = 1e-6


def logit(p: np.ndarray) -> np.ndarray:
    """log(p / (1 - p)) of P clipped to [CLIP, 1 - CLIP] (float64)."""
    p = np.clip(np.asarray(p, np.float64), CLIP, 1.0 - CLIP)
    return np.log(p) - np.log1p(-p)


@dataclass
class Stack:
    """Weights of the stacked ensemble: one per model (in ``models`` order) and an intercept."""

    models: tuple[str, ...]
    coef: np.ndarray
    intercept: float
    meta: dict = field(default_factory=dict)

    def decision(self, probs: np.ndarray) -> np.ndarray:
        """The log-odds z of each row of ``probs`` (n, len(models)); NaN where a score is missing."""
        probs = np.asarray(probs, np.float64)
        if probs.ndim != 2 or probs.shape[1] != len(self.models):
            raise ValueError(f"the stack takes {len(self.models)} scores per row ({', '.join(self.models)}), "
                             f"got an array of shape {probs.shape}")
        return self.intercept + logit(probs) @ self.coef

    def predict(self, probs: np.ndarray) -> np.ndarray:
        """P_ENSEMBLE: the logistic function of :meth:`decision`."""
        z = self.decision(probs)
        with np.errstate(over="ignore"):
            return 1.0 / (1.0 + np.exp(-z))

    @classmethod
    def fit(cls, probs: np.ndarray, labels: np.ndarray, models: tuple[str, ...], *, C: float = 1.0,
            balance: bool = False, meta: dict | None = None) -> "Stack":
        """Fit on rows of finite scores with labels 0/1 (both classes needed).

        ``balance`` weighs each class by the inverse of its count, so the weights do not depend on how many
        lenses the table holds (a lens-rich validation set pooled with a large set of realistic negatives);
        the intercept is then that of a 1:1 prior.
        """
        from sklearn.linear_model import LogisticRegression

        probs = np.asarray(probs, np.float64)
        y = np.asarray(labels).astype(int)
        if probs.ndim != 2 or probs.shape[1] != len(models) or len(y) != len(probs):
            raise ValueError(f"need an (n, {len(models)}) score matrix and n labels; got {probs.shape} and {len(y)}")
        if not np.isfinite(probs).all():
            raise ValueError("the stack is fitted on rows whose scores are all finite")
        if set(np.unique(y)) != {0, 1}:
            raise ValueError(f"labels must hold both 0 (non-lens) and 1 (lens); found {np.unique(y).tolist()}")
        lr = LogisticRegression(C=C, max_iter=5000, class_weight="balanced" if balance else None).fit(logit(probs), y)
        info = {"n_fit": int(len(y)), "n_lenses": int(y.sum()), "C": float(C), "balanced": bool(balance),
                **(meta or {})}
        return cls(tuple(models), lr.coef_[0].astype(np.float64), float(lr.intercept_[0]), info)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        doc = {"kind": KIND, "models": list(self.models), "coef": [float(c) for c in self.coef],
               "intercept": float(self.intercept), "clip": CLIP, **self.meta}
        path.write_text(json.dumps(doc, indent=1) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Stack":
        path = Path(path)
        try:
            doc = json.loads(path.read_text())
            models, coef, intercept = tuple(doc["models"]), np.asarray(doc["coef"], np.float64), float(doc["intercept"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path} is not a stacked-ensemble file ({type(exc).__name__}: {exc})") from None
        if doc.get("kind") != KIND or coef.shape != (len(models),) or not np.isfinite(coef).all() \
                or doc.get("clip", CLIP) != CLIP:
            raise ValueError(f"{path} is not a stacked-ensemble file of this version (kind {doc.get('kind')!r}, "
                             f"{len(models)} models, {coef.size} weights, clip {doc.get('clip')})")
        meta = {k: v for k, v in doc.items() if k not in ("kind", "models", "coef", "intercept", "clip")}
        return cls(models, coef, intercept, meta)
