"""Synthetic seven-model score vectors for OU-T-SNE tests and benchmarks.

Real OU-T-SNE inputs are the seven CNNs' P(lens) on a labelled training set.
Until trained models exist, :func:`synthetic_scores` draws 7-vectors with the
same character: scores piled up near 0 and 1, models that agree on easy
objects, and sub-populations that only some models see (lenses bright in the
NISP bands, lenses only VIS resolves, non-lenses that fool one family).
"""

from __future__ import annotations

import numpy as np

__all__ = ["synthetic_scores"]

# Mean logit per population and model (columns in MODEL_NAMES order:
# OU-J, OU-Y, OU-H, OU-JYH, OU-66, OU-VIS, OU-200).
_LENS_TYPES = np.array([
    [4.0, 4.0, 4.0, 5.0, 5.0, 4.0, 5.0],      # bright, compact rings: everyone sees them
    [3.0, 2.5, 3.5, 4.0, 3.0, -2.5, 1.0],     # red arcs: NISP models only
    [-2.0, -2.5, -2.0, -1.0, 1.5, 4.0, 3.5],  # small, blue arcs: VIS resolves them
    [-1.5, -1.5, -1.5, -1.0, -0.5, -1.0, -0.5],  # faint: nearly lost
])
_LENS_WEIGHTS = np.array([0.35, 0.25, 0.25, 0.15])
_NONLENS_TYPES = np.array([
    [-5.0, -5.0, -5.0, -5.5, -5.5, -5.0, -5.5],  # ellipticals: clean
    [-3.0, -3.0, -3.0, -3.0, -1.0, 2.0, 0.5],    # spirals / rings that fool VIS
    [1.5, 1.0, 2.0, 1.0, -1.5, -4.0, -2.0],      # red neighbours that fool NISP
])
_NONLENS_WEIGHTS = np.array([0.7, 0.15, 0.15])


def synthetic_scores(n: int, seed: int = 0, *, lens_fraction: float = 0.5,
                     noise: float = 1.5) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(P, y)``: ``(n, 7)`` float32 scores in [0, 1] and ``(n,)`` int8 labels.

    Each object's seven logits are its population's means plus a shared
    per-object offset (the models agree on how easy an object is) and
    independent per-model noise of width ``noise``.
    """
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < lens_fraction).astype(np.int8)
    means = np.empty((n, 7))
    is_lens = y == 1
    means[is_lens] = _LENS_TYPES[rng.choice(len(_LENS_TYPES), is_lens.sum(), p=_LENS_WEIGHTS)]
    means[~is_lens] = _NONLENS_TYPES[rng.choice(len(_NONLENS_TYPES), (~is_lens).sum(), p=_NONLENS_WEIGHTS)]
    logits = means + rng.normal(0.0, 1.0, (n, 1)) + rng.normal(0.0, noise, (n, 7))
    return (1.0 / (1.0 + np.exp(-logits))).astype(np.float32), y
