"""The cascade (``lensengine run --cascade``) at survey prevalence: its gate, what it loses, what it gains.

A sweep at 1:1000 prevalence with >= 2 000 lenses would be 2 M cutouts; instead the
lenses and a large non-lens sample are scored once, separately, and the 1:1000
figures follow exactly from per-population rates (the gate decides per cutout):

  pass(1:1000) = (999 * pass(non-lenses) + pass(lenses)) / 1000
  lost         = lenses the full ensemble finds at threshold t whose cheap mean is below the gate
  time/cutout  = a + b * pass       (a, b fitted to two runs measured side by side)

Three steps (each writes its part of the JSON, --json, default benchmarks/results_cascade.json):

  derive  choose the gates on validation data and write models/cascade.json
          python benchmarks/bench_cascade.py derive --models models --val-store val.zarr \\
              --ensemble models/ou_tsne_sky.npz --out models/cascade.json
  sweep   pass rates and lenses lost on the lenses and the non-lenses, per threshold
          python benchmarks/bench_cascade.py sweep --models models --lenses lenses.zarr \\
              --negatives sky1.zarr --negatives sky2.zarr ... --ensemble models/ou_tsne_sky.npz
  speed   end-to-end `lensengine run`, full and --cascade, side by side on the first N sky cutouts
          python benchmarks/bench_cascade.py speed --models models --store sky1.zarr --n 512

Stores are scored through the engine's scoring core (``score_store``, what `run`
uses).  ``--scores-from DIR`` reads already scored tables instead: for each store
``<name>.zarr`` the files ``DIR/<label>__<name>.parquet`` of the labels given with
``--label LABEL[|ALT...][:MODEL,...]`` (the first label whose file exists; only the
named models' columns; a later --label wins), as ``benchmarks/sky_check.py score``
writes them.  The tables must hold every model's P column and TRUTH_LABEL.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from lensengine.engine.cascade import CASCADE_FILE, gate_scores, mean_bound, plan_cascade, validated_gate
from lensengine.engine.ensemble import MeanEnsemble, ensemble_from_path
from lensengine.engine.models import discover_models, file_sha256

RESULTS = Path(__file__).with_name("results_cascade.json")
#: thresholds the OU-T-SNE gates are validated at (a run uses the largest at or below its own)
TSNE_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)


def _columns(models) -> list[str]:
    return ["P_" + m.name.replace("-", "_") for m in models]


def load_scores(store: Path, models, args) -> tuple[np.ndarray, np.ndarray]:
    """``(probs (n, models), is_lens (n,))`` of a store: scored now, or read from ``--scores-from`` tables."""
    cols = _columns(models)
    if args.scores_from:
        import pyarrow.parquet as pq

        merged: dict[str, np.ndarray] = {}
        rows = None
        for spec in args.label:
            labels, _, only = spec.partition(":")
            paths = [Path(args.scores_from) / f"{label}__{Path(store).stem}.parquet" for label in labels.split("|")]
            path = next((q for q in paths if q.is_file()), None)
            if path is None:
                raise FileNotFoundError(f"none of {[str(q) for q in paths]} exists")
            table = pq.read_table(path).to_pydict()
            if rows is None:
                rows = np.asarray(table["ROW"])
            elif not np.array_equal(rows, np.asarray(table["ROW"])):
                raise ValueError(f"{path}: its rows are not those of the first table of {store}")
            keep = {"P_" + m.replace("-", "_") for m in only.split(",")} if only else None
            merged.update({k: np.asarray(v) for k, v in table.items()
                           if keep is None or k in keep or k == "TRUTH_LABEL"})
        missing = [c for c in cols + ["TRUTH_LABEL"] if c not in merged]
        if missing:
            raise ValueError(f"the tables of {store} lack columns {missing} (labels {args.label})")
        return (np.column_stack([merged[c] for c in cols]).astype(np.float32),
                np.asarray(merged["TRUTH_LABEL"]).astype(bool))
    from lensengine.engine.scoring import score_store

    probs, label = [], []
    for rows in score_store(store, models, None, device="cpu", threads=args.threads, batch_size=32):
        probs.append(np.column_stack([rows[c] for c in cols]))
        label.append(rows["TRUTH_LABEL"] if "TRUTH_LABEL" in rows else np.zeros(len(rows["ROW"])))
    return np.concatenate(probs).astype(np.float32), np.concatenate(label).astype(bool)


def ensemble_scores(probs: np.ndarray, ensemble_path: Path | None) -> np.ndarray:
    return np.asarray(ensemble_from_path(ensemble_path).score(probs)[0], np.float64)


def _split(models, gate_file: Path | None):
    cascade = plan_cascade(models, MeanEnsemble(), 0.5, path=gate_file)
    cheap = [i for i, m in enumerate(models) if m.name in cascade.cheap]
    return cascade, cheap


# --- derive --------------------------------------------------------------------------------------------

def derive(args) -> dict:
    models = discover_models(args.models)
    probs, lens = load_scores(args.val_store, models, args)
    cheap_names = [m.name for m in models if m.stamp != max(x.stamp for x in models)]
    cheap = [i for i, m in enumerate(models) if m.name in cheap_names]
    cm = gate_scores(probs[:, cheap])
    n_cheap, n_exp = len(cheap), len(models) - len(cheap)
    mean7 = ensemble_scores(probs, None)
    # the mean's bound, checked on the validation data (it cannot lose a lens; this shows it does not)
    check = []
    for t in TSNE_THRESHOLDS:
        gate = mean_bound(t, n_cheap, n_exp)
        found = lens & (mean7 >= t)
        check.append({"threshold": t, "gate": gate, "lenses_found": int(found.sum()),
                      "lenses_lost": int((found & (cm < gate)).sum()),
                      "nonlens_pass_fraction": float((cm[~lens] >= gate).mean())})
    spec = {
        "about": "Gate of `lensengine run --cascade` (engine/cascade.py): the cheap models score every cutout; "
                 "the expensive ones and the ensemble only where the mean cheap P(lens) >= gate.",
        "cheap": cheap_names,
        "expensive": [m.name for m in models if m.name not in cheap_names],
        "models_sha256": {m.name: (m.sha256 or file_sha256(m.path)) for m in models},
        "mean": {"rule": "bound: gate = (N t - K) / M (N models, K expensive, M cheap); no cutout below it can "
                         "reach a mean of t, so the candidates at t are the full run's. Checked on validation "
                         "data below.", "validation_check": check},
        "ensembles": {},
        "validation": {"store": str(args.val_store), "cutouts": int(len(lens)), "lenses": int(lens.sum()),
                       "command": " ".join(["python", *sys.argv])},
    }
    for path in args.ensemble or []:
        name = ensemble_from_path(path).name
        score = ensemble_scores(probs, path)
        gates = [validated_gate(cm, score, lens, t, args.margin) for t in TSNE_THRESHOLDS
                 if (lens & (score >= t)).any()]
        spec["ensembles"][name] = {
            "rule": f"validated: at each threshold t, the lowest cheap mean of a validation lens {name} scores "
                    f">= t, less a margin of {args.margin}",
            "ensemble_file": Path(path).name, "ensemble_sha256": file_sha256(path),
            "gates": gates}
    Path(args.out).write_text(json.dumps(spec, indent=1) + "\n")
    print(f"wrote {args.out}")
    for row in check:
        print(f"  mean bound at t={row['threshold']}: gate {row['gate']:.4f}, validation lenses lost "
              f"{row['lenses_lost']}/{row['lenses_found']}, non-lenses passing {row['nonlens_pass_fraction']:.3f}")
    for name, entry in spec["ensembles"].items():
        for g in entry["gates"]:
            print(f"  {name} t={g['threshold']}: gate {g['gate']:.4f} (lowest found {g['lowest_found']:.4f}, "
                  f"{g['lenses_found']} lenses), non-lenses passing {g['nonlens_pass_fraction']:.3f}")
    return {"derive": spec}


# --- sweep ---------------------------------------------------------------------------------------------

def _at_threshold(name: str, t: float, gate: float, cm_l, cm_n, score_l) -> dict:
    pass_l, pass_n = cm_l >= gate, cm_n >= gate
    found = score_l >= t
    lost = found & ~pass_l
    p1000 = (999 * pass_n.mean() + pass_l.mean()) / 1000
    return {"ensemble": name, "threshold": round(float(t), 4), "gate": round(float(gate), 4),
            "pass_nonlenses": float(pass_n.mean()), "pass_lenses": float(pass_l.mean()),
            "pass_at_1_in_1000": float(p1000), "lenses_found_full": int(found.sum()), "lenses_lost": int(lost.sum()),
            "lost_fraction": float(lost.sum() / found.sum()) if found.any() else 0.0}


def sweep(args) -> dict:
    models = discover_models(args.models)
    gate_file = args.gates or (Path(args.models) / CASCADE_FILE)
    cascade, cheap = _split(models, gate_file if Path(gate_file).is_file() else None)
    pl, _ = load_scores(args.lenses, models, args)
    pn = np.concatenate([load_scores(s, models, args)[0] for s in args.negatives])
    cm_l, cm_n = gate_scores(pl[:, cheap]), gate_scores(pn[:, cheap])
    out = {"lenses": int(len(pl)), "nonlenses": int(len(pn)), "cheap": list(cascade.cheap),
           "expensive": list(cascade.expensive), "rows": []}
    ensembles = [("mean", None)] + [(ensemble_from_path(p).name, p) for p in args.ensemble or []]
    for name, path in ensembles:
        sl, sn = ensemble_scores(pl, path), ensemble_scores(pn, path)
        order = np.sort(sn)[::-1]
        thresholds = {"default 0.5": 0.5}
        for fpr in (0.01, 0.001):  # a detection is strictly above the (k+1)-th highest non-lens score
            thresholds[f"non-lens FPR {fpr:g}"] = float(np.nextafter(order[int(fpr * len(sn))], 2))
        ens = ensemble_from_path(path)
        for label, t in thresholds.items():
            try:
                c = plan_cascade(models, ens, t, path=gate_file if Path(gate_file).is_file() else None)
            except ValueError as exc:
                print(f"  {name} at {label}: no gate ({exc})")
                continue
            row = _at_threshold(name, t, c.gate, cm_l, cm_n, sl)
            row.update(operating_point=label, rule=c.rule)
            out["rows"].append(row)
            print(f"  {name:8s} {label:18s} t={t:.4f} gate {c.gate:.4f} ({c.rule}): pass {row['pass_nonlenses']:.4f}"
                  f" of non-lenses, {row['pass_lenses']:.3f} of lenses, {row['pass_at_1_in_1000']:.4f} at 1:1000;"
                  f" lost {row['lenses_lost']}/{row['lenses_found_full']} lenses the full ensemble finds")
    return {"sweep": out}


# --- speed ---------------------------------------------------------------------------------------------

def _run(store: Path, models_dir: Path, tmp: Path, workers: int, threshold: float, cascade: bool) -> dict:
    from bench_engine import PeakRSS

    from lensengine.engine.run import RunOptions, execute_run

    name = f"{'cascade' if cascade else 'full'}_{threshold:g}_w{workers}"
    out = tmp / f"{name}.fits"
    opts = RunOptions(store=store, out=out, scores=tmp / f"{name}_scores", models=discover_models(models_dir),
                      models_dir=models_dir, workers=workers, progress=False, dashboard=False, threshold=threshold,
                      cascade=cascade, restart=True)
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        summary = execute_run(opts)
        wall = time.perf_counter() - t0
    skipped = summary.flag_counts.get("CASCADE_SKIPPED", 0)
    return {"threshold": threshold, "cascade": cascade, "workers": workers, "cutouts": summary.n_cutouts,
            "wall_s": wall, "rate": summary.n_cutouts / wall, "scoring_rate": summary.rate,
            "pass_fraction": 1 - skipped / summary.n_cutouts, "candidates": summary.n_candidates,
            "peak_rss_mb": mem.peak / 2**20}


def _core(store: Path, models_dir: Path, threshold: float, cascade: bool) -> float:
    """Cutouts/s of the scoring core alone in this process (sessions warm): a long run's steady state."""
    from lensengine.engine.scoring import score_store

    models = discover_models(models_dir)
    gate = plan_cascade(models, MeanEnsemble(), threshold, models_dir) if cascade else None
    t0 = time.perf_counter()
    n = sum(len(r["ROW"]) for r in score_store(store, models, None, device="cpu", threads=2, cascade=gate))
    return n / (time.perf_counter() - t0)


def speed(args) -> dict:
    sys.path.insert(0, str(Path(__file__).parent))
    tmp = Path(args.workdir or tempfile.mkdtemp(prefix="bench-cascade-"))
    tmp.mkdir(parents=True, exist_ok=True)
    store = tmp / f"sky_{args.n}.zarr"
    if not store.exists():
        from bench_engine import subset_store

        from lensengine.catalogs.store import SurveyStore

        subset_store(args.store, store, args.n, chunk_size=min(SurveyStore.open(args.store).chunk_size, 512))
    res = {"n": args.n, "source": str(args.store), "cpu_count": os.cpu_count(), "load_avg_start": os.getloadavg(),
           "runs": []}
    previous = json.loads(Path(args.json).read_text()) if Path(args.json).is_file() else {}
    rows = previous.get("sweep", {}).get("rows", [])
    thresholds = args.threshold or [0.5] + [r["threshold"] for r in rows
                                            if r["ensemble"] == "mean" and r["operating_point"].startswith("non")]
    res["runs"].append(_run(store, args.models, tmp, args.workers, thresholds[0], False))
    for t in thresholds:
        res["runs"].append(_run(store, args.models, tmp, args.workers, t, True))
    _core(store, args.models, thresholds[0], False)  # warm this process's sessions
    res["core"] = [{"threshold": None, "rate": _core(store, args.models, thresholds[0], False)}]
    res["core"] += [{"threshold": t, "rate": _core(store, args.models, t, True)} for t in thresholds]
    res["load_avg_end"] = os.getloadavg()
    full = res["runs"][0]
    print(f"\ncascade speed: {args.n} sky cutouts, {args.workers} worker(s), load {res['load_avg_start'][0]:.1f} -> "
          f"{res['load_avg_end'][0]:.1f}")
    print(f"  full run: {full['rate']:.1f} cutouts/s, peak RSS {full['peak_rss_mb']:.0f} MB")
    # time per cutout = a + b * pass, from the full run (pass 1) and each cascade run
    res["at_1_in_1000"] = []
    for run in res["runs"][1:]:
        tf, tc, p = 1 / full["rate"], 1 / run["rate"], run["pass_fraction"]
        b = (tf - tc) / (1 - p) if p < 1 else 0.0
        a = tf - b
        row = next((r for r in rows if r["ensemble"] == "mean" and abs(r["threshold"] - run["threshold"]) < 1e-3),
                   None)
        p1000 = row["pass_at_1_in_1000"] if row else p
        rate = 1 / (a + b * p1000)
        res["at_1_in_1000"].append({"threshold": run["threshold"], "pass_measured": p, "pass_at_1_in_1000": p1000,
                                    "rate_measured": run["rate"], "rate_at_1_in_1000": rate,
                                    "speedup_vs_full": rate / full["rate"],
                                    "lost_fraction": row["lost_fraction"] if row else None})
        core = next(c["rate"] for c in res["core"] if c["threshold"] == run["threshold"])
        res["at_1_in_1000"][-1].update(scoring_speedup=run["scoring_rate"] / full["scoring_rate"],
                                       core_rate=core, core_speedup=core / res["core"][0]["rate"])
        print(f"  --cascade at t={run['threshold']:.4f}: {run['rate']:.1f} cutouts/s measured (pass {p:.3f}); "
              f"at 1:1000 (pass {p1000:.4f}) {rate:.1f} cutouts/s = {rate / full['rate']:.2f}x the full run"
              + (f", lenses lost {row['lenses_lost']}/{row['lenses_found_full']}" if row else "")
              + f"; scoring stage {run['scoring_rate'] / full['scoring_rate']:.2f}x; core steady state "
                f"{core:.1f} against {res['core'][0]['rate']:.1f} = {core / res['core'][0]['rate']:.2f}x")
    return {"speed": res}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="step", required=True)
    for name in ("derive", "sweep", "speed"):
        p = sub.add_parser(name)
        p.add_argument("--models", type=Path, required=True)
        p.add_argument("--json", type=Path, default=RESULTS, help="results file (its other steps are kept)")
        p.add_argument("--threads", type=int, default=0)
        p.add_argument("--scores-from", type=Path, default=None, help="folder of already scored tables")
        p.add_argument("--label", action="append", default=[],
                       help="LABEL[|ALT...][:MODEL,...] of tables in --scores-from (repeatable)")
    d = sub.choices["derive"]
    d.add_argument("--val-store", type=Path, required=True)
    d.add_argument("--ensemble", type=Path, action="append", default=None,
                   help="fitted OU-T-SNE (.npz) or stack (.json) to validate gates for (repeatable)")
    d.add_argument("--margin", type=float, default=0.02)
    d.add_argument("--out", type=Path, required=True)
    s = sub.choices["sweep"]
    s.add_argument("--lenses", type=Path, required=True)
    s.add_argument("--negatives", type=Path, action="append", required=True)
    s.add_argument("--ensemble", type=Path, action="append", default=None, help="fitted ensembles (repeatable)")
    s.add_argument("--gates", type=Path, default=None, help=f"gate file [default: <models>/{CASCADE_FILE}]")
    v = sub.choices["speed"]
    v.add_argument("--store", type=Path, required=True, help="store of realistic non-lenses (its first --n cutouts)")
    v.add_argument("--n", type=int, default=512)
    v.add_argument("--workers", type=int, default=1)
    v.add_argument("--threshold", type=float, action="append", default=None,
                   help="threshold(s) to run --cascade at [default: 0.5 and the sweep's FPR thresholds]")
    v.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    result = {"derive": derive, "sweep": sweep, "speed": speed}[args.step](args)
    merged = json.loads(args.json.read_text()) if args.json.is_file() else {}
    merged.update(result)
    merged["machine"] = (f"{os.cpu_count()} cores; load average {os.getloadavg()[0]:.1f} at the end of the "
                         f"last step ({args.step})")
    args.json.write_text(json.dumps(merged, indent=1, default=float) + "\n")


if __name__ == "__main__":
    main()
