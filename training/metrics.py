"""Classification metrics for lens finders (SPEC §8): pure NumPy / scikit-learn.

Threshold 0.5 (P >= 0.5 -> lens) for precision, recall, accuracy, F1 and
F-beta (beta = 0.03 weights precision, the paper's choice); AUROC and ROC
curves over all thresholds; TPR0 and TPR10 from the Bologna lens-finding
challenge:

* TPR0: the fraction of lenses scored strictly above every non-lens, i.e. the
  recall at the highest threshold that lets no false positive through;
* TPR10: the recall at the threshold that lets fewer than 10 (at most 9) false
  positives through: lenses scored strictly above the 10th highest non-lens.

Ties are resolved against the finder (a lens tied with a non-lens does not
count).  With fewer non-lenses than allowed false positives every lens counts.
The engine may reuse these functions: nothing here imports torch.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "BETA",
    "THRESHOLD",
    "PAPER_TABLE5",
    "PAPER_TABLE6",
    "fbeta",
    "tpr_at_fp",
    "roc_curve",
    "auroc",
    "binary_metrics",
    "recall_by_bins",
    "recall_by_category",
]

#: The paper's F-beta weight (precision-heavy) and decision threshold.
BETA = 0.03
THRESHOLD = 0.5

#: Paper Table 5 (EVAL set, threshold 0.5), read as F_beta, precision, recall, AUROC, accuracy.
PAPER_TABLE5: dict[str, dict[str, float]] = {
    "OU-66": {"fbeta": 0.9727, "precision": 0.9758, "recall": 0.2180, "auroc": 0.617, "accuracy": 0.3308},
    "OU-200": {"fbeta": 0.9687, "precision": 0.9697, "recall": 0.4423, "auroc": 0.695, "accuracy": 0.5143},
    "OU-T-SNE": {"fbeta": 0.9423, "precision": 0.9431, "recall": 0.4846, "auroc": 0.666, "accuracy": 0.5371},
}

#: Paper Table 6: recall at 0.5 on (train, test, compound arcs, double rings).
PAPER_TABLE6: dict[str, dict[str, float]] = {
    name: dict(zip(("train", "test", "compound_arcs", "double_rings"), values))
    for name, values in {
        "OU-H": (0.4476, 0.4772, 0.0706, 0.0908),
        "OU-J": (0.3636, 0.3989, 0.5111, 0.5393),
        "OU-Y": (0.2585, 0.2752, 0.4083, 0.4667),
        "OU-JYH": (0.3170, 0.3555, 0.7771, 0.7461),
        "OU-VIS": (0.2597, 0.2495, 0.1684, 0.1618),
        "OU-66": (0.3807, 0.2180, 0.6291, 0.4742),
        "OU-200": (0.4004, 0.4423, 0.7505, 0.5567),
    }.items()
}


def _check(y_true, p) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true).astype(np.int64).ravel()
    s = np.asarray(p, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels have {y.size} entries but scores have {s.size}")
    if y.size and not np.isin(y, (0, 1)).all():
        raise ValueError(f"labels must be 0 (non-lens) or 1 (lens), found {sorted(set(np.unique(y)) - {0, 1})}")
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN or inf: drop the cutouts a model could not score first")
    return y, s


def _div(a: float, b: float) -> float:
    return float(a) / float(b) if b else float("nan")


def fbeta(precision: float, recall: float, beta: float = BETA) -> float:
    """F-beta from precision and recall: (1 + b^2) P R / (b^2 P + R); 0 when both are 0."""
    if math.isnan(precision) or math.isnan(recall):
        return float("nan")
    b2 = beta * beta
    den = b2 * precision + recall
    return (1 + b2) * precision * recall / den if den > 0 else 0.0


def tpr_at_fp(y_true, p, max_fp: int) -> float:
    """Recall at the highest-recall threshold that lets at most ``max_fp`` false positives through.

    ``tpr_at_fp(y, p, 0)`` is TPR0; ``tpr_at_fp(y, p, 9)`` is TPR10 (fewer than 10).
    """
    y, s = _check(y_true, p)
    lens, non = s[y == 1], np.sort(s[y == 0])[::-1]
    if lens.size == 0:
        return float("nan")
    if non.size <= max_fp:
        return 1.0
    cut = non[max_fp]  # the (max_fp + 1)-th highest non-lens score must stay below threshold
    return float(np.mean(lens > cut))


def roc_curve(y_true, p) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(false-positive rate, true-positive rate, thresholds), as scikit-learn."""
    from sklearn.metrics import roc_curve as _roc

    y, s = _check(y_true, p)
    return _roc(y, s)


def auroc(y_true, p) -> float:
    """Area under the ROC curve; NaN when only one class is present."""
    from sklearn.metrics import roc_auc_score

    y, s = _check(y_true, p)
    if np.unique(y).size < 2:
        return float("nan")
    return float(roc_auc_score(y, s))


def binary_metrics(y_true, p, threshold: float = THRESHOLD, beta: float = BETA) -> dict[str, float]:
    """Every SPEC §8 number for one model: n, n_lens, tp/fp/tn/fn, precision, recall, accuracy,
    f1, fbeta, auroc, tpr0, tpr10 (floats; NaN where undefined)."""
    y, s = _check(y_true, p)
    pred = s >= threshold
    tp = int(np.sum(pred & (y == 1)))
    fp = int(np.sum(pred & (y == 0)))
    tn = int(np.sum(~pred & (y == 0)))
    fn = int(np.sum(~pred & (y == 1)))
    precision = _div(tp, tp + fp)
    recall = _div(tp, tp + fn)
    return {
        "n": int(y.size),
        "n_lens": int(np.sum(y == 1)),
        "tp": tp, "fp": fp, "tn": tn, "fn": fn,
        "precision": precision,
        "recall": recall,
        "accuracy": _div(tp + tn, y.size),
        "f1": fbeta(precision, recall, 1.0),
        "fbeta": fbeta(precision, recall, beta),
        "auroc": auroc(y, s),
        "tpr0": tpr_at_fp(y, s, 0),
        "tpr10": tpr_at_fp(y, s, 9),
        "threshold": float(threshold),
        "beta": float(beta),
    }


def recall_by_bins(y_true, p, values, edges, threshold: float = THRESHOLD) -> list[dict]:
    """Recall of the lenses in each bin ``[edges[i], edges[i+1])`` of a truth column.

    Returns one dict per bin: ``lo``, ``hi``, ``n`` (lenses in the bin), ``recall`` (NaN if empty).
    Lenses whose value is NaN are left out.
    """
    y, s = _check(y_true, p)
    v = np.asarray(values, dtype=np.float64).ravel()
    lens = (y == 1) & np.isfinite(v)
    out = []
    edges = np.asarray(edges, dtype=np.float64)
    for i, (lo, hi) in enumerate(zip(edges[:-1], edges[1:])):
        last = i == len(edges) - 2
        inbin = lens & (v >= lo) & ((v <= hi) if last else (v < hi))
        n = int(inbin.sum())
        out.append({"lo": float(lo), "hi": float(hi), "n": n,
                    "recall": float(np.mean(s[inbin] >= threshold)) if n else float("nan")})
    return out


def recall_by_category(y_true, p, categories, threshold: float = THRESHOLD) -> list[dict]:
    """Recall of the lenses per value of a categorical truth column (e.g. source colour)."""
    y, s = _check(y_true, p)
    c = np.asarray(categories).ravel()
    out = []
    lens = y == 1
    for value in sorted({str(v) for v in c[lens]}):
        sel = lens & (c.astype(str) == value)
        out.append({"value": value, "n": int(sel.sum()), "recall": float(np.mean(s[sel] >= threshold))})
    return out
