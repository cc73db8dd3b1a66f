"""Stack-aware training (issue 11): train one network where the rest of the stacked ensemble is wrong.

The shipped ensemble is a logistic stack, ``z = b + Σ_m c_m ℓ_m`` over the seven networks' log-odds
``ℓ_m``.  Its thresholds at FPR 0.1-1 % are set by the few sky negatives that OU-66 and OU-VIS both
score high (models/README.md, stops 31-39): a network trained alone improves its own ranking, but not
on those.  Stack-aware training keeps the other members fixed and adds the stack's loss to the
network's own, ``(1 - w) CE(ℓ) + w BCE(b + c ℓ + Σ_{m≠model} c_m ℓ_m)``: the gradient of the second
term is ``c (σ(z) - y)``, large exactly where the stack is wrong whatever this network says.  This is
gradient boosting with the network as the learner; the network's own term keeps its P a classifier
on its own (it is a column of every catalogue).

The other members' scores come from a score table of the training store (``lensengine run --tiles
train.zarr --scores train_scores``), matched to its cutouts by tile and row and checked by object ID as
``lensengine store top`` does (:func:`lensengine.catalogs.subset.score_table_rows`).  Training cutouts
without a finite score of every other member train on the network's own loss alone.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def shipped_stack_file() -> Path:
    import lensengine.models

    return Path(lensengine.models.__file__).parent / "ou_stack.json"


def stack_offsets(scores, stack_file, model: str, store) -> tuple[np.ndarray, float]:
    """``(offsets, coef)``: for every row of ``store`` (store order) the stack's log-odds without ``model``
    (NaN where the table has no finite score for it), and ``model``'s weight in the stack."""
    from lensengine.catalogs.catalog import score_column
    from lensengine.catalogs.subset import score_table_rows
    from lensengine.engine.stack import Stack, logit
    from lensengine.training.data import _open_store

    stack = Stack.load(stack_file)
    if model not in stack.models:
        raise ValueError(f"{stack_file}: the stack has no member {model!r} (members: {', '.join(stack.models)})")
    others = [m for m in stack.models if m != model]
    coef = dict(zip(stack.models, stack.coef))
    store = _open_store(store)
    first = store.first_rows()
    n = store.total_cutouts()
    offsets = np.full(n, np.nan)
    for tile, (rows, probs) in score_table_rows(scores, [score_column(m) for m in others], store).items():
        with np.errstate(invalid="ignore"):  # a flagged cutout's NaN score makes its offset NaN: none to lean on
            offsets[first[tile] + rows] = stack.intercept + logit(probs) @ np.array([coef[m] for m in others])
    lacking = int(np.isnan(offsets).sum())
    if lacking == n:
        raise ValueError(f"{scores}: no cutout of the training store {store.path} has a finite score of every "
                         f"other member of the stack: is it the score table of that store?")
    if lacking:
        log.warning("stack-aware training: %d of %d training-store cutouts have no finite score of every other "
                    "member in %s; they train on %s's own loss alone", lacking, n, scores, model)
    return offsets, float(coef[model])
