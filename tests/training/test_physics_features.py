"""benchmarks/physics_features.py: unit-free features beside the networks, and the judge that fits a stack member
on them (issue 11, stop 45)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import BENCHMARKS, load_script


def _pf():
    return load_script(BENCHMARKS / "physics_features.py", "_physics_features")


def _galaxy(pf, rng, n=4, ring=0.0, arc=False):
    """A red elliptical (the same profile in every band, brighter in H) with an optional blue ring or arc of radius
    1.2" that is bright in VIS and faint in H, plus noise; (vis (n,200,200), nisp (n,3,66,66))."""
    def scene(r, phi, pixel, flux, ring_flux):
        img = flux * np.exp(-r / 0.4) * pixel ** 2
        if ring_flux:
            band = np.exp(-0.5 * ((r - 1.2) / 0.12) ** 2)
            if arc:
                band = band * (np.cos(phi) > 0.6)
            img = img + ring_flux * band * pixel ** 2
        return img
    vis = scene(pf.RV, np.arctan2(*np.mgrid[0:200, 0:200] - 99.5), 0.1, 100.0, 30.0 * ring)
    nisp = np.stack([scene(pf.R, pf.PHI, 0.3, f, 3.0 * ring) for f in (150.0, 200.0, 250.0)])
    return (vis + rng.normal(0, 0.01, (n, 200, 200)), nisp + rng.normal(0, 0.03, (n, 3, 66, 66)))


def test_features_do_not_depend_on_units_or_zero_points(rng):
    pf = _pf()
    vis, nisp = _galaxy(pf, rng, ring=1.0)
    before = pf.features(vis, nisp)
    scale = np.array([3.1e-4, 27.0, 0.002])[None, :, None, None]  # e-/s in one band, µJy in another, ...
    after = pf.features(vis * 1.0e3, nisp * scale)
    assert set(before) == set(after) and len(before) == 4 * 4 + 8
    for key in before:
        np.testing.assert_allclose(after[key], before[key], rtol=1e-7, atol=1e-12, err_msg=key)


def test_a_blue_ring_and_an_arc_leave_the_residual_they_should(rng):
    pf = _pf()
    plain = pf.features(*_galaxy(pf, rng))
    ring = pf.features(*_galaxy(pf, rng, ring=1.0))
    arc = pf.features(*_galaxy(pf, rng, ring=1.0, arc=True))
    # light bright in VIS and faint in H between 0.45" and 2.4": a positive VIS - H residual well above the noise
    assert np.all(ring["residual_pos_snr"] > 5 * plain["residual_pos_snr"])
    # a ring fills every sector and is point-symmetric; an arc on one side fills a few and is not
    assert np.all(ring["residual_extent"] >= 11) and np.all(arc["residual_extent"] <= 5)
    assert np.all(ring["residual_opposite"] > 0.8) and np.all(arc["residual_opposite"] < 0.2)
    assert np.all(arc["residual_top_sector"] > 2 * ring["residual_top_sector"])
    # the ring moves VIS light out of the centre relative to H, in the annulus it lies in (1.2-2.1")
    assert np.all(ring["vis_minus_h_2"] > plain["vis_minus_h_2"] + 0.05)


def test_the_judge_finds_a_member_that_carries_the_signal(tmp_path):
    """Scores where the networks know nothing and one feature tells lenses apart: the stack with the features'
    member must beat the refitted stack, which can only be at chance; the shipped-stack row is the given weights."""
    pytest.importorskip("sklearn")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pf = _pf()
    rng = np.random.default_rng(7)
    scores, feats = tmp_path / "scores", tmp_path / "feats"
    scores.mkdir()
    feats.mkdir()
    sizes = {"fit": 1200, "v4_lenses": 300, "v4_hard": 300, "real_galaxies": 20, "j0946": 1,
             "frozen_nonlenses": 400, **{s: 500 for s in pf.SKY}}
    for store, n in sizes.items():
        label = np.zeros(n, np.int64)
        if store in ("fit", "v4_lenses"):
            label[: n // 2] = 1
        if store == "j0946":
            label[:] = 1
        p = rng.uniform(0.05, 0.95, (n, len(pf.MODELS)))  # the networks: noise
        kind = np.full(n, "galaxy", dtype="<U16")
        if store in pf.SKY:  # five sky negatives per store that every network calls a lens
            p[:5], kind[:5] = 0.999, "look-alike"
        if store == "frozen_nonlenses":  # the hidden-check proxy's groups: ellipticals score lower here
            kind[:] = ["elliptical", "spiral-face-on", "ring-galaxy", "merger"] * 100
            p[kind == "elliptical"] *= 0.5
        table = {"P_" + m.replace("-", "_"): p[:, i] for i, m in enumerate(pf.MODELS)}
        table["TRUTH_LABEL"], table["TRUTH_LABEL_EASY"] = label, label * (np.arange(n) % 2)
        pq.write_table(pa.table(table), scores / f"t__{store}.parquet")
        x = rng.normal(0, 1, (n, 3))
        x[:, 0] += 3.0 * label  # one feature carries the signal
        np.savez(feats / f"{store}.npz", a=x[:, 0], b=x[:, 1], c=x[:, 2], label=label, kind=kind)
    # the shipped stack's weights by name, in another order than the score columns: all on OU-J alone
    shipped = {"models": list(pf.MODELS)[::-1], "coef": [0.0] * (len(pf.MODELS) - 1) + [1.0], "intercept": 0.0}
    result = pf.judge(scores, "t", feats, ["fit"], shipped, bootstrap=20, tail=True)
    rows = result["scorers"]
    tail = ["stack, top 1 % non-lenses ×10", "stack, smoothed TPR at FPR 1 %"]
    assert list(rows) == ["shipped stack", "stack refitted", "stack + features", "boosted (log-odds and features)",
                          "features alone (the member)", *tail]
    assert rows["features alone (the member)"]["auroc"] > 0.95
    for name in tail:  # the log-odds alone, fitted for the tail: still nothing to find in noise
        assert abs(rows[name]["auroc"] - 0.5) < 0.1, name
    assert result["fit_rows"] == 1200 and "minus_shipped" not in rows["shipped stack"]
    assert abs(rows["stack refitted"]["auroc"] - 0.5) < 0.1 and rows["shipped stack"]["auroc"] < 0.6
    lens_p = pq.read_table(scores / "t__v4_lenses.parquet").to_pydict()
    sky_p = np.concatenate([pq.read_table(scores / f"t__{s}.parquet").to_pydict()["P_OU_J"] for s in pf.SKY])
    ours = np.array(lens_p["P_OU_J"])[np.array(lens_p["TRUTH_LABEL"]) == 1]
    by_hand = np.mean(ours[:, None] > sky_p[None]) + 0.5 * np.mean(ours[:, None] == sky_p[None])
    assert rows["shipped stack"]["auroc"] == pytest.approx(by_hand, abs=1e-4)  # OU-J's AUROC: the weights by name
    assert rows["stack + features"]["auroc"] > 0.95 and rows["stack + features"]["tpr_fpr1"] > 0.5
    diff = rows["stack + features"]["minus_shipped"]["auroc"]
    assert diff[0] == pytest.approx(rows["stack + features"]["auroc"] - rows["shipped stack"]["auroc"], abs=1e-4)
    assert diff[1] <= diff[0] <= diff[2] and diff[1] > 0.3
    assert rows["stack + features"]["j0946_over_fpr01_threshold_in_sky_sd"] > 0  # the one lens clears it
    assert rows["shipped stack"]["top20_sky_kinds"] == {"look-alike": 20}  # the highest-scoring, in order
    assert rows["shipped stack"]["top200_sky_kinds"] == {"look-alike": 20, "galaxy": 180}
    # the proxy by hand for the shipped stack (OU-J's log-odds): lenses above each group's 99th percentile
    frozen = pq.read_table(scores / "t__frozen_nonlenses.parquet").to_pydict()
    f_kind = np.load(feats / "frozen_nonlenses.npz")["kind"]
    f_lo = np.log(np.array(frozen["P_OU_J"]) / (1 - np.array(frozen["P_OU_J"])))
    lens_lo = np.log(ours / (1 - ours))
    easy = (np.arange(300) % 2)[np.array(lens_p["TRUTH_LABEL"]) == 1] == 1
    for group, mask in (("ellipticals", f_kind == "elliptical"),
                        ("ordinary mix", np.isin(f_kind, ["elliptical", "spiral-face-on"])), ("all", f_kind != "")):
        cut = np.quantile(f_lo[mask], 0.99)
        expected = [round(float(np.mean(lens_lo > cut)), 3), round(float(np.mean(lens_lo[easy] > cut)), 3)]
        assert rows["shipped stack"]["proxy"][group][:2] == pytest.approx(expected, abs=1e-3), group
    assert rows["shipped stack"]["proxy"]["ellipticals"][0] > rows["shipped stack"]["proxy"]["all"][0]
    text = pf.markdown(json.loads(json.dumps(result)))
    assert "| stack + features |" in text and "Hidden-check proxy" in text
