"""benchmarks/sky_check.py's report: a single model's figures once per distinct weights, and the rendering
comparison (the same scenes drawn by simulator v3 and v4) computed from the paired stores."""

from __future__ import annotations

import numpy as np
import pytest

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


def test_judged_v4_uses_every_v4_sky_store_and_only_the_lenses():
    sc = _sky_check()
    rng = np.random.default_rng(1)
    lens = np.concatenate([rng.normal(3, 1, (400, 7)), rng.normal(0, 1, (100, 7))])  # 100 non-lenses among them
    truth = {"TRUTH_LABEL": np.r_[np.ones(400, int), np.zeros(100, int)], "TRUTH_ARC_SNR": rng.uniform(6, 80, 500),
             "TRUTH_THETA_E": rng.uniform(0.2, 2, 500)}
    sky = rng.normal(0, 1, (20000, 7))
    out = sc.judged_v4(lens, truth, sky, sky[:2000], lambda p: p[:, 0], bootstrap=20)
    assert out["sky"]["n_lens"] == 400 and out["sky"]["n_neg"] == 20000 and out["hard"]["n_neg"] == 2000
    # the threshold at FPR 0.1 % is the 99.9th percentile of the 20 000 negatives, the TPR the lenses above it
    thr = out["threshold_fpr01"]
    assert abs(np.mean(sky[:, 0] > thr) - 1e-3) < 2e-4
    assert out["sky"]["tpr_fpr01"] == np.mean(lens[:400, 0] > thr)
    assert out["sky"]["ci"]["tpr_fpr01"]["95"][0] <= out["sky"]["tpr_fpr01"] <= out["sky"]["ci"]["tpr_fpr01"]["95"][1]
    assert sum(b["n"] for k, b in out["recall_bins"].items() if k.startswith("arc_snr")) == 400
    results = {"s": {k: {"v4": out, "sky": out["sky"], "hard": out["hard"], "j0946": None} for k in
                     (*sc.MODEL_NAMES, "ensemble")}}
    text = sc.markdown(results, {"s": {"models": dict.fromkeys(sc.MODEL_NAMES, "a")}})
    assert "Simulator v4 (the pixels" in text and "| ensemble | s | " in text.split("Simulator v4 (the pixels")[1]


def test_a_set_scored_on_the_v4_stores_only_gets_the_v4_table_alone(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    sc = _sky_check()
    rng = np.random.default_rng(2)

    def write(label, store, n, lens):
        cols = {sc.column(m): rng.uniform(0.5 if lens else 0, 1 if lens else 0.6, n) for m in sc.MODEL_NAMES}
        cols.update(TRUTH_LABEL=np.full(n, int(lens)), TRUTH_ARC_SNR=rng.uniform(6, 80, n),
                    TRUTH_THETA_E=rng.uniform(0.2, 2, n))
        pq.write_table(pa.table(cols), tmp_path / f"{label}__{store}.parquet")

    write("a", "v4_lenses", 300, True)
    write("a", "v4_sky", 2000, False)
    write("a", "v4_sky_2027", 1000, False)
    write("a", "v4_hard", 500, False)
    sets = {"v4 only": {"models": dict.fromkeys(sc.MODEL_NAMES, "a"), "ensemble": "mean"}}
    results = sc.report(tmp_path, sets, tmp_path / "out", bootstrap=0)
    ens = results["v4 only"]["ensemble"]
    assert set(ens) == {"v4"} and ens["v4"]["sky"]["n_neg"] == 3000 and ens["v4"]["sky"]["n_lens"] == 300
    text = (tmp_path / "out" / "sky_check.md").read_text()
    main_table, v4_table = text.split("Simulator v4 (the pixels")
    assert "v4 only" not in main_table and "| ensemble | v4 only |" in v4_table
    with pytest.raises(SystemExit, match="neither the lenses store nor the v4 stores"):
        sc.report(tmp_path, {"b": {"models": dict.fromkeys(sc.MODEL_NAMES, "b"), "ensemble": "mean"}},
                  tmp_path / "out2", bootstrap=0)


def test_compare_pairs_sets_on_the_same_resamples_and_refits_the_stack(tmp_path):
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    sc = _sky_check()
    rng = np.random.default_rng(3)
    kinds = np.array(["elliptical", "spiral-face-on", "ring"] * 200)

    def write(label, store, n, lens, shift=0.0, extra=None):
        base = rng.normal(1.5 if lens else -1.5, 1.5, n) + shift * lens  # the networks agree, up to noise
        cols = {sc.column(m): 1 / (1 + np.exp(-(base + rng.normal(0, 0.3, n)))) for m in sc.MODEL_NAMES}
        cols.update(TRUTH_LABEL=np.full(n, int(lens)), **(extra or {}))
        pq.write_table(pa.table(cols), tmp_path / f"{label}__{store}.parquet")

    for label, shift in (("a", 0.0), ("b", 1.0)):  # b: the same cutouts scored by better networks
        rng = np.random.default_rng(3)
        write(label, "v4_lenses", 400, True, shift)
        write(label, "v4_sky", 3000, False)
        write(label, "v4_hard", 1000, False)
        write(label, "frozen_nonlenses", 600, False, extra={"TRUTH_KIND": kinds})
        write(label, "j0946", 1, True, shift)
        write(label, "real_galaxies", 50, False)
        lab = np.r_[np.ones(300, int), np.zeros(300, int)]
        cols = {sc.column(m): 1 / (1 + np.exp(-rng.normal(np.where(lab == 1, 1.5 + shift, -1.5), 1.5)))
                for m in sc.MODEL_NAMES}
        pq.write_table(pa.table({**cols, "TRUTH_LABEL": lab}), tmp_path / f"{label}__val.parquet")
    every = dict.fromkeys(sc.MODEL_NAMES, "a")
    sets = {"ref": {"models": every, "ensemble": "mean"},
            "same": {"models": every, "ensemble": "mean"},
            "better": {"models": dict.fromkeys(sc.MODEL_NAMES, "b"), "ensemble": "stack", "refit": "val"}}
    out = sc.compare(tmp_path, sets, "ref", tmp_path / "cmp", bootstrap=50)
    # identical sets differ by exactly zero on every resample
    assert all(v["diff"] == 0 and v["ci95"] == [0, 0] for v in out["same"]["paired"].values())
    better = out["better"]["paired"]
    assert better["tpr_fpr1"]["diff"] > 0.1 and better["tpr_fpr1"]["ci95"][0] > 0
    # the refitted stack is saved and weighs the seven networks
    saved = json.loads((tmp_path / "cmp" / "ou_stack_better.json").read_text())
    assert saved["balanced"] and saved["n_fit"] == 600 and len(saved["coef"]) == 7
    # hand check of the reference's figures: mean ensemble as log-odds, thresholds from the sky store
    sky = pq.read_table(tmp_path / "a__v4_sky.parquet").to_pydict()
    lens = pq.read_table(tmp_path / "a__v4_lenses.parquet").to_pydict()
    frozen = pq.read_table(tmp_path / "a__frozen_nonlenses.parquet").to_pydict()
    mean = lambda t: np.mean([np.asarray(t[sc.column(m)]) for m in sc.MODEL_NAMES], axis=0)  # noqa: E731
    s, l, f = mean(sky), mean(lens), mean(frozen)
    t1 = np.sort(s)[::-1][30]  # k = 30 false positives allowed of 3 000 at FPR 1 %: the 31st highest
    assert out["ref"]["figures"]["tpr_fpr1"] == pytest.approx(np.mean(l > t1))
    cut = np.quantile(f[kinds == "elliptical"], 0.99)
    assert out["ref"]["figures"]["proxy ellipticals"] == pytest.approx(np.mean(l > cut))
    assert out["ref"]["figures"]["real_above_fpr1"] <= 50
    assert "| better |" in (tmp_path / "cmp" / "compare.md").read_text()
    # other stores in the roles (a selection set): swapping sky and hard swaps their figures
    swapped = sc.compare(tmp_path, {"ref": sets["ref"]}, "ref", tmp_path / "sel", bootstrap=0,
                         judged={"sky": "v4_hard", "hard": "v4_sky"})
    assert swapped["ref"]["figures"]["auroc"] == pytest.approx(out["ref"]["figures"]["hard_auroc"])
    assert swapped["ref"]["figures"]["hard_tpr_fpr1"] == pytest.approx(out["ref"]["figures"]["tpr_fpr1"])
    assert "sky: v4_hard*" in (tmp_path / "sel" / "compare.md").read_text()
