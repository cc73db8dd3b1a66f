"""Summaries of simulated sets and the realism check against the published networks."""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["summarise", "score_published", "realism_table"]


def summarise(batch) -> list[str]:
    """Human-readable lines: label fraction, kinds, θ_E / arc S/N / magnitudes of the lenses."""
    t = batch.truth
    label = np.asarray(t["label"]).astype(int)
    kinds, counts = np.unique(np.asarray(t["kind"]).astype(str), return_counts=True)
    lines = [f"{len(batch)} cutouts, {label.mean():.3f} labelled lenses",
             "kinds: " + ", ".join(f"{k} {c}" for k, c in zip(kinds, counts))]
    if label.any():
        sel = label == 1
        q = lambda name: np.nanpercentile(np.asarray(t[name], dtype=float)[sel], [10, 50, 90])  # noqa: E731
        for name in ("theta_e", "z_lens", "z_source", "arc_snr", "magnification", "mag_lens_VIS", "mag_source_VIS"):
            lo, med, hi = q(name)
            lines.append(f"lenses {name:15s} 10/50/90%: {lo:7.2f} {med:7.2f} {hi:7.2f}")
        lines.append(f"lenses resampled (attempts > 1): {(np.asarray(t['attempts'])[sel] > 1).mean():.2f}")
    return lines


def score_published(batch, weights_dir, names=("OU-66", "OU-200"), chunk: int = 100) -> dict[str, np.ndarray]:
    """P(lens) of the paper's published networks (torch) through the shared preprocessing."""
    import torch

    from lensengine.engine.preprocess import Preprocessor
    from lensengine.engine.specs import get_spec
    from lensengine.training.export import load_published
    from lensengine.training.networks import p_lens

    nets = {n: load_published(Path(weights_dir), n) for n in names}
    prep = Preprocessor([get_spec(n) for n in names])
    out = {n: np.empty(len(batch), dtype=np.float32) for n in names}
    bands = batch.bands()
    with torch.inference_mode():
        for s in range(0, len(batch), chunk):
            prepared = prep({b: (None if a is None else a[s:s + chunk]) for b, a in bands.items()})
            for n in names:
                out[n][s:s + chunk] = p_lens(nets[n](torch.from_numpy(prepared.inputs[n]))).numpy()
    return out


def realism_table(batch, scores: dict[str, np.ndarray]) -> dict[str, list[dict]]:
    """Per model: overall AUROC/precision/recall/accuracy at 0.5, then the fraction P >= 0.5 per kind."""
    from lensengine.training.metrics import binary_metrics

    label = np.asarray(batch.truth["label"]).astype(int)
    kinds = np.asarray(batch.truth["kind"]).astype(str)
    out = {}
    for name, p in scores.items():
        rows = [{"subset": "all", "n": int(len(label)), **binary_metrics(label, p)}]
        for k in sorted(set(kinds)):
            sel = kinds == k
            rows.append({"subset": k, "n": int(sel.sum()), "frac_p>=0.5": float((p[sel] >= 0.5).mean()),
                         "mean_p": float(p[sel].mean())})
        out[name] = rows
    return out
