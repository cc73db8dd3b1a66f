"""Realism check: do the paper's published networks recognise our simulated lenses?

Scores a held-out mixed simulation (a seed no training run uses) with the
published OU-66 and OU-200 (and optionally all seven) through the one
preprocessing path (:class:`lensengine.engine.preprocess.Preprocessor`) and
prints AUROC, precision, recall and accuracy at P >= 0.5, overall and per kind.

    python benchmarks/sim_realism.py -n 1000 --seed 90210 [--store held-out.zarr] [--json out.json]

The paper's models reach AUROC 0.617 (OU-66) / 0.695 (OU-200) on their own
EVAL set (SPEC §8, Table 5).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

DEFAULT_WEIGHTS = Path(__file__).resolve().parents[1].parent / "shared" / "published-weights"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=600)
    ap.add_argument("--seed", type=int, default=90210)
    ap.add_argument("--kind", default="mixed", help="simulate this kind (compound sets: recall only)")
    ap.add_argument("--lens-fraction", type=float, default=0.5)
    ap.add_argument("--source-colour", default="mixed")
    ap.add_argument("--store", type=Path, default=None, help="score this store (tile 'sim') instead of simulating")
    ap.add_argument("--models", default="OU-66,OU-200")
    ap.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    if not (args.weights / "OU_66_Weights.pt").is_file():
        print(f"published weights not found in {args.weights}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    if args.store is not None:
        from lensengine.catalogs.store import SurveyStore

        st = SurveyStore.open(args.store)
        batch = st.read("sim", 0, st.n_cutouts("sim"))
    else:
        from lensengine.training.simulate import simulate_batch

        batch = simulate_batch(args.kind, args.n, args.seed, lens_fraction=args.lens_fraction,
                               source_colour=args.source_colour)
    t_sim = time.perf_counter() - t0
    from lensengine.training._sim_report import realism_table, score_published

    names = [s.strip() for s in args.models.split(",")]
    tables = realism_table(batch, score_published(batch, args.weights, names))
    label = np.asarray(batch.truth["label"]).astype(int)
    report = {"n": len(batch), "seed": args.seed, "kind": args.kind, "lens_fraction_actual": float(label.mean()),
              "simulate_s": t_sim, "models": tables}
    print(f"{len(batch)} cutouts ({label.mean():.2f} lenses), simulated in {t_sim:.0f} s")
    for n in names:
        rows = tables[n]
        a = rows[0]
        print(f"{n:7s} AUROC {a['auroc']:.3f}  precision {a['precision']:.3f}  recall {a['recall']:.3f}  "
              f"accuracy {a['accuracy']:.3f}")
        for r in rows[1:]:
            print(f"        {r['subset']:16s} n={r['n']:4d}  P>=0.5: {r['frac_p>=0.5']:.2f}  mean P {r['mean_p']:.2f}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
