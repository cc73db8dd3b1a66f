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

Operating points (:func:`operating_point`, :func:`operating_metrics`): a survey
holds about one lens per 10³–10⁴ galaxies, so what matters is the recall at a
false-positive rate of 10⁻²–10⁻⁴ on a realistic population of non-lenses.

* Threshold rule: a cutout is flagged when its score is strictly above the
  threshold ``t``.  For a target FPR ``f`` and ``N`` negatives the number of
  false positives allowed is ``k = floor(f N)``, and ``t`` is the (k+1)-th
  highest negative score; so at most ``k`` negatives lie above it (fewer when
  negatives tie with the (k+1)-th, which then all stay below).  Ties are
  thereby resolved against the finder, as for TPR0/TPR10: a lens tied with
  ``t`` is not counted.  TPR is the fraction of lenses strictly above ``t``;
  the measured FPR (≤ ``f``) is reported beside it.
* Enough negatives: a figure at FPR ``f`` is given only when ``k >= 10``
  (``N >= 10 / f``: at least ten false positives at the threshold), else it is
  None with a reason: below that the threshold sits on one or two negatives
  and the figure says more about them than about the population.
* Purity at prevalence π: ``TPR π / (TPR π + FPR (1 − π))`` with the TPR and the
  measured FPR at one operating threshold (default the FPR 0.1 % one).
* Bootstrap confidence intervals: lenses and negatives are resampled
  separately, with replacement, from a generator with a fixed seed; each
  replicate re-derives the threshold from its own negatives; the interval at
  level ``L`` holds the central ``L`` of the replicates (percentile method).
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
    "OPERATING_FPRS",
    "MIN_FALSE_POSITIVES",
    "DEFAULT_PREVALENCE",
    "CI_LEVELS",
    "purity_key",
    "threshold_at_fpr",
    "operating_point",
    "purity",
    "operating_metrics",
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


#: Operating points reported by ``lensengine evaluate``: JSON key -> target false-positive rate.
OPERATING_FPRS: dict[str, float] = {"tpr_fpr1": 1e-2, "tpr_fpr01": 1e-3, "tpr_fpr001": 1e-4}
#: A TPR at FPR f is given only with at least this many false positives allowed (N >= 10 / f).
MIN_FALSE_POSITIVES = 10
#: One lens per 1 000 galaxies (the purity figure ``purity_1e3``).
DEFAULT_PREVALENCE = 1e-3
#: Confidence levels of the bootstrap intervals.
CI_LEVELS = (0.68, 0.95)


def purity_key(prevalence: float) -> str:
    """``purity_1e3`` for 1e-3, ``purity_1e4`` for 1e-4; ``purity_0.002`` when not a power of ten."""
    k = -math.log10(prevalence)
    return f"purity_1e{round(k)}" if abs(k - round(k)) < 1e-9 else f"purity_{prevalence:g}"


def _allowed_fp(fpr: float, n_neg: int) -> int:
    # 1e-9 guards floor(0.001 * 10000) against 9.999999999 in floating point
    return int(math.floor(fpr * n_neg + 1e-9))


def threshold_at_fpr(neg_scores, fpr: float) -> tuple[float, int]:
    """(threshold, allowed false positives k) for target ``fpr`` (module docstring: strictly above).

    The threshold is the (k+1)-th highest negative score with ``k = floor(fpr N)``.
    """
    neg = np.asarray(neg_scores, dtype=np.float64).ravel()
    if not 0 < fpr < 1:
        raise ValueError(f"target false-positive rate must be in (0, 1), got {fpr}")
    if neg.size == 0:
        raise ValueError("no negatives: a false-positive rate needs non-lenses")
    k = _allowed_fp(fpr, neg.size)
    # (k+1)-th highest = element N-1-k of the ascending order
    return float(np.partition(neg, neg.size - 1 - k)[neg.size - 1 - k]), k


def purity(tpr: float, fpr: float, prevalence: float) -> float:
    """Fraction of flagged objects that are lenses at prevalence π: TPR π / (TPR π + FPR (1 − π))."""
    if not 0 < prevalence < 1:
        raise ValueError(f"prevalence must be in (0, 1), got {prevalence}")
    num = tpr * prevalence
    den = num + fpr * (1.0 - prevalence)
    return float(num / den) if den > 0 else float("nan")


def _scores(name: str, values) -> np.ndarray:
    s = np.asarray(values, dtype=np.float64).ravel()
    if not np.isfinite(s).all():
        raise ValueError(f"{name} scores contain NaN or inf: drop the cutouts a model could not score first")
    return s


def operating_point(lens_scores, neg_scores, fpr: float, *,
                    min_false_positives: int = MIN_FALSE_POSITIVES) -> dict:
    """TPR at target ``fpr``: ``{fpr_target, threshold, tpr, fpr, n_fp, k, n_lens, n_neg, reason}``.

    ``tpr`` (and ``threshold``) are None with a ``reason`` when there are no
    lenses or too few negatives (fewer than ``min_false_positives / fpr``).
    """
    lens, neg = _scores("lens", lens_scores), _scores("negative", neg_scores)
    out = {"fpr_target": float(fpr), "threshold": None, "tpr": None, "fpr": None, "n_fp": None, "k": None,
           "n_lens": int(lens.size), "n_neg": int(neg.size), "reason": None}
    need = math.ceil(min_false_positives / fpr - 1e-9)
    if neg.size < need:
        out["reason"] = (f"{neg.size} negatives: FPR {fpr:g} needs at least {need} "
                         f"({min_false_positives} false positives at the threshold)")
        return out
    if lens.size == 0:
        out["reason"] = "no lenses"
        return out
    t, k = threshold_at_fpr(neg, fpr)
    n_fp = int(np.sum(neg > t))
    out.update(threshold=t, k=k, n_fp=n_fp, fpr=n_fp / neg.size, tpr=float(np.mean(lens > t)))
    return out


def _point_values(lens_sorted: np.ndarray, neg: np.ndarray, fprs: dict[str, float], purity_at: str,
                  prevalence: float) -> dict[str, float]:
    """TPRs at each target and the purity for one (re)sample; lens scores sorted ascending."""
    out = {}
    for key, f in fprs.items():
        t, _ = threshold_at_fpr(neg, f)
        tpr = 1.0 - np.searchsorted(lens_sorted, t, side="right") / lens_sorted.size
        out[key] = float(tpr)
        if key == purity_at:
            out["purity"] = purity(tpr, float(np.sum(neg > t)) / neg.size, prevalence)
    return out


def operating_metrics(lens_scores, neg_scores, *, prevalence: float = DEFAULT_PREVALENCE,
                      purity_fpr: float = 1e-3, fprs: dict[str, float] | None = None,
                      bootstrap: int = 1000, levels=CI_LEVELS, seed: int = 0,
                      min_false_positives: int = MIN_FALSE_POSITIVES) -> dict:
    """Operating-point figures of one model on one negative set, with bootstrap intervals.

    Returns ``{n_lens, n_neg, auroc, prevalence, purity_fpr, <tpr keys>, <purity key>,
    points: {key: operating_point(...)}, ci: {key: {"68": [lo, hi], "95": [lo, hi]}},
    reasons: {key: why it is None}, bootstrap: {n, seed, levels}}``; figures that
    the negatives cannot support are None (with their reason) and have no interval.
    """
    fprs = dict(OPERATING_FPRS if fprs is None else fprs)
    lens, neg = _scores("lens", lens_scores), _scores("negative", neg_scores)
    pkey = purity_key(prevalence)
    purity_at = next((k for k, f in fprs.items() if abs(f - purity_fpr) < 1e-15), None)
    if purity_at is None:
        fprs[f"tpr_fpr_{purity_fpr:g}"] = purity_fpr
        purity_at = f"tpr_fpr_{purity_fpr:g}"
    points = {key: operating_point(lens, neg, f, min_false_positives=min_false_positives)
              for key, f in fprs.items()}
    both = lens.size and neg.size
    y = np.r_[np.ones(lens.size), np.zeros(neg.size)]
    out = {"n_lens": int(lens.size), "n_neg": int(neg.size),
           "auroc": auroc(y, np.r_[lens, neg]) if both else float("nan"),
           "prevalence": float(prevalence), "purity_fpr": float(purity_fpr)}
    reasons = {}
    for key, pt in points.items():
        out[key] = pt["tpr"]
        if pt["reason"]:
            reasons[key] = pt["reason"]
    at = points[purity_at]
    out[pkey] = None if at["tpr"] is None else purity(at["tpr"], at["fpr"], prevalence)
    if at["tpr"] is None:
        reasons[pkey] = f"no operating threshold at FPR {purity_fpr:g}: {at['reason']}"
    ci: dict[str, dict[str, list[float]]] = {}
    valid = {k: f for k, f in fprs.items() if points[k]["tpr"] is not None}
    if bootstrap > 0 and valid:
        rng = np.random.default_rng(seed)
        reps = {k: np.full(bootstrap, np.nan) for k in valid}
        if purity_at in valid:
            reps["purity"] = np.full(bootstrap, np.nan)
        for b in range(bootstrap):
            lb = np.sort(lens[rng.integers(0, lens.size, lens.size)])
            nb = neg[rng.integers(0, neg.size, neg.size)]
            vals = _point_values(lb, nb, valid, purity_at, prevalence)
            for k, v in vals.items():
                reps[k][b] = v
        for k, r in reps.items():
            name = pkey if k == "purity" else k
            r = r[np.isfinite(r)]
            if r.size:
                ci[name] = {f"{round(100 * lv)}": [float(np.quantile(r, (1 - lv) / 2)),
                                                   float(np.quantile(r, (1 + lv) / 2))] for lv in levels}
    out.update(points=points, ci=ci, reasons=reasons,
               bootstrap={"n": int(bootstrap), "seed": int(seed), "levels": [float(lv) for lv in levels]})
    return out
