"""The sky check (issue 11): model sets side by side at a survey's operating point.

A lens finder is used at a false-positive rate of 1e-3 to 1e-2 on a realistic galaxy population, so this
script compares model sets (the current defaults, the published weights, a new candidate set) on

* survey lenses (``simulate --kind survey-lenses``, down to arc S/N 6) against the realistic sky mix
  (``--kind sky-negatives``, several stores) and, separately, against the hard confusers
  (``--kind hard-negatives``): AUROC and TPR at FPR 1 % / 0.1 % (with bootstrap intervals), recall by arc
  S/N and Einstein radius at the 0.1 % threshold;
* the real-imaging check (``lensengine realcheck``): P(lens) of J0946 degraded to Euclid, and how many of the
  real HST/JWST galaxies degraded to Euclid (none of them a lens) score above the 1 % and 0.1 % thresholds;
* the issue's hidden-check negatives (``simulate --kind non-lenses -n 1000 --seed 4242`` made with the
  simulator of b9282e6): the thresholds at 1 % of its ellipticals / ordinary mix / everything, and whether
  J0946 and the simulated survey lenses clear them.

Scoring is split from reporting because the 200-px networks cost most of the CPU: each (model set, store)
pair is scored once, by the engine's own scoring core (``lensengine.engine.scoring.score_store``, the
same rows ``lensengine run`` writes), into a Parquet file, and any model set can then be assembled from
per-model columns of different files (a new OU-66 family with the published OU-200 family, say)::

    python benchmarks/sky_check.py score --label pub --models models/published --out scores STORE.zarr ...
    python benchmarks/sky_check.py score --label new66 --models runs --only OU-J,OU-Y --out scores STORE.zarr
    python benchmarks/sky_check.py report --scores scores --sets sets.json --out reports/sky_check

``sets.json`` names each set's source label per model and its ensemble::

    {"published": {"models": {"OU-J": "pub", ..., "OU-200": "pub"}, "ensemble": "mean"},
     "new": {"models": {...}, "ensemble": "tsne", "tsne": "models/ou_tsne.npz"},
     "stacked": {"models": {...}, "ensemble": "stack", "stack": "models/ou_stack.json"}}

``compare`` judges candidate sets against a reference on the v4 judged stores alone (what a machine that has only
the v4 stores, the real-imaging check and the frozen set can say), every set on the same bootstrap resamples of
lenses and negatives, so each difference gets its own interval; a set's ``"refit": "val2"`` fits its stack on
that store's scores first, as ``lensengine stack fit`` would::

    python benchmarks/sky_check.py compare --scores scores --sets sets.json --reference shipped --out reports/cmp

To choose among candidates without looking at the judged stores, the same comparison runs on a selection set
(``--lenses val4 --sky sv_sky --hard sv_hard``: the validation store's lenses against sky and hard negatives
of their own seeds).

A label may be scored in parts (``pub66`` for the OU-66 family on some stores, ``pub200`` for the rest):
a model's column is looked up under ``<label>``, then ``<label>66`` / ``<label>200``.  Store names are the
file stems: ``lenses``, ``hard``, ``sky*``, ``j0946``, ``real_galaxies``, ``frozen_nonlenses``, and the
simulator-version-3 stores ``sf_sky`` (``--kind sky-negatives``: the sky mix with real star-forming galaxies)
and ``sf_hard`` (``--kind hard-negatives``), reported apart so that the earlier stores keep their meaning:
the v3 sky mix as a whole, and its star-forming galaxies (both stores) alone, with the share of them above
the realistic mix's 0.1 % threshold.  Simulator version 4 renders what is smaller than a pixel properly
(sub-pixel lensed light, pixel-integrated knots); ``v4_lenses``, ``v4_sky`` and ``v4_hard`` are the stores
``lenses``, ``sf_sky`` and ``sf_hard`` made again with the same seeds (the same scenes drawn by v4, but for the
few lenses on the edge of the detection rule, which are redrawn) and are
reported beside them, so a model that learnt the old rendering shows it.  Every ``v4_sky*`` store together
(``v4_sky`` and, since stop 25, ``v4_sky_2027`` … ``v4_sky_2029``: ``--kind sky-negatives -n 5000 --seed
<2027…2029>``, 20 000 in all) is the judged sky mix on v4 pixels: its own table gives AUROC and TPR at FPR
1 % / 0.1 % with intervals against it and against ``v4_hard``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

import numpy as np

MODEL_NAMES = ("OU-J", "OU-Y", "OU-H", "OU-JYH", "OU-66", "OU-VIS", "OU-200")
FAMILY = {m: ("200" if m in ("OU-VIS", "OU-200") else "66") for m in MODEL_NAMES}
ORDINARY = ("elliptical", "spiral-face-on", "spiral-edge-on", "close-pair", "blend")
SF_STORES = ("sf_sky", "sf_hard")  # simulator version 3: real star-forming galaxies among the negatives
#: simulator version 4: the same scenes as (lenses, sf_sky, sf_hard), with sub-pixel lensed light and knots
V4_PAIRS = {"lenses": ("lenses", "v4_lenses"), "sky": ("sf_sky", "v4_sky"), "hard": ("sf_hard", "v4_hard")}


def column(model: str) -> str:
    return "P_" + model.replace("-", "_")


# --- scoring -------------------------------------------------------------------------------------------

def score(label: str, models_dir: Path, only: list[str], out_dir: Path, stores: list[Path]) -> None:
    """One Parquet per store with the P_<model>, FLAGS and TRUTH_* columns; finished files are kept."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from threadpoolctl import threadpool_limits

    from lensengine.engine.models import discover_models
    from lensengine.engine.scoring import score_store

    models = [m for m in discover_models(models_dir) if not only or m.name in only]
    if not models:
        sys.exit(f"no models {only or ''} in {models_dir}")
    out_dir.mkdir(parents=True, exist_ok=True)
    for store in stores:
        out = out_dir / f"{label}__{store.stem}.parquet"
        if out.exists():
            continue
        start, parts = time.time(), []
        with threadpool_limits(1):  # one BLAS thread: a loaded machine's spinning OpenBLAS threads cost more
            for rows in score_store(store, models, None, device="cpu", threads=1):
                keep = {k: v for k, v in rows.items() if k.startswith(("P_", "TRUTH_", "FLAGS", "ROW"))}
                parts.append(pa.table({k: (v.astype(str) if v.dtype == object else v) for k, v in keep.items()}))
        table = pa.concat_tables(parts)
        tmp = out.with_suffix(".tmp")
        pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, out)
        took = time.time() - start
        print(f"{label} {store}: {table.num_rows} cutouts in {took:.0f} s ({table.num_rows / took:.1f}/s)", flush=True)


# --- assembling model sets -----------------------------------------------------------------------------

class Scores:
    """Per-model score columns of one model set, looked up across the Parquet files of a scores folder."""

    def __init__(self, folder: Path, sources: dict[str, str]):
        self.folder, self.sources = folder, sources
        self._cache: dict[Path, dict] = {}

    def _table(self, label: str, store: str) -> dict | None:
        import pyarrow.parquet as pq

        path = self.folder / f"{label}__{store}.parquet"
        if not path.exists():
            return None
        if path not in self._cache:
            self._cache[path] = pq.read_table(path).to_pydict()
        return self._cache[path]

    def model(self, model: str, store: str) -> tuple[np.ndarray, dict] | None:
        label = self.sources[model]
        table = self._table(label, store) or self._table(label + FAMILY[model], store)
        if table is None or column(model) not in table:
            return None
        return np.asarray(table[column(model)], np.float64), table

    def matrix(self, stores: list[str]) -> tuple[np.ndarray, dict] | tuple[None, None]:
        """(n, 7) scores over the stores where all seven models were scored, and their truth columns."""
        blocks, truths = [], []
        for store in stores:
            found = [self.model(m, store) for m in MODEL_NAMES]
            if any(f is None for f in found):
                continue
            blocks.append(np.stack([f[0] for f in found], axis=1))
            truths.append(found[0][1])
        if not blocks:
            return None, None
        keys = set.intersection(*(set(t) for t in truths))
        truth = {k: np.concatenate([np.asarray(t[k]) for t in truths]) for k in keys if k.startswith("TRUTH_")}
        return np.concatenate(blocks), truth

    def single(self, model: str, stores: list[str]) -> np.ndarray | None:
        found = [self.model(model, s) for s in stores]
        found = [f[0] for f in found if f is not None]
        return np.concatenate(found) if found else None


def ensemble_scores(kind: str, probs: np.ndarray, path: str | None) -> np.ndarray:
    """``kind`` "mean", or "tsne" / "stack" with the fitted file's ``path``."""
    from lensengine.engine.ensemble import MeanEnsemble, StackEnsemble, TSNEEnsemble

    scorer = {"tsne": TSNEEnsemble, "stack": StackEnsemble}[kind](path) if kind != "mean" else MeanEnsemble()
    return np.asarray(scorer.score(probs.astype(np.float32))[0], np.float64)


# --- report ----------------------------------------------------------------------------------------------

def _finite(x: np.ndarray) -> np.ndarray:
    return x[np.isfinite(x)]


def figures(lens: np.ndarray, sky: np.ndarray, hard: np.ndarray | None, truth: dict, real: np.ndarray | None,
            j0946: float | None, frozen: np.ndarray | None, frozen_kind: np.ndarray | None, bootstrap: int,
            sky_v3: np.ndarray | None = None, star_forming: np.ndarray | None = None) -> dict:
    from lensengine.training.metrics import operating_metrics, threshold_at_fpr

    out: dict = {}
    om = operating_metrics(lens, _finite(sky), bootstrap=bootstrap, seed=1)
    out["sky"] = {k: om.get(k) for k in ("n_lens", "n_neg", "auroc", "tpr_fpr1", "tpr_fpr01", "tpr_fpr001",
                                         "purity_1e3", "ci", "reasons")}
    if hard is not None:
        oh = operating_metrics(lens, _finite(hard), bootstrap=bootstrap, seed=1)
        out["hard"] = {k: oh.get(k) for k in ("n_neg", "auroc", "tpr_fpr1", "tpr_fpr01", "ci", "reasons")}
    thr1, _ = threshold_at_fpr(_finite(sky), 1e-2)
    thr01, _ = threshold_at_fpr(_finite(sky), 1e-3)
    out["threshold_fpr1"], out["threshold_fpr01"] = float(thr1), float(thr01)
    easy = truth.get("TRUTH_LABEL_EASY")
    if easy is not None:
        out["sky"]["tpr_fpr01_easy"] = float(np.mean(lens[easy == 1] > thr01))
        out["sky"]["tpr_fpr1_easy"] = float(np.mean(lens[easy == 1] > thr1))
    bins = {}
    for name, values, edges in (("arc_snr", truth.get("TRUTH_ARC_SNR"), (6, 10, 25, 50, np.inf)),
                                ("theta_e", truth.get("TRUTH_THETA_E"), (0, 0.5, 1.0, 1.5, np.inf))):
        if values is None:
            continue
        for lo, hi in zip(edges[:-1], edges[1:]):
            sel = (values >= lo) & (values < hi)
            bins[f"{name} {lo:g}-{hi:g}"] = {"n": int(sel.sum()), "tpr_fpr01": float(np.mean(lens[sel] > thr01))
                                             if sel.any() else None,
                                             "tpr_fpr1": float(np.mean(lens[sel] > thr1)) if sel.any() else None}
    out["recall_bins"] = bins
    for name, neg in (("sky_v3", sky_v3), ("star_forming", star_forming)):
        if neg is not None and neg.size:
            o = operating_metrics(lens, _finite(neg), bootstrap=bootstrap, seed=1)
            out[name] = {k: o.get(k) for k in ("n_neg", "auroc", "tpr_fpr1", "tpr_fpr01", "ci", "reasons")}
            out[name]["above_sky_fpr01"] = float(np.mean(neg > thr01))
    if real is not None:
        out["real"] = {"n": int(real.size), "above_fpr1": int(np.sum(real > thr1)),
                       "above_fpr01": int(np.sum(real > thr01)), "max": float(np.nanmax(real))}
    out["j0946"] = j0946
    if frozen is not None and frozen_kind is not None:
        cuts = {"ellipticals": np.quantile(frozen[frozen_kind == "elliptical"], 0.99),
                "ordinary mix": np.quantile(frozen[np.isin(frozen_kind, ORDINARY)], 0.99),
                "all": np.quantile(frozen, 0.99)}
        out["frozen"] = {name: {"threshold": float(cut), "j0946_above": bool(j0946 is not None and j0946 > cut),
                                "survey_lenses_above": float(np.mean(lens > cut)),
                                "easy_lenses_above": float(np.mean(lens[easy == 1] > cut)) if easy is not None
                                else None}
                         for name, cut in cuts.items()}
    return out


def _render_stores(scores: "Scores") -> dict | None:
    """Per rendering (v3, v4) the score matrices of the paired lens, sky and hard stores; None if any is missing."""
    out: dict = {"v3": {}, "v4": {}}
    for role, (old, new) in V4_PAIRS.items():
        for version, store in (("v3", old), ("v4", new)):
            p, t = scores.matrix([store])
            if p is None:
                return None
            out[version][role] = p[t["TRUTH_LABEL"] == 1] if role == "lenses" else p
    return out


def render_pair(v4: dict, pick) -> dict:
    """AUROC and TPR at FPR 1 % / 0.1 % of the same scenes rendered by simulator v3 and by v4."""
    from lensengine.training.metrics import operating_metrics

    out = {}
    for version, st in v4.items():
        lens = pick(st["lenses"])
        sky = operating_metrics(lens, _finite(pick(st["sky"])), bootstrap=0, min_false_positives=5)
        hard = operating_metrics(lens, _finite(pick(st["hard"])), bootstrap=0)
        out[version] = {"auroc": sky["auroc"], "tpr_fpr1": sky["tpr_fpr1"], "tpr_fpr01": sky["tpr_fpr01"],
                        "hard_auroc": hard["auroc"], "hard_tpr_fpr1": hard["tpr_fpr1"], "n": [len(lens), sky["n_neg"]]}
    return out


def judged_v4(lens_p: np.ndarray, lens_t: dict, sky_p: np.ndarray, hard_p: np.ndarray | None, pick,
              bootstrap: int) -> dict:
    """The judged figures on simulator-v4 pixels: survey lenses against every ``v4_sky*`` store and ``v4_hard``."""
    positive = lens_t["TRUTH_LABEL"] == 1
    truth = {k: v[positive] for k, v in lens_t.items()}
    out = figures(pick(lens_p)[positive], pick(sky_p), None if hard_p is None else pick(hard_p), truth,
                  None, None, None, None, bootstrap)
    return {k: out[k] for k in ("sky", "hard", "threshold_fpr1", "threshold_fpr01", "recall_bins") if k in out}


def _stores(folder: Path, prefix: str) -> list[str]:
    """Names of the stores starting with ``prefix`` that any label has scored in ``folder``."""
    return sorted({p.name.split("__")[1][:-8] for p in folder.glob(f"*__{prefix}*.parquet")})


def _picker(cfg: dict, key: str):
    """The set's score per cutout from a (n, 7) matrix: one model's column, or the set's ensemble."""
    if key == "ensemble":
        return lambda p: ensemble_scores(cfg["ensemble"], p, cfg.get("tsne") or cfg.get("stack"))
    return lambda p, j=MODEL_NAMES.index(key): p[:, j]


def report(folder: Path, sets: dict, out_dir: Path, bootstrap: int) -> dict:
    results: dict = {}
    for name, cfg in sets.items():
        scores = Scores(folder, cfg["models"])
        sky_stores, v4_sky_stores = _stores(folder, "sky"), _stores(folder, "v4_sky")
        v4_lens_p, v4_lens_t = scores.matrix(["v4_lenses"])
        v4_sky_p, _ = scores.matrix(v4_sky_stores)
        v4_hard_p, _ = scores.matrix(["v4_hard"])
        has_v4 = v4_lens_p is not None and v4_sky_p is not None
        lens_p, lens_t = scores.matrix(["lenses"])
        if lens_p is None:
            if not has_v4:
                raise SystemExit(f"{name}: neither the lenses store nor the v4 stores are scored by every model of "
                                 "the set")
            # a set scored on the v4 stores only: its figures there and nothing else
            results[name] = {key: {"v4": judged_v4(v4_lens_p, v4_lens_t, v4_sky_p, v4_hard_p, _picker(cfg, key),
                                                   bootstrap)} for key in (*MODEL_NAMES, "ensemble")}
            continue
        positive = lens_t["TRUTH_LABEL"] == 1
        truth = {k: v[positive] for k, v in lens_t.items()}
        hard_p, _ = scores.matrix(["hard"])
        real_p, _ = scores.matrix(["real_galaxies"])
        j_p, _ = scores.matrix(["j0946"])
        frozen_p, frozen_t = scores.matrix(["frozen_nonlenses"])
        frozen_kind = None if frozen_t is None else frozen_t["TRUTH_KIND"].astype(str)
        v3_p, _ = scores.matrix(["sf_sky"])
        sf_p, sf_t = scores.matrix(list(SF_STORES))
        is_sf = None if sf_t is None else sf_t["TRUTH_KIND"].astype(str) == "star-forming"
        v4 = _render_stores(scores)
        results[name] = {}
        for key in (*MODEL_NAMES, "ensemble"):
            pick = _picker(cfg, key)
            sky = pick(scores.matrix(sky_stores)[0]) if key == "ensemble" else scores.single(key, sky_stores)
            results[name][key] = figures(
                pick(lens_p)[positive], sky, None if hard_p is None else pick(hard_p), truth,
                None if real_p is None else pick(real_p), None if j_p is None else float(pick(j_p)[0]),
                None if frozen_p is None else pick(frozen_p), frozen_kind, bootstrap,
                sky_v3=None if v3_p is None else pick(v3_p), star_forming=None if sf_p is None else pick(sf_p)[is_sf])
            if v4 is not None:
                results[name][key]["render"] = render_pair(v4, pick)
            if has_v4:
                results[name][key]["v4"] = judged_v4(v4_lens_p, v4_lens_t, v4_sky_p, v4_hard_p, pick, bootstrap)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "sky_check.json").write_text(json.dumps({"sets": sets, "results": results}, indent=1, default=float))
    text = markdown(results, sets)
    (out_dir / "sky_check.md").write_text(text)
    print(text)
    return results


def _f(value, digits: int = 3) -> str:
    return "—" if value is None or (isinstance(value, float) and not np.isfinite(value)) else f"{value:.{digits}f}"


def _ci(figs: dict, key: str) -> str:
    """A figure with its 95 % bootstrap interval when there is one."""
    ci = (figs.get("ci") or {}).get(key, {}).get("95")
    return _f(figs.get(key)) + (f" [{_f(ci[0])}, {_f(ci[1])}]" if ci and figs.get(key) is not None else "")


def _rows(results: dict, sets: dict | None, has=lambda r: True):
    """(model, set name, figures) in table order, for the figures where ``has`` holds.  A single model's row is
    given once per distinct weights: the first set that uses them, its name followed by how many later sets
    share them."""
    for key in (*MODEL_NAMES, "ensemble"):
        rows = [(name, per[key]) for name, per in results.items() if has(per[key])]
        label = {name: None if key == "ensemble" or not sets else sets.get(name, {}).get("models", {}).get(key)
                 for name, _ in rows}
        for name, r in rows:
            if label[name] is None:
                yield key, name, r
                continue
            same = [n for n, _ in rows if label[n] == label[name]]
            if same[0] == name:
                more = len(same) - 1
                yield key, name + (f" (+{more} later sets, same weights)" if more else ""), r


def markdown(results: dict, sets: dict | None = None) -> str:
    lines = ["| model | set | AUROC sky | TPR@1% sky | TPR@0.1% sky | TPR@0.1% easy | AUROC hard | TPR@1% hard "
             "| J0946 P | real above 1% / 0.1% thr | n sky / hard / lenses |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for key, name, r in _rows(results, sets, lambda r: "sky" in r):
        sky, hard, real = r["sky"], r.get("hard", {}), r.get("real", {})
        lines.append(f"| {key} | {name} | {_f(sky['auroc'])} | {_f(sky['tpr_fpr1'])} | {_f(sky['tpr_fpr01'])} "
                     f"| {_f(sky.get('tpr_fpr01_easy'))} | {_f(hard.get('auroc'))} | {_f(hard.get('tpr_fpr1'))} "
                     f"| {_f(r['j0946'])} | {real.get('above_fpr1', '—')} / {real.get('above_fpr01', '—')} of "
                     f"{real.get('n', '—')} | {sky['n_neg']} / {hard.get('n_neg', '—')} / {sky['n_lens']} |")
    lines += ["", "Hidden-check negatives (b9282e6 `non-lenses --seed 4242`): threshold at 1 % of each group; "
              "J0946 above it?; fraction of simulated survey lenses (all / easy) above it.", "",
              "| model | set | ellipticals | ordinary mix | all |", "|---|---|---|---|---|"]
    for key, name, r in _rows(results, sets, lambda r: bool(r.get("frozen"))):
        fz = r["frozen"]
        cells = [f"{_f(v['threshold'], 2)}: {'yes' if v['j0946_above'] else 'no'}, "
                 f"{_f(v['survey_lenses_above'], 2)} / {_f(v['easy_lenses_above'], 2)}" for v in fz.values()]
        lines.append(f"| {key} | {name} | " + " | ".join(cells) + " |")
    v3 = list(_rows(results, sets, lambda r: bool(r.get("sky_v3") or r.get("star_forming"))))
    if v3:
        lines += ["", "Simulator version 3 (real star-forming galaxies among the negatives): the v3 sky mix "
                  "(`sf_sky`) as a whole, and its star-forming galaxies with those of the v3 hard mix alone; "
                  "'above' is the share of them above the realistic mix's 0.1 % threshold.", "",
                  "| model | set | AUROC sky v3 | TPR@1% sky v3 | TPR@0.1% sky v3 | AUROC star-forming "
                  "| TPR@1% star-forming | star-forming above | n sky v3 / star-forming |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for key, name, r in v3:
            a, b = r.get("sky_v3") or {}, r.get("star_forming") or {}
            lines.append(f"| {key} | {name} | {_f(a.get('auroc'))} | {_f(a.get('tpr_fpr1'))} "
                         f"| {_f(a.get('tpr_fpr01'))} | {_f(b.get('auroc'))} | {_f(b.get('tpr_fpr1'))} "
                         f"| {_f(b.get('above_sky_fpr01'))} | {a.get('n_neg', '—')} / {b.get('n_neg', '—')} |")
    judged4 = list(_rows(results, sets, lambda r: bool(r.get("v4"))))
    if judged4:
        lines += ["", "Simulator v4 (the pixels the simulator draws now): the survey lenses (`v4_lenses`) against "
                  "every `v4_sky*` store and the v4 hard mix (`v4_hard`); 95 % bootstrap intervals.", "",
                  "| model | set | AUROC sky v4 | TPR@1% sky v4 [95 %] | TPR@0.1% sky v4 [95 %] | AUROC hard v4 "
                  "| TPR@1% hard v4 [95 %] | n sky / hard / lenses |", "|---|---|---|---|---|---|---|---|"]
        for key, name, r in judged4:
            sky, hard = r["v4"]["sky"], r["v4"].get("hard", {})
            lines.append(f"| {key} | {name} | {_f(sky['auroc'])} | {_ci(sky, 'tpr_fpr1')} | {_ci(sky, 'tpr_fpr01')} "
                         f"| {_f(hard.get('auroc'))} | {_ci(hard, 'tpr_fpr1')} "
                         f"| {sky['n_neg']} / {hard.get('n_neg', '—')} / {sky['n_lens']} |")
    rendered = [(key, name, r["render"]) for key, name, r in _rows(results, sets, lambda r: bool(r.get("render")))]
    if rendered:
        lines += ["", "Rendering (simulator v4): the same scenes - survey lenses against the v3 sky mix and the v3 "
                  "hard mix - drawn by simulator v3 (lensed light and knots sampled at pixel centres) and by v4 "
                  "(sub-pixel lensed light, pixel-integrated knots). 5 000 sky negatives: TPR@0.1% rests on 5 false "
                  "positives (a rough figure).", "",
                  "| model | set | AUROC sky v3 → v4 | TPR@1% sky v3 → v4 | TPR@0.1% sky v3 → v4 "
                  "| AUROC hard v3 → v4 | TPR@1% hard v3 → v4 |", "|---|---|---|---|---|---|---|"]
        for key, name, r in rendered:
            a, b = r["v3"], r["v4"]
            cells = [f"{_f(a[k])} → {_f(b[k])}" for k in ("auroc", "tpr_fpr1", "tpr_fpr01", "hard_auroc",
                                                          "hard_tpr_fpr1")]
            lines.append(f"| {key} | {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# --- compare: candidates against a reference on the v4 judged stores, paired ---------------------------------

PROXY_GROUPS = ("ellipticals", "ordinary mix", "all")


def _log_odds(cfg: dict, probs: np.ndarray, stack) -> np.ndarray:
    """The set's ensemble as log-odds (a stack's decision: no ties where P rounds to 1)."""
    from lensengine.engine.stack import logit

    if stack is not None:
        return stack.decision(probs)
    return logit(ensemble_scores(cfg["ensemble"], probs, cfg.get("tsne") or cfg.get("stack")))


def _auroc_sorted(lens: np.ndarray, neg_sorted: np.ndarray) -> float:
    """AUROC with ties counted half, negatives sorted ascending."""
    below = np.searchsorted(neg_sorted, lens, side="left")
    ties = np.searchsorted(neg_sorted, lens, side="right") - below
    return float(np.mean(below + 0.5 * ties) / neg_sorted.size)


def _tpr(lens: np.ndarray, neg: np.ndarray, fpr: float) -> float:
    from lensengine.training.metrics import threshold_at_fpr

    t, _ = threshold_at_fpr(neg, fpr)
    return float(np.mean(lens > t))


def _proxy_cuts(frozen: np.ndarray, kind: np.ndarray) -> dict[str, float]:
    return {"ellipticals": float(np.quantile(frozen[kind == "elliptical"], 0.99)),
            "ordinary mix": float(np.quantile(frozen[np.isin(kind, ORDINARY)], 0.99)),
            "all": float(np.quantile(frozen, 0.99))}


def _paired_figures(d: dict, idx: dict | None = None) -> dict[str, float]:
    """The paired figures of one set on (optionally resampled) lenses, sky, hard and frozen negatives."""
    pick = (lambda k: d[k]) if idx is None else (lambda k: d[k][idx[k]])
    lens, sky, hard = pick("lens"), pick("sky"), pick("hard")
    out = {"auroc": _auroc_sorted(lens, np.sort(sky)), "tpr_fpr1": _tpr(lens, sky, 1e-2),
           "tpr_fpr01": _tpr(lens, sky, 1e-3), "hard_tpr_fpr1": _tpr(lens, hard, 1e-2)}
    if d.get("frozen") is not None:
        kind = d["frozen_kind"] if idx is None else d["frozen_kind"][idx["frozen"]]
        for group, cut in _proxy_cuts(pick("frozen"), kind).items():
            out["proxy " + group] = float(np.mean(lens > cut))
    return out


JUDGED_V4 = {"lens": "v4_lenses", "sky": "v4_sky", "hard": "v4_hard"}


def compare(folder: Path, sets: dict, reference: str, out_dir: Path, bootstrap: int,
            judged: dict[str, str] | None = None) -> dict:
    """Each set against ``reference`` on the v4 judged stores, resampled together (paired bootstrap).

    ``judged`` names other stores for the three roles (``lens``: a store whose ``TRUTH_LABEL == 1`` rows are the
    lenses; ``sky``: a prefix, every store starting with it; ``hard``: a store), e.g. a selection set kept apart
    from the judged stores to choose among candidates.

    A set's ``"refit": STORE`` fits its stack (balanced, C = 1, as ``lensengine stack fit``) on the scores of
    ``STORE`` (the validation store) and writes it to ``out_dir``; ``"stack": PATH`` uses a fitted one.  Besides
    the paired figures: J0946's score, the degraded real galaxies above the v4 sky mix's 1 % / 0.1 % thresholds,
    and each single network of the set.
    """
    from lensengine.engine.stack import Stack, logit
    from lensengine.training.metrics import threshold_at_fpr

    judged = dict(JUDGED_V4, **(judged or {}))
    out_dir.mkdir(parents=True, exist_ok=True)
    data: dict = {}
    for name, cfg in sets.items():
        scores = Scores(folder, cfg["models"])
        stack = None
        if cfg.get("refit"):
            val_p, val_t = scores.matrix([cfg["refit"]])
            if val_p is None:
                raise SystemExit(f"{name}: {cfg['refit']} is not scored by every model of the set")
            ok = np.isfinite(val_p).all(axis=1)
            stack = Stack.fit(val_p[ok], val_t["TRUTH_LABEL"][ok], MODEL_NAMES, C=1.0, balance=True,
                              meta={"fitted_on": f"{cfg['refit']} scores ({name})"})
            stack.save(out_dir / f"ou_stack_{re.sub(r'[^A-Za-z0-9.-]+', '_', name).strip('_')}.json")
        elif cfg.get("ensemble") == "stack":
            stack = Stack.load(cfg["stack"])
        mats = {role: scores.matrix(stores) for role, stores in
                (("lens", [judged["lens"]]), ("sky", _stores(folder, judged["sky"])), ("hard", [judged["hard"]]),
                 ("real", ["real_galaxies"]), ("j0946", ["j0946"]), ("frozen", ["frozen_nonlenses"]))}
        if any(mats[r][0] is None for r in ("lens", "sky", "hard")):
            raise SystemExit(f"{name}: the judged stores {judged} are not scored by every model of the set")
        lens_keep = mats["lens"][1]["TRUTH_LABEL"] == 1
        d: dict = {"weights": None if stack is None else dict(zip(MODEL_NAMES, map(float, stack.coef))),
                   "singles": {}}
        for key in ("ensemble", *MODEL_NAMES):
            score = (lambda p: _log_odds(cfg, p, stack)) if key == "ensemble" else \
                (lambda p, j=MODEL_NAMES.index(key): logit(p[:, j]))
            lens, sky, hard = (score(mats[r][0]) for r in ("lens", "sky", "hard"))
            entry = {"lens": lens[lens_keep], "sky": _finite(sky), "hard": _finite(hard), "frozen": None}
            if mats["frozen"][0] is not None:
                entry["frozen"] = score(mats["frozen"][0])
                entry["frozen_kind"] = mats["frozen"][1]["TRUTH_KIND"].astype(str)
            figs = _paired_figures(entry)
            t1, t01 = threshold_at_fpr(entry["sky"], 1e-2)[0], threshold_at_fpr(entry["sky"], 1e-3)[0]
            figs["hard_auroc"] = _auroc_sorted(entry["lens"], np.sort(entry["hard"]))
            if mats["j0946"][0] is not None:
                z = float(score(mats["j0946"][0])[0])
                figs["j0946_P"] = float(1.0 / (1.0 + np.exp(-z)))
            if mats["real"][0] is not None:
                real = score(mats["real"][0])
                figs.update(real_above_fpr1=int(np.sum(real > t1)), real_above_fpr01=int(np.sum(real > t01)),
                            real_top_log_odds=float(np.max(real)), threshold_fpr01_log_odds=float(t01))
            if key == "ensemble":
                d.update(entry=entry, figures=figs)
            else:
                d["singles"][key] = figs
        data[name] = d
    ref = data[reference]["entry"]
    rng = np.random.default_rng(2028)
    sizes = {k: ref[k].size for k in ("lens", "sky", "hard", "frozen") if ref.get(k) is not None}
    for name, d in data.items():
        if name == reference:
            continue
        diffs = []
        for _ in range(bootstrap):
            idx = {k: rng.integers(0, n, n) for k, n in sizes.items()}
            a, b = _paired_figures(d["entry"], idx), _paired_figures(ref, idx)
            diffs.append({k: a[k] - b[k] for k in a})
        point_a, point_b = _paired_figures(d["entry"]), _paired_figures(ref)
        d["paired"] = {k: {"diff": point_a[k] - point_b[k],
                           "ci95": [float(np.quantile([x[k] for x in diffs], q)) for q in (0.025, 0.975)]}
                       for k in point_a}
    result = {n: {k: v for k, v in d.items() if k != "entry"} for n, d in data.items()}
    doc = {"sets": sets, "reference": reference, "bootstrap": bootstrap, "judged": judged, "results": result}
    (out_dir / "compare.json").write_text(json.dumps(doc, indent=1, default=float))
    text = compare_markdown(result, reference, judged)
    (out_dir / "compare.md").write_text(text)
    print(text)
    return result


def compare_markdown(result: dict, reference: str, judged: dict[str, str] | None = None) -> str:
    judged = judged or JUDGED_V4
    cols = ("auroc", "tpr_fpr1", "tpr_fpr01", "hard_auroc", "hard_tpr_fpr1", "j0946_P")
    head = ["set", "AUROC sky", "TPR@FPR1%", "TPR@FPR0.1%", "AUROC hard", "TPR@FPR1% hard",
            "J0946 P", "real above 1 % / 0.1 % thr", "top real log-odds / 0.1 % thr",
            *(f"proxy {g}" for g in PROXY_GROUPS)]
    lines = [f"## Ensembles (lenses: {judged['lens']}; sky: {judged['sky']}*; hard: {judged['hard']}; the proxy: "
             "the lenses above each frozen group's 99th percentile)",
             "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, d in result.items():
        f = d["figures"]
        row = [name, *(_f(f.get(c)) for c in cols),
               f"{f.get('real_above_fpr1', '—')} / {f.get('real_above_fpr01', '—')}",
               f"{_f(f.get('real_top_log_odds'), 2)} / {_f(f.get('threshold_fpr01_log_odds'), 2)}",
               *(_f(f.get('proxy ' + g)) for g in PROXY_GROUPS)]
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", f"## Paired against {reference} (95 % bootstrap intervals of the difference)", ""]
    for name, d in result.items():
        if "paired" in d:
            lines.append(f"- {name}: " + "; ".join(
                f"{k} {v['diff']:+.3f} [{v['ci95'][0]:+.3f}, {v['ci95'][1]:+.3f}]" for k, v in d["paired"].items()))
    lines += ["", "## Single networks", "",
              "| set | model | AUROC sky | TPR@FPR1% | TPR@FPR0.1% | TPR@FPR1% hard | J0946 P | real above 1 % / 0.1 % |",
              "|---|---|---|---|---|---|---|---|"]
    for name, d in result.items():
        for model, f in d["singles"].items():
            lines.append(f"| {name} | {model} | {_f(f['auroc'])} | {_f(f['tpr_fpr1'])} | {_f(f['tpr_fpr01'])} | "
                         f"{_f(f['hard_tpr_fpr1'])} | {_f(f.get('j0946_P'))} | "
                         f"{f.get('real_above_fpr1', '—')} / {f.get('real_above_fpr01', '—')} |")
    for name, d in result.items():
        if d["weights"]:
            lines.append(f"\nStack weights, {name}: " + ", ".join(f"{m} {w:+.2f}" for m, w in d["weights"].items()))
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("score", help="score stores with one model directory into Parquet files")
    s.add_argument("--label", required=True)
    s.add_argument("--models", required=True, type=Path)
    s.add_argument("--only", default="", help="comma-separated model names (default: all in --models)")
    s.add_argument("--out", required=True, type=Path)
    s.add_argument("stores", nargs="+", type=Path)
    r = sub.add_parser("report", help="side-by-side operating-point report from the Parquet files")
    r.add_argument("--scores", required=True, type=Path)
    r.add_argument("--sets", required=True, type=Path)
    r.add_argument("--out", required=True, type=Path)
    r.add_argument("--bootstrap", type=int, default=300)
    c = sub.add_parser("compare", help="sets against a reference set on the v4 judged stores, paired bootstrap")
    c.add_argument("--scores", required=True, type=Path)
    c.add_argument("--sets", required=True, type=Path)
    c.add_argument("--reference", required=True, help="name of the set the others are compared with")
    c.add_argument("--out", required=True, type=Path)
    c.add_argument("--bootstrap", type=int, default=1000)
    c.add_argument("--lenses", default=JUDGED_V4["lens"], help="store of the lenses (its TRUTH_LABEL == 1 rows)")
    c.add_argument("--sky", default=JUDGED_V4["sky"], help="prefix of the sky-mix stores")
    c.add_argument("--hard", default=JUDGED_V4["hard"], help="store of the hard negatives")
    args = ap.parse_args(argv)
    if args.cmd == "score":
        score(args.label, args.models, [n for n in args.only.split(",") if n], args.out, args.stores)
    elif args.cmd == "compare":
        sets = json.loads(args.sets.read_text())
        if args.reference not in sets:
            sys.exit(f"--reference {args.reference!r} is not one of the sets: {', '.join(sets)}")
        compare(args.scores, sets, args.reference, args.out, args.bootstrap,
                {"lens": args.lenses, "sky": args.sky, "hard": args.hard})
    else:
        report(args.scores, json.loads(args.sets.read_text()), args.out, args.bootstrap)


if __name__ == "__main__":
    main()
