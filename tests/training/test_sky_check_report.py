"""benchmarks/sky_check.py's report: a single model's figures once per distinct weights, and the rendering
comparison (the same scenes drawn by simulator v3 and v4) computed from the paired stores."""

from __future__ import annotations

import numpy as np

from tests.conftest import BENCHMARKS, load_script


def _sky_check():
    return load_script(BENCHMARKS / "sky_check.py", "_sky_check")


def test_single_model_rows_appear_once_per_weights_and_ensembles_always():
    sc = _sky_check()
    models = dict.fromkeys(sc.MODEL_NAMES, "a")
    sets = {"old": {"models": models}, "new": {"models": {**models, "OU-VIS": "b"}}, "mean": {"models": models}}
    results = {name: {key: {"x": i} for key in (*sc.MODEL_NAMES, "ensemble")} for i, name in enumerate(sets)}
    rows = [(key, name) for key, name, _ in sc._rows(results, sets)]
    assert rows.count(("OU-J", "old (+2 later sets, same weights)")) == 1
    assert [n for k, n in rows if k == "OU-J"] == ["old (+2 later sets, same weights)"]
    assert [n for k, n in rows if k == "OU-VIS"] == ["old (+1 later sets, same weights)", "new"]
    assert [n for k, n in rows if k == "ensemble"] == ["old", "new", "mean"]
    # only the sets that have a table's figures count: "old" lacks them, so "new" is first for OU-J
    rows = [(key, name) for key, name, r in sc._rows(results, sets, lambda r: r["x"] > 0)]
    assert [n for k, n in rows if k == "OU-J"] == ["new (+1 later sets, same weights)"]


def test_render_pair_scores_each_rendering_against_its_own_negatives():
    sc = _sky_check()
    rng = np.random.default_rng(0)
    neg = rng.normal(0, 1, (5000, 7))
    lens3 = rng.normal(2, 1, (500, 7))
    v4 = {"v3": {"lenses": lens3, "sky": neg, "hard": neg[:2000]},
          "v4": {"lenses": lens3 - 2, "sky": neg, "hard": neg[:2000]}}  # v4 lenses look like the negatives
    out = sc.render_pair(v4, lambda p: p[:, 0])
    assert out["v3"]["auroc"] > 0.9 and abs(out["v4"]["auroc"] - 0.5) < 0.05
    assert out["v3"]["tpr_fpr1"] > 0.3 and out["v4"]["tpr_fpr1"] < 0.05
    assert out["v3"]["tpr_fpr01"] is not None  # 5 000 negatives: the 0.1 % point rests on 5 false positives
    assert out["v3"]["n"] == [500, 5000]
