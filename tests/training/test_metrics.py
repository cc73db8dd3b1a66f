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
