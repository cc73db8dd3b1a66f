"""Realism check: do the paper's published networks recognise our simulated lenses?

Scores a held-out mixed simulation (a seed no training run uses) with the
published OU-66 and OU-200 (and optionally all seven) through the one
preprocessing path (:class:`lensengine.engine.preprocess.Preprocessor`) and
prints AUROC, precision, recall and accuracy at P >= 0.5, overall and per kind.

    python benchmarks/sim_realism.py -n 1000 --seed 90210 [--store held-out.zarr] [--json out.json]

The paper's models reach AUROC 0.617 (OU-66) / 0.695 (OU-200) on their own
EVAL set (SPEC §8, Table 5).

Pixel statistics (issue 11, item 2): simulated galaxies against real HST/JWST
galaxies degraded to Euclid (``lensengine realcheck``), both measured by the
same code (``_sim_report.measure_objects``): VIS magnitude, half-light radius,
VIS − H colour, S/N and neighbours per cutout, plus the survey-lens truth
(θ_E, arc S/N).  Writes ``pixel_stats.md`` and ``pixel_stats.json``:

    python benchmarks/sim_realism.py --pixel-stats [-n 300] [--real-store DIR/real_galaxies.zarr] \
        [--out reports/realism]
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
    ap.add_argument("--pixel-stats", action="store_true", help="write the pixel-statistics realism report")
    ap.add_argument("--real-store", type=Path, default=None,
                    help="with --pixel-stats: a real_galaxies.zarr from `lensengine realcheck` (default: degrade now)")
    ap.add_argument("--out", type=Path, default=Path("reports/realism"), help="with --pixel-stats: output folder")
    args = ap.parse_args(argv)
    if args.pixel_stats:
        return pixel_stats(args)
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


class _Cutouts:
    """The few attributes of a CutoutBatch that the measurements read (vis, nisp, truth, len)."""

    def __init__(self, vis, nisp, truth):
        self.vis, self.nisp, self.truth = vis, nisp, truth

    def __len__(self):
        return len(self.vis)


def _real_cutouts(args):
    if args.real_store is not None:
        from lensengine.catalogs.store import SurveyStore

        st = SurveyStore.open(args.real_store)
        tile = st.tiles[0]
        b = st.read(tile, 0, st.n_cutouts(tile))
        return _Cutouts(b.vis, b.nisp, {k: np.asarray(v) for k, v in b.truth.items()})
    from lensengine.training.realcheck import galaxy_cutouts

    cut = galaxy_cutouts(seed=0)
    names = np.array([c.truth["name"] for c in cut])
    return _Cutouts(np.stack([c.vis for c in cut]), np.stack([c.nisp for c in cut]), {"name": names})


def _fmt(v, nd=2):
    return "–" if v is None or not np.isfinite(v) else f"{v:.{nd}f}"


def pixel_stats(args) -> int:
    from lensengine.training._sim_report import compare_pixel_statistics, object_catalogue
    from lensengine.training.simulate import simulate_batch

    t0 = time.perf_counter()
    sky = simulate_batch("sky-negatives", args.n, args.seed)
    sim = object_catalogue(sky)
    sim_central = object_catalogue(sky, centrals_only=True)
    real_batch = _real_cutouts(args)
    real = object_catalogue(real_batch, centrals_only=True, centre_columns=("none", "none"))
    cmp_all = compare_pixel_statistics(sim, real)
    lenses = simulate_batch("survey-lenses", max(args.n // 2, 20), args.seed + 1)
    t = lenses.truth
    te, snr = np.asarray(t["theta_e"], float), np.asarray(t["arc_snr"], float)
    lens_summary = {
        "n": len(lenses), "theta_e_p10_50_90": np.percentile(te, [10, 50, 90]).tolist(),
        "frac_theta_e_0.5_1.5": float(((te >= 0.5) & (te <= 1.5)).mean()),
        "arc_snr_p10_50_90": np.percentile(snr, [10, 50, 90]).tolist(),
        "frac_easy": float(np.mean(t["label_easy"])),
        "mag_source_vis_p10_50_90": np.percentile(np.asarray(t["mag_source_VIS"], float), [10, 50, 90]).tolist(),
        "lens_types": {k: int((t["lens_type"] == k).sum()) for k in sorted(set(t["lens_type"]))},
    }
    stamp_area_arcmin2 = (20.0 / 60.0) ** 2
    report = {"seed": args.seed, "n_sky_negatives": len(sky), "n_real": len(real_batch), "objects": cmp_all,
              "sim_centrals": {"n": int(sim_central["mag_vis"].size),
                               "mag_vis_p10_50_90": np.percentile(sim_central["mag_vis"], [10, 50, 90]).tolist(),
                               "r50_median": float(np.median(sim_central["r50"]))},
              "detected_per_arcmin2_sim": cmp_all["neighbours_per_cutout"]["sim"] / stamp_area_arcmin2,
              "survey_lenses": lens_summary, "seconds": time.perf_counter() - t0}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "pixel_stats.json").write_text(json.dumps(report, indent=2, default=float))
    lines = [
        "# Realism report: simulated vs real galaxies (pixel statistics)", "",
        f"Made by `python benchmarks/sim_realism.py --pixel-stats -n {args.n} --seed {args.seed}`. Simulated: every "
        f"object detected in {len(sky)} `sky-negatives` cutouts (centrals and field). Real: the central object of "
        f"{len(real_batch)} HST/JWST galaxies degraded to Euclid Wide (`lensengine realcheck`; NISP colours of "
        "HST-only galaxies are template colours, not measured). Same detection and measurement code for both "
        "(`_sim_report.measure_objects`: VIS smoothed by 1 pixel, 3σ, ≥ 10 pixels; r50 includes the PSF).", "",
        "| VIS mag | N sim | N real | r50″ sim | r50″ real | VIS−H sim | VIS−H real | S/N sim | S/N real |",
        "|---|---|---|---|---|---|---|---|---|"]
    for row in cmp_all["bins"]:
        a, b = row["sim"], row["real"]
        lines.append(f"| {row['mag'][0]:.1f}–{row['mag'][1]:.1f} | {a['n']} | {b['n']} | {_fmt(a['r50'])} | "
                     f"{_fmt(b['r50'])} | {_fmt(a['colour_vis_h'])} | {_fmt(b['colour_vis_h'])} | "
                     f"{_fmt(a['snr'], 0)} | {_fmt(b['snr'], 0)} |")
    for key in ("ks_r50", "ks_colour_vis_h"):
        if key in cmp_all:
            k = cmp_all[key]
            lines.append(f"\nKS distance of {key[3:]} (all bins): D = {k['statistic']:.2f} (p = {k['pvalue']:.2g}; "
                         f"{k['n_sim']} sim, {k['n_real']} real objects).")
    nb = cmp_all["neighbours_per_cutout"]
    lines += ["", f"Detected objects besides the central galaxy: {nb['sim']:.1f} per simulated 20″ × 20″ cutout "
              f"({report['detected_per_arcmin2_sim']:.0f} per arcmin²); the real stamps are placed on blank sky, "
              "so their neighbour count is not comparable.", "",
              f"Survey lenses (`survey-lenses`, {lens_summary['n']} systems): θ_E 10/50/90 % = "
              + ", ".join(f"{v:.2f}″" for v in lens_summary["theta_e_p10_50_90"])
              + f" ({lens_summary['frac_theta_e_0.5_1.5']:.0%} within 0.5–1.5″); arc S/N 10/50/90 % = "
              + ", ".join(f"{v:.0f}" for v in lens_summary["arc_snr_p10_50_90"])
              + f"; {lens_summary['frac_easy']:.0%} pass the easy rule (arc S/N ≥ 25); "
              + "unlensed source VIS 10/50/90 % = "
              + ", ".join(f"{v:.1f}" for v in lens_summary["mag_source_vis_p10_50_90"]) + "."]
    (args.out / "pixel_stats.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
