"""Benchmark OU-T-SNE: fit time, exact vs fast transform throughput and agreement, file size.

Uses synthetic seven-model scores (lensengine.engine._tsne_synth) until trained models exist.

    nice python benchmarks/bench_tsne.py --n-train 50000 --n-test 5000 --json bench_tsne.json

Prints a table and (with --json) writes the numbers.  "cell agreement" is the fraction of test
objects the fast path puts in the same grid cell as openTSNE's exact transform; "value agreement"
the fraction whose OU-T-SNE score is the same (|difference| < 1e-9), within 0.1, and on the same
side of the 0.5 threshold.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import f1_score, roc_auc_score

from lensengine.engine._tsne_synth import synthetic_scores
from lensengine.engine.ou_tsne import OUTSNE


def tpr0(y: np.ndarray, s: np.ndarray) -> float:
    """Recall before the first false positive: lenses scoring strictly above every non-lens."""
    top_fp = s[y == 0].max() if (y == 0).any() else -np.inf
    return float((s[y == 1] > top_fp).mean()) if (y == 1).any() else float("nan")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-train", type=int, default=50_000)
    ap.add_argument("--n-test", type=int, default=5_000, help="objects placed by both paths")
    ap.add_argument("--n-fast", type=int, default=200_000, help="objects for the fast-path throughput")
    ap.add_argument("--grid-size", type=int, default=100)
    ap.add_argument("--perplexity", type=float, default=30.0)
    ap.add_argument("--smoothing", type=float, default=0.0)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--noise", type=float, default=1.5, help="per-model logit noise of the synthetic scores")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--save-model", type=Path, default=None,
                    help="also keep the fitted model and the test placements (for later analysis)")
    args = ap.parse_args(argv)

    X, y = synthetic_scores(args.n_train, args.seed, noise=args.noise)
    Xt, yt = synthetic_scores(args.n_test, args.seed + 1, noise=args.noise)
    Xf, _ = synthetic_scores(args.n_fast, args.seed + 2, noise=args.noise)
    res: dict = {"n_train": args.n_train, "n_test": args.n_test, "grid_size": args.grid_size,
                 "perplexity": args.perplexity, "smoothing": args.smoothing, "jobs": args.jobs,
                 "noise": args.noise, "machine": platform.processor() or platform.machine()}

    model = OUTSNE(grid_size=args.grid_size, perplexity=args.perplexity, smoothing=args.smoothing,
                   random_state=args.seed, n_jobs=args.jobs)
    t = time.perf_counter()
    model.fit(X, y)
    res["fit_s"] = time.perf_counter() - t
    res["cells_with_training_objects"] = int(model.defined_.sum())

    with tempfile.TemporaryDirectory() as tmp:
        path = model.save(Path(tmp) / "ou_tsne.npz")
        res["file_mb"] = path.stat().st_size / 1e6
        t = time.perf_counter()
        loaded = OUTSNE.load(path)
        res["load_s"] = time.perf_counter() - t

    t = time.perf_counter()
    loaded.set_params(exact_transform=True)
    loaded._reference()  # rebuilding openTSNE's affinity index happens once, on first exact use
    res["exact_index_rebuild_s"] = time.perf_counter() - t
    t = time.perf_counter()
    exact = loaded.locate(Xt)
    res["exact_per_s"] = args.n_test / (time.perf_counter() - t)

    loaded.set_params(exact_transform=False)
    loaded.locate(Xt[:10])  # build the k-d tree
    fast = loaded.locate(Xt)
    t = time.perf_counter()
    loaded.locate(Xf)
    res["fast_per_s"] = args.n_fast / (time.perf_counter() - t)

    res["cell_agreement"] = float(np.all(fast.cells == exact.cells, axis=1).mean())
    res["cell_within_1"] = float((np.abs(fast.cells - exact.cells).max(axis=1) <= 1).mean())
    d = np.abs(fast.scores - exact.scores)
    res["value_agreement"] = float((d < 1e-9).mean())
    res["value_within_0.1"] = float((d < 0.1).mean())
    res["class_agreement"] = float(((fast.scores >= 0.5) == (exact.scores >= 0.5)).mean())
    res["outside_exact"] = int(exact.outside.sum())
    res["outside_fast"] = int(fast.outside.sum())
    for name, s in (("exact", exact.scores), ("fast", fast.scores)):
        res[f"auroc_{name}"] = float(roc_auc_score(yt, s))
        res[f"f1_{name}"] = float(f1_score(yt, s >= 0.5))
        res[f"tpr0_{name}"] = tpr0(yt, s)
    best = max(range(7), key=lambda j: roc_auc_score(yt, Xt[:, j]))
    res["tpr0_best_single"] = max(tpr0(yt, Xt[:, j]) for j in range(7))
    res["auroc_best_single"] = float(roc_auc_score(yt, Xt[:, best]))
    res["f1_best_single"] = float(max(f1_score(yt, Xt[:, j] >= 0.5) for j in range(7)))

    # grid smoothing: same placements, grid rebuilt with each sigma (cells), scored on the test set
    res["smoothing_sweep"] = {}
    for sigma, a in ((0.0, 0.0), (1.0, 0.0), (2.0, 0.0), (0.0, 1.0), (1.0, 1.0), (2.0, 1.0), (1.0, 5.0)):
        loaded.smoothing, loaded.prior_weight = sigma, a
        loaded._build_grid()
        s_exact = loaded.grid_[exact.cells[:, 0], exact.cells[:, 1]]
        s_fast = loaded.grid_[fast.cells[:, 0], fast.cells[:, 1]]
        res["smoothing_sweep"][f"smoothing={sigma} prior_weight={a}"] = {
            "auroc_exact": float(roc_auc_score(yt, s_exact)), "f1_exact": float(f1_score(yt, s_exact >= 0.5)),
            "auroc_fast": float(roc_auc_score(yt, s_fast)), "f1_fast": float(f1_score(yt, s_fast >= 0.5)),
            "tpr0_exact": tpr0(yt, s_exact), "tpr0_fast": tpr0(yt, s_fast),
            "class_agreement": float(((s_fast >= 0.5) == (s_exact >= 0.5)).mean())}

    rows = [("fit (s)", f"{res['fit_s']:.1f}  ({args.n_train} objects, {args.jobs} threads)"),
            ("file size (MB)", f"{res['file_mb']:.2f}"),
            ("load (s) / exact index rebuild (s)", f"{res['load_s']:.2f} / {res['exact_index_rebuild_s']:.1f}"),
            ("exact transform (objects/s)", f"{res['exact_per_s']:.0f}"),
            ("fast path (objects/s)", f"{res['fast_per_s']:.0f}"),
            ("cell agreement (same / within 1 cell)", f"{res['cell_agreement']:.4f} / {res['cell_within_1']:.4f}"),
            ("value agreement (same / within 0.1)", f"{res['value_agreement']:.4f} / {res['value_within_0.1']:.4f}"),
            ("class agreement at 0.5", f"{res['class_agreement']:.4f}"),
            ("outside (exact / fast)", f"{res['outside_exact']} / {res['outside_fast']}"),
            ("AUROC exact / fast / best single", f"{res['auroc_exact']:.4f} / {res['auroc_fast']:.4f} / "
                                                 f"{res['auroc_best_single']:.4f}"),
            ("F1 exact / fast / best single", f"{res['f1_exact']:.4f} / {res['f1_fast']:.4f} / "
                                              f"{res['f1_best_single']:.4f}"),
            ("TPR0 exact / fast / best single", f"{res['tpr0_exact']:.4f} / {res['tpr0_fast']:.4f} / "
                                                f"{res['tpr0_best_single']:.4f}")]
    for sigma, r in res["smoothing_sweep"].items():
        rows.append((f"{sigma}: AUROC/F1/TPR0 exact; fast; class agr.",
                     f"{r['auroc_exact']:.4f}/{r['f1_exact']:.4f}/{r['tpr0_exact']:.4f}; "
                     f"{r['auroc_fast']:.4f}/{r['f1_fast']:.4f}/{r['tpr0_fast']:.4f}; {r['class_agreement']:.4f}"))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
        print(f"wrote {args.json}")
    if args.save_model:
        loaded.smoothing, loaded.prior_weight = args.smoothing, 0.0
        loaded._build_grid()
        loaded.save(args.save_model)
        np.savez_compressed(args.save_model.with_suffix(".placements.npz"), Xt=Xt, yt=yt,
                            exact_coords=exact.coords, fast_coords=fast.coords)
        print(f"wrote {args.save_model}")
    return res


if __name__ == "__main__":
    main()
