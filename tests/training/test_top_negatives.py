"""benchmarks/top_negatives.py: which kinds of sky negatives set the thresholds at FPR 1 % and 0.1 %, counted as
``lensengine evaluate`` counts false positives (strictly above the (k+1)-th highest negative score)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import BENCHMARKS, load_script


def _top_negatives():
    return load_script(BENCHMARKS / "top_negatives.py", "_top_negatives")


def test_false_positives_by_kind_are_hand_counted():
    tn = _top_negatives()
    # 1 000 negatives: 600 ellipticals scoring 0.000-0.599, 400 rings scoring 0.600-0.999 but for four ellipticals
    # placed at the very top (0.9991-0.9994): at FPR 1 % k = 10, at FPR 0.1 % k = 1
    score = np.arange(1000) / 1000.0
    kind = np.array(["elliptical"] * 600 + ["ring"] * 400)
    score[[0, 1, 2, 3]] = [0.9991, 0.9992, 0.9993, 0.9994]
    out = tn.by_kind(score, kind)
    assert out["thresholds"]["fpr1"]["k"] == 10 and out["thresholds"]["fpr01"]["k"] == 1
    assert out["thresholds"]["fpr1"]["false_positives"] == 10
    ell, ring = out["kinds"]["elliptical"], out["kinds"]["ring"]
    assert (ell["n"], ring["n"]) == (600, 400) and ell["share"] == pytest.approx(0.6)
    assert ell["fpr1"]["false_positives"] == 4 and ring["fpr1"]["false_positives"] == 6   # top ten: 4 + 6
    assert ell["fpr1"]["own_fpr"] == pytest.approx(4 / 600)
    assert ring["fpr1"]["enrichment"] == pytest.approx((6 / 10) / 0.4)
    assert ell["fpr01"]["false_positives"] == 1 and ring["fpr01"]["false_positives"] == 0  # only the top one
    assert ell["fpr01"]["enrichment"] == pytest.approx(1 / 0.6)


def test_only_scored_negatives_are_ranked_and_the_top_is_in_order(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    tn = _top_negatives()
    folder = tmp_path / "scores" / "tile=T0"
    folder.mkdir(parents=True)
    pq.write_table(pa.table({"TILE": ["T0"] * 5, "ROW": [0, 1, 2, 3, 4],
                             "TRUTH_LABEL": np.array([0, 1, 0, 0, 0], np.int8),
                             "TRUTH_KIND": ["a", "lens", "b", "c", "a"],
                             "P_ENSEMBLE": np.array([0.2, 0.99, np.nan, 0.7, 0.5], np.float32),
                             "P_OU_J": np.array([0.1, 0.9, 0.3, 0.8, 0.4], np.float32)}), folder / "part-0.parquet")
    rows = tn.load([tmp_path / "scores"])
    assert sorted(rows["ROW"].tolist()) == [0, 3, 4]  # the lens and the unscored row are left out
    top = tn.top(rows, rows["P_ENSEMBLE"].astype(float), 2)
    assert [(e["rank"], e["row"], e["kind"]) for e in top] == [(1, 3, "c"), (2, 4, "a")]
    assert top[0]["networks"] == {"OU_J": pytest.approx(0.8)}
