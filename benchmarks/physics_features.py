"""Physics features beside the networks: does a third view move the stack at the operating point? (issue 11)

The stacked ensemble rests on OU-66 and OU-VIS, and its thresholds at FPR 0.1 % are set by the few sky
negatives both score high (stops 31-39). Training either network further on the CPU did not move those
(stop 39), so this asks whether measurements the networks are not built around add anything: per band,
how the light is spread over four annuli (0-0.6-1.2-2.1-3.3"), the VIS minus H residual after each band is
scaled to its own central flux (a lensed blue arc around a red deflector leaves a positive ring of it), the
residual's spread over twelve sectors and its point symmetry, and the VIS light's concentration and
180-degree asymmetry. Every feature is a ratio within a band or between bands each scaled by its own flux,
so none depends on the store's units or zero points (simulated e-/s, a survey's µJy): a test scales each
band by its own constant and gets the same features.

    python benchmarks/physics_features.py extract --out feats STORE.zarr ...      # one .npz per store
    python benchmarks/physics_features.py judge --scores scores --label s45 --features feats \\
        --fit val4,fit_sky,fit_hard,fit_lenses --out reports/sky_check/stop45

``judge`` reads the networks' scores from ``sky_check.py score`` files (``<label>__<store>.parquet``) and the
features of the same stores, fits on the ``--fit`` stores (lenses and non-lenses weighed equally, as ``lensengine
stack fit --balance``) and judges on the v4 stores of the model card (``v4_lenses`` against the four
``v4_sky_*`` stores and ``v4_hard``; ``real_galaxies`` and ``j0946`` for the real-imaging check):

* the shipped stack (``models/ou_stack.json``) and the same logistic stack refitted on the fit stores;
* ``stack + features``: that stack with one more member, a gradient-boosted classifier of the features alone
  (its log-odds, cross-fitted on the fit stores so the stack does not weigh an over-fitted member);
* ``boosted``: one gradient-boosted classifier of the seven log-odds and the features together;
* the member alone (what the features know without the networks);
* with ``--tail``, two stacks of the log-odds alone fitted for the tail instead of the whole ranking
  (:func:`tail_stacks`);

with AUROC and TPR at FPR 1 % / 0.1 % (thresholds as ``lensengine evaluate`` sets them), the difference from the
shipped stack with its paired bootstrap interval (lenses, sky and hard negatives resampled), the real galaxies above each threshold and J0946's margin over the 0.1 %
threshold, and what the top 20 and 200 sky negatives are (the simulator's kinds); where the issue's frozen
non-lenses were scored and extracted as ``frozen_nonlenses`` (made with the b9282e6 simulator), the hidden-check
proxy of ``sky_check.py`` (survey lenses and J0946 above each group's 99th percentile). Measured at stop 45:
models/README.md, "Stop 45". Needs scikit-learn (the dev extra).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from lensengine.engine.specs import MODEL_NAMES as MODELS

NISP_PIXEL, VIS_PIXEL, NISP_STAMP, VIS_STAMP = 0.3, 0.1, 66, 200  # arcsec, pixels
EDGES = (0.0, 0.6, 1.2, 2.1, 3.3)  # annuli, arcsec
ARC = (0.45, 2.4)  # where a galaxy-scale lens's arcs lie, arcsec
SECTORS = 12
SKY = ("v4_sky_2026", "v4_sky_2027", "v4_sky_2028", "v4_sky_2029")


def _grid(n: int, pixel: float) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:n, 0:n] - (n - 1) / 2.0
    return np.hypot(xx, yy) * pixel, np.arctan2(yy, xx)


R, PHI = _grid(NISP_STAMP, NISP_PIXEL)
RV, _ = _grid(VIS_STAMP, VIS_PIXEL)
ANNULI = [(R >= a) & (R < b) for a, b in zip(EDGES[:-1], EDGES[1:])]
IN_ARC = (R >= ARC[0]) & (R < ARC[1])
OUTER = R > 8.0  # the frame beyond 8" (of the 9.9" half-width) that the residual's noise is read from
SECTOR = ((PHI + np.pi) / (2 * np.pi) * SECTORS).astype(int) % SECTORS
TINY = 1e-30


def _vis_on_nisp_grid(vis: np.ndarray) -> np.ndarray:
    """(n, 200, 200) VIS summed in 3 × 3 blocks onto the 0.3" grid (the outer pixel row and column dropped)."""
    v = vis[:, 1:199, 1:199]
    return v.reshape(len(v), NISP_STAMP, 3, NISP_STAMP, 3).sum(axis=(2, 4))


def _to_centre(img: np.ndarray) -> np.ndarray:
    """Each image divided by its own flux within 0.6" (a band's units and zero point drop out)."""
    c = img[:, ANNULI[0]].sum(1)
    return img / np.where(np.abs(c) < TINY, TINY, c)[:, None, None]


def features(vis: np.ndarray, nisp: np.ndarray) -> dict[str, np.ndarray]:
    """Unit-free features of cutouts: ``vis`` (n, 200, 200), ``nisp`` (n, 3, 66, 66) in Y, J, H."""
    vis = np.nan_to_num(np.asarray(vis, np.float64))
    nisp = np.nan_to_num(np.asarray(nisp, np.float64))
    bands = {"V": _vis_on_nisp_grid(vis), "J": nisp[:, 1], "H": nisp[:, 2]}
    share = {}
    for name, img in bands.items():
        flux = np.stack([img[:, a].sum(1) for a in ANNULI], 1)
        share[name] = flux / (np.abs(flux).sum(1, keepdims=True) + TINY)
    out: dict[str, np.ndarray] = {}
    for k in range(len(ANNULI)):
        out[f"share_vis_{k}"] = share["V"][:, k]
        out[f"share_h_{k}"] = share["H"][:, k]
        out[f"vis_minus_h_{k}"] = share["V"][:, k] - share["H"][:, k]
        out[f"vis_minus_j_{k}"] = share["V"][:, k] - share["J"][:, k]
    v, h = _to_centre(bands["V"]), _to_centre(bands["H"])
    residual = v - h
    noise = v[:, OUTER].std(1) + h[:, OUTER].std(1) + 1e-12
    norm = noise * np.sqrt(IN_ARC.sum())
    positive = np.clip(residual, 0, None) * IN_ARC
    sectors = np.stack([positive[:, SECTOR == i].sum(1) for i in range(SECTORS)], 1)
    total = sectors.sum(1) + TINY
    out["residual_pos_snr"] = sectors.sum(1) / norm
    out["residual_neg_snr"] = np.clip(-residual * IN_ARC, 0, None).sum((1, 2)) / norm
    out["residual_top_sector"] = sectors.max(1) / total
    out["residual_opposite"] = (sectors * np.roll(sectors, SECTORS // 2, axis=1)).sum(1) / ((sectors ** 2).sum(1) + TINY)
    out["residual_extent"] = (sectors > 0.5 * sectors.max(1, keepdims=True)).sum(1).astype(np.float64)
    inner = vis * (RV < 2.5)[None]
    absolute = np.abs(inner).sum((1, 2)) + TINY
    out["vis_asymmetry"] = np.abs(inner - inner[:, ::-1, ::-1]).sum((1, 2)) / absolute
    out["vis_concentration"] = (vis * (RV < 0.5)[None]).sum((1, 2)) / absolute
    out["h_concentration"] = bands["H"][:, R < 0.6].sum(1) / (np.abs(bands["H"][:, R < 3.3]).sum(1) + TINY)
    return out


def extract(store_path: Path) -> dict[str, np.ndarray]:
    """The features of every cutout of a store, in store order, with ``label`` and ``kind`` where it has truth."""
    from lensengine.catalogs.store import SurveyStore

    store = SurveyStore.open(store_path)
    parts: dict[str, list[np.ndarray]] = {}
    for tile in store.tiles:
        for index in range(len(store.chunk_slices(tile))):
            batch = store.read_chunk(tile, index)
            found = features(batch.vis, batch.nisp)
            found["label"] = np.asarray(batch.truth.get("label", np.zeros(len(batch))), np.int64)
            found["kind"] = np.asarray(batch.truth.get("kind", np.full(len(batch), ""))).astype(str)
            for key, value in found.items():
                parts.setdefault(key, []).append(value)
    return {k: np.concatenate(v) for k, v in parts.items()}


# --- judging ---------------------------------------------------------------------------------------------

def _load(scores: Path, label: str, feats: Path, store: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(log-odds of the seven networks, features, labels) of one store, rows in store order."""
    import pyarrow.parquet as pq

    from lensengine.catalogs.catalog import score_column
    from lensengine.engine.stack import logit

    table = pq.read_table(scores / f"{label}__{store}.parquet").to_pydict()
    log_odds = logit(np.stack([np.asarray(table[score_column(m)], np.float64) for m in MODELS], 1))
    saved = np.load(feats / f"{store}.npz")
    names = sorted(k for k in saved.files if k not in ("label", "kind"))
    x = np.stack([saved[k] for k in names], 1)
    if len(x) != len(log_odds):
        raise ValueError(f"{store}: {len(x)} feature rows against {len(log_odds)} scored cutouts")
    return log_odds, x, np.asarray(table.get("TRUTH_LABEL", np.zeros(len(x))), np.int64)


def _boosted(seed: int = 0):
    from sklearn.ensemble import HistGradientBoostingClassifier

    return HistGradientBoostingClassifier(max_iter=300, learning_rate=0.05, max_leaf_nodes=15,
                                          l2_regularization=1.0, random_state=seed)


def tail_stacks(log_odds: np.ndarray, y: np.ndarray, weight: np.ndarray) -> dict:
    """Two logistic stacks fitted for the tail rather than for the whole ranking (weights only, no features):
    the non-lenses above the fit rows' 1 % threshold weighed ten times, refitted four times; and the weights
    that maximise a smoothed TPR at the fit rows' FPR 1 % (Powell, from the balanced fit)."""
    from scipy.optimize import minimize
    from sklearn.linear_model import LogisticRegression

    from lensengine.training.metrics import threshold_at_fpr

    w = weight.copy()
    for _ in range(4):
        reweighted = LogisticRegression(max_iter=3000).fit(log_odds, y, sample_weight=w)
        s = reweighted.decision_function(log_odds)
        w = weight * np.where((y == 0) & (s > threshold_at_fpr(s[y == 0], 0.01)[0]), 10.0, 1.0)
    neg, pos = log_odds[y == 0], log_odds[y == 1]
    k = max(1, int(0.01 * len(neg)))

    def smoothed_miss(v):
        v = v / np.linalg.norm(v)
        sn = neg @ v
        t = np.partition(sn, len(sn) - k)[len(sn) - k]
        return -np.mean(1 / (1 + np.exp(-(pos @ v - t) / (0.3 * sn.std()))))

    start = LogisticRegression(max_iter=3000).fit(log_odds, y, sample_weight=weight).coef_[0]
    direct = minimize(smoothed_miss, start / np.linalg.norm(start), method="Powell",
                      options={"maxiter": 4000, "xtol": 1e-3, "ftol": 1e-5}).x
    return {"stack, top 1 % non-lenses ×10": lambda lo, f: reweighted.decision_function(lo),
            "stack, smoothed TPR at FPR 1 %": lambda lo, f: lo @ direct}


def fit_scorers(log_odds: np.ndarray, x: np.ndarray, y: np.ndarray, shipped: dict, tail: bool = False) -> dict:
    """name -> function (log-odds, features) -> decision, each fitted on the given rows, lenses and
    non-lenses weighed equally; with ``tail`` also :func:`tail_stacks`."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    weight = np.where(y == 1, 0.5 / y.mean(), 0.5 / (1 - y.mean()))
    refit = LogisticRegression(max_iter=3000).fit(log_odds, y, sample_weight=weight)
    member = _boosted().fit(x, y, sample_weight=weight)
    held_out = np.zeros(len(y))  # the member's log-odds on rows it was not fitted on
    for train, test in StratifiedKFold(5, shuffle=True, random_state=0).split(x, y):
        held_out[test] = _boosted().fit(x[train], y[train], sample_weight=weight[train]).decision_function(x[test])
    with_member = LogisticRegression(max_iter=3000).fit(np.hstack([log_odds, held_out[:, None]]), y,
                                                        sample_weight=weight)
    together = _boosted().fit(np.hstack([log_odds, x]), y, sample_weight=weight)
    by_name = dict(zip(shipped.get("models", MODELS), shipped["coef"]))  # in this script's column order
    coef, intercept = np.array([by_name[m] for m in MODELS]), float(shipped["intercept"])
    return {
        "shipped stack": lambda lo, f: lo @ coef + intercept,
        "stack refitted": lambda lo, f: refit.decision_function(lo),
        "stack + features": lambda lo, f: with_member.decision_function(
            np.hstack([lo, member.decision_function(f)[:, None]])),
        "boosted (log-odds and features)": lambda lo, f: together.decision_function(np.hstack([lo, f])),
        "features alone (the member)": lambda lo, f: member.decision_function(f),
        **(tail_stacks(log_odds, y, weight) if tail else {}),
    }


def _figures(lens: np.ndarray, sky: np.ndarray, hard: np.ndarray) -> np.ndarray:
    from lensengine.training.metrics import threshold_at_fpr

    sky_sorted = np.sort(sky)
    below = np.searchsorted(sky_sorted, lens, "left")
    ties = np.searchsorted(sky_sorted, lens, "right") - below
    return np.array([np.mean(lens > threshold_at_fpr(sky, 0.01)[0]), np.mean(lens > threshold_at_fpr(sky, 0.001)[0]),
                     np.mean(lens > threshold_at_fpr(hard, 0.01)[0]), float(np.mean(below + 0.5 * ties) / sky.size)])


FIGURES = ("tpr_fpr1", "tpr_fpr01", "hard_tpr_fpr1", "auroc")


def _frozen(scores: Path, label: str, feats: Path, is_lens: np.ndarray):
    """The issue's hidden-check negatives where they were scored and extracted (``frozen_nonlenses``): their
    (log-odds, features, labels), kinds, the easy survey lenses' mask and ``sky_check``'s proxy cuts; else None."""
    if not ((scores / f"{label}__frozen_nonlenses.parquet").exists() and (feats / "frozen_nonlenses.npz").exists()):
        return None
    import pyarrow.parquet as pq

    sys.path.insert(0, str(Path(__file__).parent))  # as bench_cascade.py reaches bench_engine.py
    import sky_check

    easy = np.asarray(pq.read_table(scores / f"{label}__v4_lenses.parquet").column("TRUTH_LABEL_EASY"))[is_lens]
    return (_load(scores, label, feats, "frozen_nonlenses"), np.load(feats / "frozen_nonlenses.npz")["kind"],
            easy == 1, sky_check._proxy_cuts)


def judge(scores: Path, label: str, feats: Path, fit: list[str], shipped: dict, bootstrap: int = 400,
          tail: bool = False) -> dict:
    from lensengine.training.metrics import threshold_at_fpr

    fitted = [_load(scores, label, feats, s) for s in fit]
    scorers = fit_scorers(*(np.concatenate([f[i] for f in fitted]) for i in range(3)), shipped, tail)
    stores = {s: _load(scores, label, feats, s) for s in ("v4_lenses", "v4_hard", "real_galaxies", "j0946", *SKY)}
    is_lens = stores["v4_lenses"][2] == 1
    sky_kind = np.concatenate([np.load(feats / f"{s}.npz")["kind"] for s in SKY])
    frozen = _frozen(scores, label, feats, is_lens)
    rng = np.random.default_rng(0)
    n_sky = sum(len(stores[s][0]) for s in SKY)
    draws = [(rng.integers(0, is_lens.sum(), is_lens.sum()), rng.integers(0, n_sky, n_sky),
              rng.integers(0, len(stores["v4_hard"][0]), len(stores["v4_hard"][0]))) for _ in range(bootstrap)]
    result = {"fit": fit, "fit_rows": int(sum(len(f[2]) for f in fitted)), "scorers": {}}
    reference = None
    for name, scorer in scorers.items():
        lens = scorer(*stores["v4_lenses"][:2])[is_lens]
        sky = np.concatenate([scorer(*stores[s][:2]) for s in SKY])
        hard, real = scorer(*stores["v4_hard"][:2]), scorer(*stores["real_galaxies"][:2])
        t1, t01 = threshold_at_fpr(sky, 0.01)[0], threshold_at_fpr(sky, 0.001)[0]
        point = _figures(lens, sky, hard)
        row = dict(zip(FIGURES, point.round(4).tolist()))
        row["real_above_fpr1_fpr01"] = [int((real > t1).sum()), int((real > t01).sum())]
        j0946 = scorer(*stores["j0946"][:2]).max()
        if frozen is not None:  # survey lenses (all / easy) and J0946 above each group's 99th percentile
            (f_lo, f_x, _), f_kind, easy, cuts = frozen
            row["proxy"] = {group: [round(float(np.mean(lens > cut)), 3), round(float(np.mean(lens[easy] > cut)), 3),
                                    bool(j0946 > cut)] for group, cut in cuts(scorer(f_lo, f_x), f_kind).items()}
        for top in (20, 200):  # what the sky negatives that set the thresholds are (simulator truth)
            kinds, counts = np.unique(sky_kind[np.argsort(sky)[::-1][:top]], return_counts=True)
            row[f"top{top}_sky_kinds"] = {str(k): int(c) for k, c in zip(kinds, counts)}
        row["j0946_over_fpr01_threshold_in_sky_sd"] = round(float((j0946 - t01) / sky.std()), 3)
        boot = np.array([_figures(lens[a], sky[b], hard[c]) for a, b, c in draws])
        if reference is None:
            reference = (point, boot)
        else:  # the difference on all cutouts, and its 95 % interval over the same resamples for both
            low, high = (np.percentile(boot - reference[1], [2.5, 97.5], axis=0) if bootstrap
                         else (np.full(len(FIGURES), np.nan),) * 2)
            row["minus_shipped"] = {k: [round(float(m), 4), round(float(lo), 4), round(float(hi), 4)]
                                    for k, m, lo, hi in zip(FIGURES, point - reference[0], low, high)}
        result["scorers"][name] = row
        print(f"{name:34s} " + " ".join(f"{k} {row[k]:.3f}" for k in FIGURES)
              + f" real {row['real_above_fpr1_fpr01']} J0946 {row['j0946_over_fpr01_threshold_in_sky_sd']:+.2f}",
              flush=True)
    return result


def markdown(result: dict) -> str:
    lines = [f"Fitted on {', '.join(result['fit'])} ({result['fit_rows']} rows); judged on v4_lenses against the "
             "four v4_sky stores (20 000) and v4_hard; in brackets the difference from the shipped stack on all cutouts "
             "and its paired 95 % bootstrap interval; thresholds on the sky stores.", "",
             "| scorer | AUROC | TPR@FPR1% | TPR@FPR0.1% | hard TPR@FPR1% | real above 1 % / 0.1 % | J0946 over 0.1 % thr (sky sd) |",
             "|---|---|---|---|---|---|---|"]
    for name, r in result["scorers"].items():
        d = r.get("minus_shipped")

        def cell(key, r=r, d=d):
            return f"{r[key]:.3f}" + (f" ({d[key][0]:+.3f} [{d[key][1]:+.3f}, {d[key][2]:+.3f}])" if d else "")
        lines.append(f"| {name} | {cell('auroc')} | {cell('tpr_fpr1')} | {cell('tpr_fpr01')} | {cell('hard_tpr_fpr1')} "
                     f"| {r['real_above_fpr1_fpr01'][0]} / {r['real_above_fpr1_fpr01'][1]} "
                     f"| {r['j0946_over_fpr01_threshold_in_sky_sd']:+.2f} |")
    proxied = {n: r["proxy"] for n, r in result["scorers"].items() if "proxy" in r}
    if proxied:
        groups = list(next(iter(proxied.values())))
        lines += ["", "Hidden-check proxy (the frozen b9282e6 non-lenses): survey lenses above each group's 99th "
                  "percentile, all / easy, and whether J0946 is.", "",
                  "| scorer | " + " | ".join(groups) + " |", "|---|" + "---|" * len(groups)]
        for name, proxy in proxied.items():
            lines.append(f"| {name} | " + " | ".join(f"{a:.3f} / {b:.3f}, J0946 {'yes' if j else 'no'}"
                                                     for a, b, j in proxy.values()) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    sub = ap.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("extract", help="features of each store into OUT/<store>.npz")
    ex.add_argument("--out", type=Path, required=True)
    ex.add_argument("stores", type=Path, nargs="+")
    ju = sub.add_parser("judge", help="fit on --fit stores, judge on the v4 stores")
    ju.add_argument("--scores", type=Path, required=True, help="sky_check.py score's folder")
    ju.add_argument("--label", required=True, help="the score files' label (<label>__<store>.parquet)")
    ju.add_argument("--features", type=Path, required=True, help="extract's folder")
    ju.add_argument("--fit", required=True, help="comma list of the stores to fit on")
    ju.add_argument("--stack", type=Path, default=Path(__file__).parents[1] / "models" / "ou_stack.json")
    ju.add_argument("--bootstrap", type=int, default=400)
    ju.add_argument("--tail", action="store_true", help="also two stacks fitted for the tail (tail_stacks)")
    ju.add_argument("--out", type=Path, default=None, help="write physics_features.{json,md} here")
    args = ap.parse_args(argv)
    if args.command == "extract":
        args.out.mkdir(parents=True, exist_ok=True)
        for store in args.stores:
            found = extract(store)
            np.savez(args.out / f"{store.stem}.npz", **found)
            print(f"{store}: {len(found['label'])} cutouts", flush=True)
        return 0
    result = judge(args.scores, args.label, args.features, args.fit.split(","), json.loads(args.stack.read_text()),
                   args.bootstrap, args.tail)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "physics_features.json").write_text(json.dumps(result, indent=1) + "\n")
        (args.out / "physics_features.md").write_text(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
