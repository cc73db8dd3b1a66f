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
train.zarr --scores train_scores``) and are looked up by object ID (or ``ROW``, for tables without
one).  Training cutouts without a finite score of every other member train on the network's own
loss alone.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def shipped_stack_file() -> Path:
    import lensengine.models

    return Path(lensengine.models.__file__).parent / "ou_stack.json"


def _store_rows(table, store, scores) -> np.ndarray:
    """Each score-table row's row in ``store`` (store order), -1 where it names no cutout of it.

    A run's table names each cutout by ``TILE`` and ``ROW`` (stores joined by ``store concat`` may repeat
    object IDs), checked against its ``OBJECT_ID``; a table without them is matched by ``OBJECT_ID``, which
    must then be unique in the store.
    """
    names = set(table.column_names)
    if "OBJECT_ID" not in names:
        raise ValueError(f"{scores}: the score table has no OBJECT_ID column (use the table `lensengine run --scores` "
                         "writes)")
    keys = table["OBJECT_ID"].to_numpy(zero_copy_only=False).astype(np.int64)
    sizes = [store.n_cutouts(t) for t in store.tiles]
    ids = np.concatenate([np.asarray(store.read_index(t, 0, k)["object_id"], np.int64)
                          for t, k in zip(store.tiles, sizes)] or [np.zeros(0, np.int64)])
    if {"TILE", "ROW"} <= names:
        first = dict(zip(store.tiles, np.cumsum([0] + sizes)))
        size = dict(zip(store.tiles, sizes))
        tiles = table["TILE"].to_numpy(zero_copy_only=False).astype(str)
        local = table["ROW"].to_numpy(zero_copy_only=False).astype(np.int64)
        start = np.array([first.get(t, -1) for t in tiles], np.int64)
        inside = (start >= 0) & (local >= 0) & (local < np.array([size.get(t, 0) for t in tiles]))
        rows = np.where(inside, start + local, -1)
        rows[inside & (ids[np.where(inside, rows, 0)] != keys)] = -1
        return rows
    if np.unique(ids).size != ids.size:
        raise ValueError(f"{scores}: the training store repeats object IDs, so a table without TILE and ROW "
                         "cannot name its cutouts: use the table `lensengine run --scores` writes")
    if ids.size == 0:
        return np.full(keys.size, -1)
    order = np.argsort(ids, kind="stable")
    at = order[np.clip(np.searchsorted(ids, keys, sorter=order), 0, ids.size - 1)]
    return np.where(ids[at] == keys, at, -1)


def stack_offsets(scores, stack_file, model: str, store) -> tuple[np.ndarray, float]:
    """``(offsets, coef)``: for every row of ``store`` (store order) the stack's log-odds without ``model``
    (NaN where the table has no finite score for it), and ``model``'s weight in the stack."""
    from lensengine.catalogs.catalog import score_arrow
    from lensengine.engine.stack import Stack, logit
    from lensengine.training.data import _open_store

    stack = Stack.load(stack_file)
    if model not in stack.models:
        raise ValueError(f"{stack_file}: the stack has no member {model!r} (members: {', '.join(stack.models)})")
    others = [m for m in stack.models if m != model]
    columns = ["P_" + m.replace("-", "_") for m in others]
    table = score_arrow(scores)
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise ValueError(f"{scores}: the score table lacks {missing}, which stack-aware training of {model} needs "
                         f"(score the training store with every other member of {stack_file})")
    probs = np.stack([table[c].to_numpy(zero_copy_only=False).astype(np.float64) for c in columns], 1)
    coef = dict(zip(stack.models, stack.coef))
    with np.errstate(invalid="ignore"):
        values = stack.intercept + logit(probs) @ np.array([coef[m] for m in others])
    values[~np.isfinite(probs).all(1)] = np.nan
    store = _open_store(store)
    n = store.total_cutouts()
    rows = _store_rows(table, store, scores)
    inside = rows >= 0
    offsets = np.full(n, np.nan)
    offsets[rows[inside]] = values[inside]
    lacking = int(np.isnan(offsets).sum())
    foreign = sorted(set(table["TILE"].to_pylist()) - set(store.tiles)) if "TILE" in table.column_names else []
    why = f" (its tiles {foreign} are not the store's {list(store.tiles)})" if foreign else ""
    if lacking == n:
        raise ValueError(f"{scores}: none of its {table.num_rows} rows matches a cutout of the training store "
                         f"{store.path}{why}: is it the score table of that store?")
    if lacking:
        log.warning("stack-aware training: %d of %d training-store cutouts have no finite score of every other "
                    "member in %s%s; they train on %s's own loss alone", lacking, n, scores, why, model)
    return offsets, float(coef[model])
