"""Metric functions against hand-computed values and scikit-learn."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lensengine.training.metrics import (auroc, binary_metrics, fbeta, recall_by_bins, recall_by_category,
                                         tpr_at_fp)


def test_tpr0_tpr10_on_a_known_case():
    # 4 lenses, 12 non-lenses; non-lens scores 0.95, 0.90, then ten at 0.1..0.19
    y = np.array([1, 1, 1, 1] + [0] * 12)
    p = np.array([0.99, 0.97, 0.92, 0.5, 0.95, 0.90] + [0.10 + 0.01 * i for i in range(10)])
    # TPR0: lenses above the best non-lens (0.95): 0.99, 0.97 -> 2/4
    assert tpr_at_fp(y, p, 0) == pytest.approx(0.5)
    # at most 1 FP: above 0.90 -> 3/4
    assert tpr_at_fp(y, p, 1) == pytest.approx(0.75)
    # TPR10 (< 10 FP, i.e. <= 9): above the 10th highest non-lens (0.11) -> all 4
    assert tpr_at_fp(y, p, 9) == pytest.approx(1.0)
    m = binary_metrics(y, p)
    assert m["tpr0"] == pytest.approx(0.5) and m["tpr10"] == pytest.approx(1.0)


def test_tpr_ties_count_against_the_finder_and_few_negatives():
    y = np.array([1, 1, 0])
    p = np.array([0.8, 0.6, 0.8])
    assert tpr_at_fp(y, p, 0) == pytest.approx(0.0)  # tie with the non-lens: not counted
    assert tpr_at_fp(y, p, 9) == pytest.approx(1.0)  # fewer than 10 non-lenses: every lens counts
    assert math.isnan(tpr_at_fp(np.array([0, 0]), np.array([0.1, 0.2]), 0))


def test_threshold_metrics_by_hand_and_against_sklearn():
    from sklearn.metrics import accuracy_score, f1_score, fbeta_score, precision_score, recall_score, roc_auc_score

    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 200)
    p = np.clip(0.35 * y + rng.uniform(0, 0.65, 200), 0, 1)
    pred = (p >= 0.5).astype(int)
    m = binary_metrics(y, p)
    assert m["precision"] == pytest.approx(precision_score(y, pred))
    assert m["recall"] == pytest.approx(recall_score(y, pred))
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert m["f1"] == pytest.approx(f1_score(y, pred))
    assert m["fbeta"] == pytest.approx(fbeta_score(y, pred, beta=0.03))
    assert m["auroc"] == pytest.approx(roc_auc_score(y, p))
    assert m["tp"] + m["fp"] + m["tn"] + m["fn"] == m["n"] == 200

    # a tiny case by hand: tp=2, fp=1, fn=1, tn=1
    y = np.array([1, 1, 1, 0, 0])
    p = np.array([0.9, 0.5, 0.2, 0.7, 0.1])
    m = binary_metrics(y, p)
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (2, 1, 1, 1)
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 3)
    b2 = 0.03 ** 2
    assert m["fbeta"] == pytest.approx((1 + b2) * (4 / 9) / (b2 * 2 / 3 + 2 / 3))
    assert fbeta(0.0, 0.0) == 0.0


def test_degenerate_inputs():
    m = binary_metrics(np.array([1, 1]), np.array([0.2, 0.3]))
    assert math.isnan(m["precision"]) and m["recall"] == 0.0 and math.isnan(m["auroc"])
    assert math.isnan(auroc(np.array([0, 0]), np.array([0.1, 0.2])))
    with pytest.raises(ValueError, match="NaN"):
        binary_metrics(np.array([1, 0]), np.array([np.nan, 0.2]))
    with pytest.raises(ValueError, match="labels"):
        binary_metrics(np.array([2, 0]), np.array([0.1, 0.2]))


def test_recall_splits():
    y = np.array([1, 1, 1, 1, 0])
    p = np.array([0.9, 0.1, 0.8, 0.7, 0.9])
    theta = np.array([0.3, 0.7, 1.2, np.nan, 2.0])
    bins = recall_by_bins(y, p, theta, [0, 0.5, 1.0, 2.0])
    assert [b["n"] for b in bins] == [1, 1, 1]
    assert [b["recall"] for b in bins] == [1.0, 0.0, 1.0]
    cats = recall_by_category(y, p, np.array(["blue", "red", "red", "blue", "red"]))
    assert cats == [{"value": "blue", "n": 2, "recall": 1.0}, {"value": "red", "n": 2, "recall": 0.5}]


# ----------------------------------------------------------------------------- operating points


def _ladder(n=1000):
    return np.arange(n) / n  # negatives 0.000, 0.001, ..., 0.999


def test_operating_point_by_hand():
    from lensengine.training.metrics import operating_point, threshold_at_fpr

    neg = _ladder()
    # FPR 1 %: k = 10 false positives allowed, threshold = 11th highest = 0.989
    assert threshold_at_fpr(neg, 0.01) == (pytest.approx(0.989), 10)
    lens = np.array([0.995, 0.990, 0.989, 0.5])
    pt = operating_point(lens, neg, 0.01)
    assert pt["threshold"] == pytest.approx(0.989)
    assert pt["n_fp"] == 10 and pt["fpr"] == pytest.approx(0.01)
    # 0.989 ties with the threshold and is not counted: 2 of 4
    assert pt["tpr"] == pytest.approx(0.5) and pt["reason"] is None


def test_operating_point_ties_in_the_negatives():
    from lensengine.training.metrics import operating_point

    # 1000 negatives: 5 at 0.9, 10 at 0.5, 985 low.  k = 10 -> the 11th highest is 0.5;
    # the 10 tied at 0.5 stay below the threshold: 5 false positives, FPR 0.005.
    neg = np.r_[np.full(5, 0.9), np.full(10, 0.5), np.linspace(0, 0.1, 985)]
    pt = operating_point(np.array([0.95, 0.6, 0.5, 0.2]), neg, 0.01)
    assert pt["threshold"] == 0.5 and pt["n_fp"] == 5 and pt["fpr"] == pytest.approx(0.005)
    assert pt["tpr"] == pytest.approx(0.5)  # 0.95 and 0.6; the lens at 0.5 ties and does not count


def test_too_few_negatives_gives_none_with_a_reason():
    from lensengine.training.metrics import operating_metrics, operating_point

    pt = operating_point(np.array([0.9]), _ladder(999), 0.01)
    assert pt["tpr"] is None and "999 negatives" in pt["reason"] and "1000" in pt["reason"]
    m = operating_metrics(np.array([0.995, 0.5]), _ladder(), bootstrap=0)
    assert m["tpr_fpr1"] == pytest.approx(0.5)
    assert m["tpr_fpr01"] is None and "10000" in m["reasons"]["tpr_fpr01"]
    assert m["tpr_fpr001"] is None and "100000" in m["reasons"]["tpr_fpr001"]
    # purity is taken at the FPR 0.1 % threshold by default, which 1000 negatives cannot give
    assert m["purity_1e3"] is None and "purity_1e3" in m["reasons"]
    assert operating_point(np.array([]), _ladder(), 0.01)["reason"] == "no lenses"


def test_purity_by_hand():
    from lensengine.training.metrics import operating_metrics, purity, purity_key

    assert purity(0.5, 0.01, 1e-3) == pytest.approx(0.0005 / (0.0005 + 0.01 * 0.999))
    assert purity(1.0, 0.0, 0.5) == 1.0
    assert math.isnan(purity(0.0, 0.0, 1e-3))
    assert purity_key(1e-3) == "purity_1e3" and purity_key(1e-4) == "purity_1e4"
    assert purity_key(0.002) == "purity_0.002"
    m = operating_metrics(np.array([0.995, 0.990, 0.989, 0.5]), _ladder(), purity_fpr=1e-2, bootstrap=0)
    assert m["purity_1e3"] == pytest.approx(0.5 * 1e-3 / (0.5 * 1e-3 + 0.01 * 0.999))
    m = operating_metrics(np.array([0.995]), _ladder(), prevalence=1e-2, purity_fpr=1e-2, bootstrap=0)
    assert m["purity_1e2"] == pytest.approx(1e-2 / (1e-2 + 0.01 * 0.99))


def test_bootstrap_intervals_are_seeded_and_sensible():
    from lensengine.training.metrics import operating_metrics

    rng = np.random.default_rng(7)
    neg = rng.normal(0, 1, 2000)
    lens = rng.normal(2.5, 1, 300)
    a = operating_metrics(lens, neg, bootstrap=200, seed=1)
    b = operating_metrics(lens, neg, bootstrap=200, seed=1)
    c = operating_metrics(lens, neg, bootstrap=200, seed=2)
    assert a["ci"] == b["ci"] and a["ci"] != c["ci"]
    lo68, hi68 = a["ci"]["tpr_fpr1"]["68"]
    lo95, hi95 = a["ci"]["tpr_fpr1"]["95"]
    assert lo95 <= lo68 < a["tpr_fpr1"] < hi68 <= hi95
    assert 0.01 < hi95 - lo95 < 0.3
    # 2000 negatives support FPR 1 % (k = 20) and 0.1 %? no: 0.1 % needs 10000
    assert "tpr_fpr01" not in a["ci"] and a["tpr_fpr01"] is None
    # lenses separated from every negative: TPR 1 in every replicate
    sep = operating_metrics(np.full(5, 10.0), neg, bootstrap=50)
    assert sep["ci"]["tpr_fpr1"] == {"68": [1.0, 1.0], "95": [1.0, 1.0]}
    assert sep["auroc"] == 1.0
