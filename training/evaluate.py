"""Evaluate ONNX lens finders on a labelled store: metrics, ROC curves, recall by truth (SPEC §8).

:func:`evaluate` scores every readable chunk of a store with each model of
one or more model directories (the engine's scoring core, the code
``lensengine run`` scores with, on the CPU), then computes :func:`~lensengine.training.metrics.binary_metrics`
per model, recall split by the truth columns the store has (Einstein radius,
arc S/N, source colour, simulation kind), and writes ``report.json``,
``report.md`` and ``roc.png`` with the paper's Table 5/6 numbers beside ours.

Model names: the first directory's models keep their plain names (``OU-66``);
the models of every further directory are prefixed by its label
(``published:OU-66``).  A directory is given as ``DIR`` (label: its folder
name) or ``LABEL=DIR``.

Operating points (SPEC §8 and issue 11; definitions in
:mod:`lensengine.training.metrics`): per model, the TPR at FPR 1 %, 0.1 % and
0.01 % (``tpr_fpr1``, ``tpr_fpr01``, ``tpr_fpr001``; None with a reason when the
negatives are too few), the purity at a prevalence (``purity_1e3`` by default)
and bootstrap intervals, computed once per negative set:

* lenses: the label-1 cutouts of ``lenses`` (a store of lenses) or else of ``data``;
* negative sets: the label-0 cutouts of ``data`` (set ``data``) and of each
  ``negatives`` store (``{"sky": store, "hard": store}``).  The top-level
  figures of a model are those of the first ``negatives`` set, or of ``data``
  when no ``negatives`` are given;
* check sets (``checks``, e.g. the real-imaging stores of ``lensengine
  realcheck``): every cutout's P(lens) with the truth ``name`` and how many lie
  above each operating threshold of that first negative set.

The threshold-0.5 table is computed on ``data``, or, without ``data``, on the
lenses and all negative sets together.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lensengine.catalogs.flags import Flag
from lensengine.engine.models import ModelEntry, discover_models
from lensengine.training.metrics import (CI_LEVELS, DEFAULT_PREVALENCE, MIN_FALSE_POSITIVES, OPERATING_FPRS,
                                         PAPER_TABLE5, PAPER_TABLE6, binary_metrics, operating_metrics,
                                         purity_key, recall_by_bins, recall_by_category, roc_curve)

log = logging.getLogger(__name__)

__all__ = ["ModelSource", "ScoreSet", "parse_model_dirs", "parse_labelled_stores", "score_store", "evaluate",
           "summary_json", "TRUTH_BINS", "ENSEMBLE_NAME", "SUMMARY_KEYS", "OPERATING_KEYS"]

ENSEMBLE_NAME = "OU-T-SNE"
#: The per-model numbers of ``lensengine evaluate --json``.
SUMMARY_KEYS = ("n", "auroc", "f1", "fbeta", "precision", "recall", "accuracy", "tpr0", "tpr10")
#: The operating-point TPRs of ``--json`` (besides the purity key and ``ci``/``reasons``).
OPERATING_KEYS = tuple(OPERATING_FPRS)
#: Bin edges for recall split by numeric truth columns.
TRUTH_BINS = {
    "theta_e": [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 10.0],
    "arc_snr": [0.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 1e9],
}
#: Categorical truth columns for recall split by value.
TRUTH_CATEGORIES = ("source_colour", "kind")

_UNUSABLE = np.uint32(Flag.UNREADABLE | Flag.INCOMPLETE_WRITE)


@dataclass
class ModelSource:
    """One ``--models`` directory: its label (None for the first, plain-named one) and models."""

    label: str | None
    directory: Path
    entries: list[ModelEntry] = field(default_factory=list)

    def key(self, name: str) -> str:
        return name if self.label is None else f"{self.label}:{name}"


def parse_model_dirs(values) -> list[ModelSource]:
    """``["runs/models", "published=models/published"]`` -> ModelSources (first one unlabelled)."""
    sources = []
    for i, value in enumerate(values):
        value = str(value)
        label, sep, path = value.partition("=")
        if not sep:
            label, path = Path(value).name, value
        directory = Path(path)
        src = ModelSource(None if i == 0 else label, directory, discover_models(directory))
        if not src.entries:
            raise ValueError(f"no lensengine ONNX models in {directory}")
        sources.append(src)
    keys = [s.key(e.name) for s in sources for e in s.entries]
    dupes = sorted({k for k in keys if keys.count(k) > 1})
    if dupes:
        raise ValueError(f"model names {dupes} occur twice: give the directories distinct labels (LABEL=DIR)")
    return sources


@dataclass
class ScoreSet:
    """Scores of every model on one store: labels, truth columns, P(lens) per model (NaN = not scored)."""

    labels: np.ndarray
    truth: dict[str, np.ndarray]
    scores: dict[str, np.ndarray]
    n_read: int = 0
    skipped: int = 0
    unreadable_chunks: int = 0
    seconds: float = 0.0


def _source_ensemble(src: ModelSource) -> str | None:
    """The fitted OU-T-SNE a run with this source's models would use (path), or None for the mean."""
    from lensengine.engine.ensemble import load_ensemble

    ensemble = load_ensemble([e.name for e in src.entries], src.directory)
    return str(ensemble.path) if hasattr(ensemble, "path") else None


def score_store(sources: list[ModelSource], store, *, batch_size: int = 32, progress=None) -> ScoreSet:
    """Score every labelled cutout of ``store`` with every model of ``sources``, exactly as ``lensengine run`` does.

    Each source's models go through the engine's scoring core
    (:func:`lensengine.engine.scoring.score_store`, CPU): the same
    preprocessing, batching, output checks and ensemble as a run, so the
    numbers are a run's.  A source whose directory holds a fitted OU-T-SNE
    for its seven models gets an ``OU-T-SNE`` column: the run's
    ``P_ENSEMBLE``.  Cutouts in unreadable or incompletely written chunks and
    cutouts without a 0/1 label are left out (counted in ``skipped`` /
    ``unreadable_chunks``).
    """
    from lensengine.catalogs.catalog import ENSEMBLE_COLUMN, score_column
    from lensengine.catalogs.store import SurveyStore
    from lensengine.engine.models import check_bands_available
    from lensengine.engine.scoring import score_store as score_chunks

    t0 = time.perf_counter()
    store = store if isinstance(store, SurveyStore) else SurveyStore.open(store)
    if "label" not in store.truth_columns:
        raise ValueError(f"store {store.path} has no truth column 'label': evaluation needs labelled cutouts")
    for src in sources:
        for e in src.entries:
            check_bands_available(e, store.bands, f"store {store.path}")
    columns = [c for c in store.truth_columns if c != "label"]
    total = store.total_cutouts() * len(sources)
    labels, truth, scores = [], {}, {}
    n_read = skipped = unreadable = done = 0
    for i, src in enumerate(sources):
        ensemble = _source_ensemble(src)
        wanted = {src.key(e.name): score_column(e.name) for e in src.entries}
        if ensemble is not None:
            wanted[src.key(ENSEMBLE_NAME)] = ENSEMBLE_COLUMN
        for key in wanted:
            scores[key] = []
        for rows in score_chunks(store, src.entries, ensemble, device="cpu", batch_size=batch_size):
            flags = rows["FLAGS"]
            done += flags.size
            if progress is not None:
                progress(done, total)
            if (flags & np.uint32(Flag.UNREADABLE)).any():
                if i == 0:
                    unreadable += 1
                continue
            label = rows["TRUTH_LABEL"]
            keep = np.flatnonzero(((flags & _UNUSABLE) == 0) & np.isin(label, (0, 1)))
            for key, column in wanted.items():
                scores[key].append(rows[column][keep])
            if i == 0:  # the rows kept depend on the store alone: take them once
                n_read += flags.size
                skipped += flags.size - keep.size
                labels.append(label[keep].astype(np.int8))
                for c in columns:
                    truth.setdefault(c, []).append(rows[f"TRUTH_{c.upper()}"][keep])
    cat = (lambda parts, dtype=None: np.concatenate(parts) if parts else np.zeros(0, dtype=dtype))
    return ScoreSet(labels=cat(labels, np.int8), truth={c: cat(v) for c, v in truth.items()},
                    scores={k: cat(v, np.float32) for k, v in scores.items()}, n_read=n_read, skipped=skipped,
                    unreadable_chunks=unreadable, seconds=time.perf_counter() - t0)


def _add_ensembles(sources: list[ModelSource], scores: ScoreSet, ensembles: dict | None) -> None:
    """Replace each source's ``OU-T-SNE`` column by the callable ``ensembles[label]`` ({model: P} -> P).

    ``ensembles`` None keeps the run's OU-T-SNE that :func:`score_store` found
    beside each source's models; a dict decides per source label, and a source
    without an entry gets no ``OU-T-SNE`` column.
    """
    if ensembles is None:
        return
    for src in sources:
        scores.scores.pop(src.key(ENSEMBLE_NAME), None)
        scorer = ensembles.get(src.label)
        if scorer is None:
            continue
        inputs = {e.name: scores.scores[src.key(e.name)] for e in src.entries}
        try:
            p = np.asarray(scorer(inputs), dtype=np.float32)
        except (KeyError, ValueError) as exc:
            log.warning("OU-T-SNE ensemble for %s could not score: %s", src.directory, exc)
            continue
        scores.scores[src.key(ENSEMBLE_NAME)] = p


def _clean(value):
    """JSON-safe: NaN/inf -> None, numpy scalars -> Python."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, (np.floating, float)):
        v = float(value)
        return v if math.isfinite(v) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def _plain(key: str) -> str:
    return key.rsplit(":", 1)[-1]


def parse_labelled_stores(values, what: str = "--negatives") -> dict[str, Path]:
    """``["sky=sky.zarr", "hard.zarr"]`` -> ``{"sky": sky.zarr, "hard": hard.zarr}`` (label: folder stem)."""
    out: dict[str, Path] = {}
    for value in values:
        label, sep, path = str(value).partition("=")
        if not sep:
            label, path = Path(value).stem, value
        if not label:
            raise ValueError(f"{what} {value!r}: empty label (give LABEL=STORE)")
        if label in out:
            raise ValueError(f"{what} label {label!r} given twice: give each store its own LABEL=STORE")
        out[label] = Path(path)
    return out


def _scored(sources, store, ensembles, progress) -> ScoreSet:
    scores = score_store(sources, store, progress=progress)
    _add_ensembles(sources, scores, ensembles)
    return scores


def _join(sets: list[ScoreSet], rows: list[np.ndarray]) -> ScoreSet:
    """The ``rows`` of each ScoreSet in one (truth columns: those all of them have)."""
    keys = [k for k in sets[0].scores if all(k in s.scores for s in sets)]
    cols = [c for c in sets[0].truth if all(c in s.truth for s in sets)]
    return ScoreSet(labels=np.concatenate([s.labels[r] for s, r in zip(sets, rows)]),
                    truth={c: np.concatenate([s.truth[c][r] for s, r in zip(sets, rows)]) for c in cols},
                    scores={k: np.concatenate([s.scores[k][r] for s, r in zip(sets, rows)]) for k in keys},
                    n_read=sum(s.n_read for s in sets), skipped=sum(s.skipped for s in sets),
                    unreadable_chunks=sum(s.unreadable_chunks for s in sets),
                    seconds=sum(s.seconds for s in sets))


def _finite(p: np.ndarray) -> np.ndarray:
    p = np.asarray(p, dtype=np.float64)
    return p[np.isfinite(p)]


def _check_report(scores: ScoreSet, key: str, thresholds: dict[str, float | None]) -> dict:
    """P(lens) of every cutout of a check store and how many lie above each operating threshold."""
    p = np.asarray(scores.scores[key], dtype=np.float64)
    ok = np.isfinite(p)
    names = scores.truth.get("name")
    names = [str(n) for n in names] if names is not None else [str(i) for i in range(p.size)]
    above = {k: (None if t is None else int(np.sum(p[ok] > t))) for k, t in thresholds.items()}
    above["p_ge_0.5"] = int(np.sum(p[ok] >= 0.5))
    flagged = {k: [n for n, v, o in zip(names, p, ok) if o and t is not None and v > t]
               for k, t in thresholds.items()}
    return {"n": int(p.size), "n_unscored": int((~ok).sum()), "labels": scores.labels.tolist(),
            "max_p": float(p[ok].max()) if ok.any() else None, "thresholds": thresholds, "above": above,
            "flagged": flagged, "p": dict(zip(names, (float(v) for v in p)))}


def _model_report(y, p, truth) -> dict:
    ok = np.isfinite(p)
    yk, pk = y[ok], p[ok]
    out = {"metrics": binary_metrics(yk, pk), "n_unscored": int((~ok).sum()), "recall_by": {}}
    for col, edges in TRUTH_BINS.items():
        if col in truth:
            out["recall_by"][col] = recall_by_bins(yk, pk, truth[col][ok], edges)
    for col in TRUTH_CATEGORIES:
        if col in truth:
            out["recall_by"][col] = recall_by_category(yk, pk, truth[col][ok])
    return out


def _operating_summary(op: dict) -> dict:
    keys = [k for k in op if k.startswith("tpr_fpr")] + [purity_key(op["prevalence"])]
    return {"n_lens": op["n_lens"], "n_neg": op["n_neg"], "auroc": op["auroc"], **{k: op[k] for k in keys},
            "ci": op["ci"], "reasons": op["reasons"]}


def summary_json(report: dict) -> dict:
    """Per model: ``n, auroc, f1, fbeta, precision, recall, accuracy, tpr0, tpr10`` (threshold 0.5 table),
    the operating figures of the primary negative set (``tpr_fpr1``, ``tpr_fpr01``, ``tpr_fpr001``,
    ``purity_1e3``, ``ci``, ``reasons``), ``negatives`` (the same per negative set) and ``checks``
    (per check store: ``n``, ``max_p``, ``above`` each operating threshold, ``p`` per cutout name)."""
    out = {}
    primary = report.get("primary_negatives")
    for k, v in report["models"].items():
        row = {m: v["metrics"][m] for m in SUMMARY_KEYS}
        ops = v.get("operating", {})
        if primary in ops:
            row.update({m: x for m, x in _operating_summary(ops[primary]).items() if m not in ("auroc",)})
            row["negatives"] = {label: _operating_summary(op) for label, op in ops.items()}
        if v.get("checks"):
            row["checks"] = {label: {m: c[m] for m in ("n", "max_p", "above", "flagged", "p")}
                             for label, c in v["checks"].items()}
        out[k] = row
    return out


def _roc_png(y, scores: dict, path: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 6))
    for key, p in scores.items():
        ok = np.isfinite(p)
        if np.unique(y[ok]).size < 2:
            continue
        fpr, tpr, _ = roc_curve(y[ok], p[ok])
        ax.plot(fpr, tpr, lw=1.2, ls="--" if ":" in key else "-", label=key)
    ax.plot([0, 1], [0, 1], color="0.7", lw=0.8)
    ax.set(xlabel="false-positive rate", ylabel="true-positive rate (recall)", xlim=(0, 1), ylim=(0, 1.01),
           title="ROC")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "—"
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def _markdown(report: dict) -> str:
    lines = [f"# Evaluation on `{report['data']}`", "",
             f"{report['n_labelled']} labelled cutouts ({report['n_lens']} lenses), {report['skipped']} skipped, "
             f"{report['unreadable_chunks']} unreadable chunks; threshold {report['threshold']}, "
             f"F-beta with beta = {report['beta']}.", "",
             "| model | n | precision | recall | accuracy | F1 | F-beta | AUROC | TPR0 | TPR10 |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for key, r in report["models"].items():
        m = r["metrics"]
        lines.append(f"| {key} | {m['n']} | " + " | ".join(_fmt(m[k]) for k in
                     ("precision", "recall", "accuracy", "f1", "fbeta", "auroc", "tpr0", "tpr10")) + " |")
    lines += ["", "## Beside the paper (its own EVAL data: compare trends, not values)", "",
              "Table 5 (F-beta, precision, recall, AUROC, accuracy) and Table 6 (test recall at 0.5).", "",
              "| model | ours F-beta | paper | ours precision | paper | ours recall | paper T5 | paper T6 test |"
              " ours AUROC | paper | ours accuracy | paper |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for key, r in report["models"].items():
        m, t5, t6 = r["metrics"], PAPER_TABLE5.get(_plain(key), {}), PAPER_TABLE6.get(_plain(key), {})
        lines.append(f"| {key} | {_fmt(m['fbeta'])} | {_fmt(t5.get('fbeta'))} | {_fmt(m['precision'])} | "
                     f"{_fmt(t5.get('precision'))} | {_fmt(m['recall'])} | {_fmt(t5.get('recall'))} | "
                     f"{_fmt(t6.get('test'))} | {_fmt(m['auroc'])} | {_fmt(t5.get('auroc'))} | "
                     f"{_fmt(m['accuracy'])} | {_fmt(t5.get('accuracy'))} |")
    cols = sorted({c for r in report["models"].values() for c in r["recall_by"]})
    for col in cols:
        lines += ["", f"## Recall by `{col}`", ""]
        keys = [k for k, r in report["models"].items() if col in r["recall_by"]]
        first = report["models"][keys[0]]["recall_by"][col]
        heads = [(f"{b['lo']:g}–{b['hi']:g}" if "lo" in b else b["value"]) for b in first]
        lines.append("| model | " + " | ".join(heads) + " |")
        lines.append("|---" * (len(heads) + 1) + "|")
        lines.append("| lenses | " + " | ".join(str(b["n"]) for b in first) + " |")
        for k in keys:
            bins = report["models"][k]["recall_by"][col]
            lines.append(f"| {k} | " + " | ".join(_fmt(b["recall"]) for b in bins) + " |")
    lines += _markdown_operating(report)
    if report.get("roc_png"):
        lines += ["", f"![ROC curves]({Path(report['roc_png']).name})"]
    return "\n".join(lines) + "\n"


def _with_ci(value, ci: dict | None, level: str) -> str:
    if value is None:
        return "—"
    if not ci or level not in ci:
        return f"{value:.3f}"
    lo, hi = ci[level]
    return f"{value:.3f} [{lo:.3f}, {hi:.3f}]"


def _markdown_operating(report: dict) -> list[str]:
    op = report.get("operating")
    if not op:
        return []
    pkey = op["purity_key"]
    level = str(round(100 * max(op["levels"]))) if op["levels"] else ""
    lines = ["", "## Operating points", "",
             f"Lenses: {op['lenses']}. Threshold per negative set where its false-positive rate is at most "
             f"the target (flagged: score strictly above; ties count against the finder). "
             f"Purity at prevalence {op['prevalence']:g} at the FPR {op['purity_fpr']:g} threshold. "
             f"Brackets: {level} % bootstrap interval ({op['bootstrap']} resamples of lenses and negatives "
             f"separately, seed {op['seed']}). A figure is given only with at least {op['min_fp']} false "
             "positives allowed at its threshold (— otherwise; reasons below)."]
    heads = [f"TPR at FPR {100 * f:g} %" for f in OPERATING_FPRS.values()]
    for label, meta in op["negative_sets"].items():
        lines += ["", f"### Negatives `{label}` ({meta['store']})", "",
                  "| model | lenses | negatives | AUROC | " + " | ".join(heads) + f" | {pkey} |",
                  "|---" * (len(heads) + 5) + "|"]
        reasons = {}
        for key, r in report["models"].items():
            o = r.get("operating", {}).get(label)
            if o is None:
                continue
            cells = [_with_ci(o[k], o["ci"].get(k), level) for k in (*OPERATING_FPRS, pkey)]
            lines.append(f"| {key} | {o['n_lens']} | {o['n_neg']} | {_fmt(o['auroc'])} | " + " | ".join(cells) + " |")
            for k, why in o["reasons"].items():
                reasons.setdefault(f"{k}: {why}", None)
        if reasons:
            lines += [""] + [f"- {why}" for why in reasons]
    for label, meta in op.get("check_sets", {}).items():
        lines += ["", f"### Check `{label}` ({meta['store']}, {meta['n']} cutouts)", "",
                  f"Cutouts above each operating threshold of the negatives `{report['primary_negatives']}`, "
                  "and with P ≥ 0.5.", "",
                  "| model | max P | " + " | ".join(f"above FPR {100 * f:g} %" for f in OPERATING_FPRS.values())
                  + " | P ≥ 0.5 | flagged at FPR 1 % |", "|---" * (len(OPERATING_FPRS) + 4) + "|"]
        for key, r in report["models"].items():
            c = r.get("checks", {}).get(label)
            if c is None:
                continue
            first = next(iter(OPERATING_FPRS))
            lines.append(f"| {key} | {_fmt(c['max_p'])} | "
                         + " | ".join(_fmt(c["above"][k]) for k in OPERATING_FPRS)
                         + f" | {c['above']['p_ge_0.5']} | {', '.join(c['flagged'][first][:10]) or '—'} |")
        if meta["n"] <= 3:
            lines += ["", "| model | " + " | ".join(f"P({n})" for n in meta["names"]) + " |",
                      "|---" * (meta["n"] + 1) + "|"]
            for key, r in report["models"].items():
                c = r.get("checks", {}).get(label)
                if c is not None:
                    lines.append(f"| {key} | " + " | ".join(_fmt(c["p"].get(n)) for n in meta["names"]) + " |")
    return lines


def evaluate(model_dirs, data=None, out_dir=None, *, negatives: dict | None = None, lenses=None,
             checks: dict | None = None, prevalence: float = DEFAULT_PREVALENCE, purity_fpr: float = 1e-3,
             bootstrap: int = 1000, levels=CI_LEVELS, seed: int = 0,
             min_false_positives: int = MIN_FALSE_POSITIVES, ensembles: dict | None = None,
             progress=None) -> dict:
    """Score the stores with the models of ``model_dirs`` and build (and write) the report.

    ``data``: a labelled (mixed) store; ``lenses``: a store whose label-1
    cutouts are the lenses (default: those of ``data``); ``negatives``:
    ``{label: store}`` whose label-0 cutouts form one negative set each;
    ``checks``: ``{label: store}`` scored cutout by cutout against the operating
    thresholds (module docstring).  ``ensembles`` maps a source label (None for
    the first directory) to an OU-T-SNE callable ``{model: P} -> P``; by default
    the run's OU-T-SNE beside each directory's models is used.  Returns the
    report dict (JSON-safe); writes report.json, report.md and roc.png into
    ``out_dir`` when given.
    """
    negatives, checks = dict(negatives or {}), dict(checks or {})
    if data is None and (lenses is None or not negatives):
        raise ValueError("give a labelled store (data), or lenses and at least one negatives store")
    sources = parse_model_dirs(model_dirs) if not all(isinstance(s, ModelSource) for s in model_dirs) \
        else list(model_dirs)
    mixed = _scored(sources, data, ensembles, progress) if data is not None else None
    lens_set = _scored(sources, lenses, ensembles, progress) if lenses is not None else mixed
    neg_sets = {label: _scored(sources, store, ensembles, progress) for label, store in negatives.items()}
    if mixed is not None and "data" not in neg_sets and np.any(mixed.labels == 0):
        neg_sets = {**neg_sets, "data": mixed}
        negatives = {**negatives, "data": data}
    check_sets = {label: _scored(sources, store, ensembles, progress) for label, store in checks.items()}
    lens_rows = np.flatnonzero(lens_set.labels == 1)
    if lenses is not None and lens_rows.size < lens_set.labels.size:
        log.warning("%d cutouts of %s are not labelled lenses and are left out of the lenses",
                    lens_set.labels.size - lens_rows.size, lenses)
    neg_rows = {}
    for label, sset in neg_sets.items():
        neg_rows[label] = np.flatnonzero(sset.labels == 0)
        if label != "data" and neg_rows[label].size < sset.labels.size:
            log.warning("%d cutouts of negatives %r are labelled lenses and are left out",
                        sset.labels.size - neg_rows[label].size, label)
    table = mixed if mixed is not None else _join(
        [lens_set, *neg_sets.values()], [lens_rows, *neg_rows.values()])
    primary = next(iter(neg_sets), None)
    y = table.labels.astype(np.int64)
    report = {
        "data": str(data) if data is not None else f"lenses {lenses} + negatives {', '.join(negatives)}",
        "n_labelled": int(y.size), "n_lens": int((y == 1).sum()), "n_read": table.n_read,
        "skipped": table.skipped, "unreadable_chunks": table.unreadable_chunks,
        "seconds": round(table.seconds + sum(s.seconds for s in check_sets.values())
                         + (lens_set.seconds if lenses is not None else 0.0)
                         + sum(s.seconds for k, s in neg_sets.items() if s is not mixed), 2),
        "threshold": 0.5, "beta": 0.03,
        "sources": [{"label": s.label, "directory": str(s.directory),
                     "models": {e.name: {"path": str(e.path), "sha256": e.sha256, "source": e.source}
                                for e in s.entries}} for s in sources],
        "paper": {"table5": PAPER_TABLE5, "table6": PAPER_TABLE6},
        "primary_negatives": primary,
        "operating": {
            "lenses": f"label-1 cutouts of {lenses if lenses is not None else data} ({lens_rows.size})",
            "prevalence": float(prevalence), "purity_fpr": float(purity_fpr), "purity_key": purity_key(prevalence),
            "fprs": dict(OPERATING_FPRS), "bootstrap": int(bootstrap), "seed": int(seed),
            "levels": [float(lv) for lv in levels], "min_fp": int(min_false_positives),
            "negative_sets": {label: {"store": str(negatives[label]), "n": int(neg_rows[label].size)}
                              for label in neg_sets},
            "check_sets": {label: {"store": str(checks[label]), "n": int(sset.labels.size),
                                   "names": [str(n) for n in sset.truth.get("name", range(sset.labels.size))]}
                           for label, sset in check_sets.items()},
        },
        "models": {},
    }
    for key, p in table.scores.items():
        r = _model_report(y, p.astype(np.float64), table.truth)
        if key in lens_set.scores:
            lens_p = _finite(lens_set.scores[key][lens_rows])
            r["operating"] = {
                label: operating_metrics(lens_p, _finite(sset.scores[key][neg_rows[label]]),
                                         prevalence=prevalence, purity_fpr=purity_fpr, bootstrap=bootstrap,
                                         levels=levels, seed=seed, min_false_positives=min_false_positives)
                for label, sset in neg_sets.items() if key in sset.scores}
            if primary in r["operating"]:
                pts = r["operating"][primary]["points"]
                thresholds = {k: pts[k]["threshold"] for k in OPERATING_FPRS}
                r["checks"] = {label: _check_report(sset, key, thresholds)
                               for label, sset in check_sets.items() if key in sset.scores}
        report["models"][key] = r
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        if y.size:
            report["roc_png"] = str(_roc_png(y, table.scores, out / "roc.png"))
        report = _clean(report)
        (out / "report.json").write_text(json.dumps(report, indent=2))
        (out / "report.md").write_text(_markdown(report))
    return _clean(report)
