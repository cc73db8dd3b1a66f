"""Evaluate ONNX lens finders on a labelled store: metrics, ROC curves, recall by truth (SPEC §8).

:func:`evaluate` scores every readable chunk of a store with each model of
one or more model directories (ONNX Runtime, CPU provider, on the engine's
Preprocessor output), then computes :func:`~lensengine.training.metrics.binary_metrics`
per model, recall split by the truth columns the store has (Einstein radius,
arc S/N, source colour, simulation kind), and writes ``report.json``,
``report.md`` and ``roc.png`` with the paper's Table 5/6 numbers beside ours.

Model names: the first directory's models keep their plain names (``OU-66``);
the models of every further directory are prefixed by its label
(``published:OU-66``).  A directory is given as ``DIR`` (label: its folder
name) or ``LABEL=DIR``.
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
from lensengine.engine.models import INPUT_NAME, ModelEntry, discover_models
from lensengine.engine.preprocess import Preprocessor
from lensengine.engine.specs import FAMILY_STAMP, ModelSpec
from lensengine.training.metrics import (PAPER_TABLE5, PAPER_TABLE6, binary_metrics, recall_by_bins,
                                         recall_by_category, roc_curve)

log = logging.getLogger(__name__)

__all__ = ["ModelSource", "ScoreSet", "parse_model_dirs", "score_store", "evaluate", "summary_json",
           "TRUTH_BINS", "ENSEMBLE_NAME", "SUMMARY_KEYS"]

ENSEMBLE_NAME = "OU-T-SNE"
#: The per-model numbers of ``lensengine evaluate --json``.
SUMMARY_KEYS = ("n", "auroc", "f1", "fbeta", "precision", "recall", "accuracy", "tpr0", "tpr10")
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


def _session(path: Path):
    from lensengine.engine.sessions import get_session

    return get_session(str(path), "cpu")


def _spec_key(entry: ModelEntry) -> tuple:
    return (tuple(entry.bands), int(entry.stamp))


def score_store(sources: list[ModelSource], store, *, batch_size: int = 32, progress=None) -> ScoreSet:
    """Score every labelled cutout of ``store`` with every model of ``sources`` (chunk by chunk)."""
    from lensengine.catalogs.store import SurveyStore
    from lensengine.training.data import iter_store_chunks

    t0 = time.perf_counter()
    store = store if isinstance(store, SurveyStore) else SurveyStore.open(store)
    if "label" not in store.truth_columns:
        raise ValueError(f"store {store.path} has no truth column 'label': evaluation needs labelled cutouts")
    models = [(src.key(e.name), e) for src in sources for e in src.entries]
    for key, e in models:
        missing = [b for b in e.bands if b not in store.bands]
        if missing:
            raise ValueError(f"model {key} ({e.path}) reads bands {list(e.bands)} but store {store.path} "
                             f"holds {list(store.bands)}: missing {missing}")
    # one preprocessing input per distinct (bands, stamp), shared by models with the same contract
    specs = {}
    for _, e in models:
        k = _spec_key(e)
        if k not in specs:
            family = e.architecture or next(f for f, s in FAMILY_STAMP.items() if s == e.stamp)
            specs[k] = ModelSpec(f"in{len(specs)}", family, k[0], 0)
    prep = Preprocessor(list(specs.values()))
    sessions = {key: _session(e.path) for key, e in models}
    labels, truth, scores = [], {}, {key: [] for key, _ in models}
    columns = [c for c in store.truth_columns if c != "label"]
    n_read = skipped = 0
    from lensengine.training.data import LoadReport

    report = LoadReport()
    total = store.total_cutouts()
    for tile, index, batch in iter_store_chunks(store, report):
        n = len(batch)
        n_read += n
        label = np.asarray(batch.truth["label"])
        keep = ((np.asarray(batch.flags, dtype=np.uint32) & _UNUSABLE) == 0) & np.isin(label, (0, 1))
        skipped += int((~keep).sum())
        rows = np.flatnonzero(keep)
        if rows.size == 0:
            continue
        bands = {b: (None if a is None else a[rows]) for b, a in batch.bands().items()}
        prepared = prep(bands, rows.size)
        labels.append(label[rows].astype(np.int8))
        for c in columns:
            truth.setdefault(c, []).append(np.asarray(batch.truth[c])[rows])
        for key, e in models:
            s = specs[_spec_key(e)]
            x, usable = prepared.inputs[s.name], prepared.usable[s.name]
            p = np.full(rows.size, np.nan, dtype=np.float32)
            ok = np.flatnonzero(usable)
            for start in range(0, ok.size, batch_size):
                sel = ok[start:start + batch_size]
                p[sel] = sessions[key].run(None, {INPUT_NAME: np.ascontiguousarray(x[sel])})[0].reshape(-1)
            scores[key].append(p)
        if progress is not None:
            progress(n_read, total)
    cat = (lambda parts, dtype=None: np.concatenate(parts) if parts else np.zeros(0, dtype=dtype))
    return ScoreSet(labels=cat(labels, np.int8), truth={c: cat(v) for c, v in truth.items()},
                    scores={k: cat(v, np.float32) for k, v in scores.items()}, n_read=n_read, skipped=skipped,
                    unreadable_chunks=len(report.unreadable_chunks), seconds=time.perf_counter() - t0)


def _ensemble_scorer(source: ModelSource):
    """The OU-T-SNE ensemble of a model directory, when the t-SNE plugin offers one for it (else None)."""
    try:
        from lensengine.plugins import tsne
    except ImportError:  # pragma: no cover
        return None
    loader = getattr(tsne, "load_ensemble", None)
    if loader is None:
        return None
    try:
        return loader(source.directory)
    except (FileNotFoundError, ValueError) as exc:
        log.info("no OU-T-SNE ensemble in %s (%s)", source.directory, exc)
        return None


def _add_ensembles(sources: list[ModelSource], scores: ScoreSet, ensembles: dict | None) -> None:
    """Add an ``OU-T-SNE`` column per source that has an ensemble (callable: {model: P} -> P)."""
    for src in sources:
        scorer = (ensembles or {}).get(src.label) if ensembles is not None else _ensemble_scorer(src)
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


def summary_json(report: dict) -> dict:
    """``{model: {n, auroc, f1, fbeta, precision, recall, accuracy, tpr0, tpr10}}`` from a report."""
    return {k: {m: v["metrics"][m] for m in SUMMARY_KEYS} for k, v in report["models"].items()}


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
    if report.get("roc_png"):
        lines += ["", f"![ROC curves]({Path(report['roc_png']).name})"]
    return "\n".join(lines) + "\n"


def evaluate(model_dirs, data, out_dir=None, *, ensembles: dict | None = None, progress=None) -> dict:
    """Score store ``data`` with the models of ``model_dirs`` and build (and write) the report.

    ``ensembles`` maps a source label (None for the first directory) to an
    OU-T-SNE callable ``{model: P} -> P``; by default the t-SNE plugin is asked.
    Returns the report dict (JSON-safe); writes report.json, report.md and
    roc.png into ``out_dir`` when given.
    """
    sources = parse_model_dirs(model_dirs) if not all(isinstance(s, ModelSource) for s in model_dirs) \
        else list(model_dirs)
    scores = score_store(sources, data, progress=progress)
    _add_ensembles(sources, scores, ensembles)
    y = scores.labels.astype(np.int64)
    report = {
        "data": str(data), "n_labelled": int(y.size), "n_lens": int((y == 1).sum()), "n_read": scores.n_read,
        "skipped": scores.skipped, "unreadable_chunks": scores.unreadable_chunks,
        "seconds": round(scores.seconds, 2), "threshold": 0.5, "beta": 0.03,
        "sources": [{"label": s.label, "directory": str(s.directory),
                     "models": {e.name: {"path": str(e.path), "sha256": e.sha256, "source": e.source}
                                for e in s.entries}} for s in sources],
        "paper": {"table5": PAPER_TABLE5, "table6": PAPER_TABLE6},
        "models": {key: _model_report(y, p.astype(np.float64), scores.truth) for key, p in scores.scores.items()},
    }
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        if y.size:
            report["roc_png"] = str(_roc_png(y, scores.scores, out / "roc.png"))
        report = _clean(report)
        (out / "report.json").write_text(json.dumps(report, indent=2))
        (out / "report.md").write_text(_markdown(report))
    return _clean(report)
