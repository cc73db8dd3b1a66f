"""The cascade (``lensengine run --cascade``): the cheap networks on every cutout, the expensive ones only where needed.

At survey prevalence (about one lens per 1 000 galaxies) nearly every cutout is
a clear non-lens, yet the two 200-px networks (OU-VIS, OU-200) cost about six
times as much as the five 66-px networks together.  The cascade runs the cheap
networks on every cutout and sends a cutout on to the expensive networks and
the ensemble only when the *gate score* -- the mean P(lens) of the cheap
networks -- reaches the *gate*.  A cutout below the gate keeps its cheap scores;
its expensive scores and its ensemble score stay unknown (NaN) and it carries
``CASCADE_SKIPPED``: it is never ranked as if it had been scored.  A cutout
whose cheap scores are incomplete (a bad band, a refused output) always goes on.

How the gate is set depends on the ensemble:

* **mean** (``--ensemble mean``): the gate is a bound, not a fit.  With ``M``
  cheap and ``K`` expensive networks, each P(lens) at most 1, a cutout whose
  cheap mean is below ``(N t - K) / M`` (``N = M + K``) cannot reach a mean of
  ``t`` over all ``N``; so at the run's threshold ``t`` the candidate catalogue
  is exactly the full run's.  (If an expensive network refuses its output the
  mean is over fewer networks, and the bound still holds for any ``t < 1``.)
* **OU-T-SNE, the stack** (the shipped default) or any other ensemble: no bound exists, so the gate is chosen
  on validation data for each threshold -- the lowest gate score of a
  validation lens the full ensemble finds, less a safety margin -- and shipped
  in ``cascade.json`` beside the models, with how it was chosen.  A run uses
  the entry of the largest validated threshold at or below its own (a gate
  that keeps the lenses found at ``t0`` keeps those found at any ``t >= t0``)
  and refuses a threshold below every validated one.

``cascade.json`` also names which models are cheap and which expensive; without
it the models of the largest stamp are the expensive ones.
``python benchmarks/bench_cascade.py derive`` re-derives the file from scored
validation stores.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from lensengine.engine.models import file_sha256

__all__ = ["Cascade", "CASCADE_FILE", "mean_bound", "plan_cascade", "validated_gate", "gate_scores"]

CASCADE_FILE = "cascade.json"
#: taken off the mean bound so that float32 rounding in the ensemble's mean can never turn "below" into "at"
BOUND_SLACK = 1e-5


@dataclass(frozen=True)
class Cascade:
    """What a run's workers need to cascade: which models run always, which only past the gate, and the gate."""

    cheap: tuple[str, ...]
    expensive: tuple[str, ...]
    gate: float          # a cutout goes on when the mean of its cheap P(lens) is >= gate
    rule: str            # "bound" (mean ensemble, lossless at the threshold) or "validated" (cascade.json)
    threshold: float     # the candidate threshold the gate was set for
    source: str = ""     # the cascade.json it came from ("" when the split was made by stamp)

    def passes(self, cheap_probs: np.ndarray) -> np.ndarray:
        """``(n,)`` True where a cutout goes on to the expensive networks.

        ``cheap_probs`` is ``(n, len(cheap))`` in :attr:`cheap` order; a row with
        a missing (NaN) cheap score always goes on, since its gate score is unknown.
        """
        p = np.asarray(cheap_probs, dtype=np.float64)
        complete = np.isfinite(p).all(axis=1)
        score = np.where(complete, np.where(np.isfinite(p), p, 0.0).mean(axis=1), np.inf)
        return ~complete | (score >= self.gate)

    def describe(self) -> str:
        """One line for logs and the catalogue provenance."""
        return (f"{'+'.join(self.cheap)} always; {'+'.join(self.expensive)} where their mean P >= "
                f"{self.gate:.4f} ({self.rule} gate for threshold {self.threshold:g})")

    def as_dict(self) -> dict:
        return asdict(self)


def gate_scores(cheap_probs: np.ndarray) -> np.ndarray:
    """The gate score of each cutout: the mean of its cheap networks' P(lens) (NaN where one is missing)."""
    return np.asarray(cheap_probs, dtype=np.float64).mean(axis=1)


def mean_bound(threshold: float, n_cheap: int, n_expensive: int) -> float:
    """The cheap mean below which the mean over all networks cannot reach ``threshold`` (each P <= 1)."""
    n = n_cheap + n_expensive
    return (n * threshold - n_expensive) / n_cheap


def validated_gate(cheap_mean: np.ndarray, ensemble_score: np.ndarray, is_lens: np.ndarray, threshold: float,
                   margin: float) -> dict:
    """The gate for ``threshold`` chosen on validation data: keep every validation lens the ensemble finds.

    ``cheap_mean`` is :func:`gate_scores` of the validation cutouts,
    ``ensemble_score`` the full ensemble's score of the same cutouts and
    ``is_lens`` their truth.  The gate is the lowest gate score among the lenses
    with ``ensemble_score >= threshold``, less ``margin`` (clipped at 0); the
    entry records how many lenses that was and what fraction of the validation
    non-lenses pass it.
    """
    cheap_mean = np.asarray(cheap_mean, np.float64)
    score = np.asarray(ensemble_score, np.float64)
    lens = np.asarray(is_lens, bool)
    with np.errstate(invalid="ignore"):
        found = lens & np.isfinite(score) & (score >= threshold) & np.isfinite(cheap_mean)
    if not found.any():
        raise ValueError(f"no validation lens has an ensemble score >= {threshold}: cannot choose a gate there")
    lowest = float(cheap_mean[found].min())
    gate = max(0.0, lowest - margin)
    neg = ~lens & np.isfinite(cheap_mean)
    return {"threshold": float(threshold), "gate": gate, "lowest_found": lowest, "margin": float(margin),
            "lenses_found": int(found.sum()),
            "nonlens_pass_fraction": float((cheap_mean[neg] >= gate).mean()) if neg.any() else None}


def _split_by_stamp(models) -> tuple[tuple[str, ...], tuple[str, ...]]:
    largest = max(m.stamp for m in models)
    cheap = tuple(m.name for m in models if m.stamp != largest)
    expensive = tuple(m.name for m in models if m.stamp == largest)
    return cheap, expensive


def plan_cascade(models, ensemble, threshold: float, models_dir: Path | None = None,
                 path: Path | None = None) -> Cascade:
    """The :class:`Cascade` a run with these models, ensemble and threshold uses; raises ``ValueError`` if none fits.

    ``ensemble`` is the run's ensemble object (``name``, and ``path`` for
    OU-T-SNE); ``path`` is a gate file, else ``cascade.json`` in ``models_dir``
    is used when it exists.
    """
    names = [m.name for m in models]
    if path is None and models_dir is not None and (Path(models_dir) / CASCADE_FILE).is_file():
        path = Path(models_dir) / CASCADE_FILE
    spec: dict = {}
    if path is not None:
        try:
            spec = json.loads(Path(path).read_text())
            cheap, expensive = tuple(spec["cheap"]), tuple(spec["expensive"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"cascade gate file {path}: cannot read it ({type(exc).__name__}: {exc}); expected "
                             f"JSON with 'cheap' and 'expensive' model lists") from None
        unknown = sorted(set(cheap + expensive) - set(names))
        left = sorted(set(names) - set(cheap + expensive))
        if unknown or left or set(cheap) & set(expensive):
            raise ValueError(f"cascade gate file {path} splits models {list(cheap)} / {list(expensive)}, but this "
                             f"run has {names}: every model must be cheap or expensive, once")
        order = {n: i for i, n in enumerate(names)}
        cheap = tuple(sorted(cheap, key=order.get))
        expensive = tuple(sorted(expensive, key=order.get))
    else:
        cheap, expensive = _split_by_stamp(models)
    if not cheap or not expensive:
        raise ValueError(f"--cascade needs cheap and expensive models; this run's models {names} all have the "
                         f"same stamp and no {CASCADE_FILE} splits them")
    source = str(path) if path is not None else ""
    if ensemble.name == "mean":
        gate = mean_bound(threshold, len(cheap), len(expensive)) - BOUND_SLACK
        return Cascade(cheap, expensive, gate, "bound", float(threshold), source)
    entry = spec.get("ensembles", {}).get(ensemble.name) if spec else None
    if not entry:
        raise ValueError(f"--cascade with the {ensemble.name} ensemble needs a gate chosen on validation data "
                         f"({CASCADE_FILE} beside the models, entry ensembles.{ensemble.name}); "
                         f"{source or 'no gate file was found'}")
    ens_file = getattr(ensemble, "path", None)
    if entry.get("ensemble_sha256") and ens_file is not None and entry["ensemble_sha256"] != file_sha256(ens_file):
        raise ValueError(f"cascade gate file {path}: its {ensemble.name} gates were chosen for another fitted "
                         f"ensemble than {ens_file} (SHA-256 differs); re-derive them "
                         f"(python benchmarks/bench_cascade.py derive)")
    usable = [g for g in entry.get("gates", []) if g["threshold"] <= threshold]
    if not usable:
        lowest = min((g["threshold"] for g in entry.get("gates", [])), default=None)
        raise ValueError(f"cascade gate file {path}: no {ensemble.name} gate validated at or below threshold "
                         f"{threshold} (lowest validated: {lowest}); run without --cascade or with a higher "
                         f"--threshold")
    best = max(usable, key=lambda g: g["threshold"])
    return Cascade(cheap, expensive, float(best["gate"]), "validated", float(best["threshold"]), source)
