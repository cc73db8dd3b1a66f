"""New stores made of parts of others: ``lensengine store concat`` and ``lensengine store top``.

``concat`` joins stores (each whole, or its first N cutouts) into one, for a training store built from
several simulations.  ``top`` keeps the N cutouts of a store that a score column ranks highest: given a
pool of non-lenses scored by a network (``lensengine run --scores``), these are that network's hardest
negatives, to be joined to a training store (hard-negative mining from a pool; models/README.md, stop 32).

Both stream chunk by chunk (a pool of any size is never held in memory), write a single tile, and build
the output with :meth:`SurveyStore.build`, so a failed or killed command leaves no half-written store.
The sources must agree on bands and truth columns; the output takes the first source's chunk size and
codec.  Cutouts keep their object IDs, coordinates, flags and truth, in source order.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lensengine.catalogs.store import CutoutBatch, SurveyStore

__all__ = ["StorePart", "parse_part", "concat_stores", "top_cutouts", "select_top", "score_table_rows"]


@dataclass(frozen=True)
class StorePart:
    """A source store and how many of its cutouts to take (None: all), in store order."""

    location: Path | str
    limit: int | None = None


def parse_part(text: str) -> StorePart:
    """``STORE`` or ``STORE:N`` (its first N cutouts).  A URL's own colons are left alone."""
    head, sep, tail = text.rpartition(":")
    if sep and tail.isdigit() and head and not head.endswith(":/"):
        location, limit = head, int(tail)
    else:
        location, limit = text, None
    from lensengine.catalogs._location import as_location

    return StorePart(as_location(location), limit)


class _Writer:
    """Appends batches to one tile of a new store in whole chunks (fewer rewrites of a partial shard)."""

    def __init__(self, dest: SurveyStore, tile: str):
        self.dest, self.tile, self.pending, self.n_pending, self.written = dest, tile, [], 0, 0

    def add(self, batch: CutoutBatch) -> None:
        if len(batch):
            self.pending.append(batch)
            self.n_pending += len(batch)
        if self.n_pending >= self.dest.chunk_size:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            batch = CutoutBatch.concatenate(self.pending)
            self.dest.append(self.tile, batch)
            self.written += len(batch)
            self.pending, self.n_pending = [], 0


def _check_same(stores: list[tuple[object, SurveyStore]]) -> None:
    (first_name, first), *rest = stores
    for name, store in rest:
        if store.bands != first.bands:
            raise ValueError(f"{name} holds bands {', '.join(store.bands)}, {first_name} "
                             f"{', '.join(first.bands)}: the stores must hold the same bands")
        if store.truth_columns != first.truth_columns:
            differ = sorted(set(store.truth_columns.items()) ^ set(first.truth_columns.items()))
            raise ValueError(f"{name} and {first_name} differ in their truth columns "
                             f"({', '.join(f'{k} ({v})' for k, v in differ)})")


def _create_args(first: SurveyStore, note: dict) -> dict:
    return dict(survey=first.attrs.get("survey", ""), bands=first.bands, chunk_size=first.chunk_size,
                codec=first.codec, truth_columns=first.truth_columns, provenance=note)


def concat_stores(out, parts: list[StorePart], *, tile: str = "cutouts", overwrite: bool = False,
                  command: str = "", progress=None) -> int:
    """Write the parts, one after the other, into a new store ``out`` (one tile); returns the cutouts written.

    ``progress(n)`` (optional) is called with the cutouts written so far.
    """
    if not parts:
        raise ValueError("give at least one store to join")
    opened = [(part, SurveyStore.open(part.location)) for part in parts]
    _check_same([(part.location, store) for part, store in opened])
    for part, store in opened:
        if part.limit is not None and part.limit > store.total_cutouts():
            raise ValueError(f"{part.location} holds {store.total_cutouts()} cutouts, fewer than the "
                             f"{part.limit} asked for")
    note = {"made_by": command or "lensengine store concat",
            "sources": [{"store": str(part.location), "first": part.limit} for part in parts]}
    with SurveyStore.build(out, overwrite=overwrite, **_create_args(opened[0][1], note)) as dest:
        writer = _Writer(dest, tile)
        for part, store in opened:
            left = store.total_cutouts() if part.limit is None else part.limit
            for name in store.tiles:
                for start, stop in store.chunk_slices(name):
                    stop = min(stop, start + left)
                    if stop <= start:
                        break
                    writer.add(store.read(name, start, stop))
                    left -= stop - start
                    if progress is not None:
                        progress(writer.written + writer.n_pending)
        writer.flush()
        return writer.written


def select_top(scores: np.ndarray, n: int) -> np.ndarray:
    """Indices of the ``n`` highest finite scores, in ascending index order (ties: the earlier row wins)."""
    scores = np.asarray(scores, dtype=np.float64)
    finite = np.flatnonzero(np.isfinite(scores))
    order = finite[np.argsort(-scores[finite], kind="stable")]
    return np.sort(order[:n])


def score_table_rows(table_path, columns, store: SurveyStore) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{tile: (rows, scores)}`` from a score table (``lensengine run --scores``), checked against the store
    (its tiles, rows and object IDs); ``columns``: one name (scores 1-D) or a list (scores ``(n, len)``)."""
    from lensengine.catalogs.catalog import score_arrow, score_table_schema

    wanted = [columns] if isinstance(columns, str) else list(columns)
    try:
        names = score_table_schema(table_path).names
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a non-Parquet file
        raise ValueError(f"{table_path} is not a readable Parquet score table: {exc}") from exc
    missing = [c for c in wanted if c not in names]
    if missing:
        scored = ", ".join(n for n in names if n.startswith("P_")) or "none"
        raise ValueError(f"score table {table_path} has no column {missing[0]!r} (score columns: {scored})")
    if "ROW" not in names:
        raise ValueError(f"score table {table_path} has no ROW column: is it a lensengine score table?")
    table = score_arrow(table_path, [c for c in ("TILE", "ROW", "OBJECT_ID") if c in names] + wanted)
    rows = np.asarray(table.column("ROW"), dtype=np.int64)
    values = np.stack([np.asarray(table.column(c).to_numpy(zero_copy_only=False), dtype=np.float64)
                       for c in wanted], 1)
    if isinstance(columns, str):
        values = values[:, 0]
    if "TILE" in names:
        tiles = np.asarray(table.column("TILE").to_pylist(), dtype=object)
    elif len(store.tiles) == 1:
        tiles = np.full(len(rows), store.tiles[0], dtype=object)
    else:
        raise ValueError(f"score table {table_path} has no TILE column and the store holds {len(store.tiles)} "
                         f"tiles: rows cannot be matched")
    out = {}
    for name in dict.fromkeys(tiles):
        if name not in store.tiles:
            raise ValueError(f"score table {table_path} scores tile {name!r}, which the store does not hold")
        mine = tiles == name
        r = rows[mine]
        n = store.n_cutouts(name)
        if r.size and (r.min() < 0 or r.max() >= n):
            raise ValueError(f"score table {table_path} has rows of tile {name!r} outside its {n} cutouts: "
                             f"is it the table of this store?")
        if np.unique(r).size != r.size:
            raise ValueError(f"score table {table_path} scores some rows of tile {name!r} twice")
        out[name] = (r, values[mine])
    if "OBJECT_ID" in names:
        ids = np.asarray(table.column("OBJECT_ID"), dtype=np.int64)
        _check_ids(store, tiles, rows, ids, table_path)
    return out


def _check_ids(store: SurveyStore, tiles, rows, ids, table_path) -> None:
    """The table's object IDs are the store's at the same rows (a table of another store is refused)."""
    for name in dict.fromkeys(tiles):
        mine = tiles == name
        theirs = np.asarray(store.read_index(name, 0, store.n_cutouts(name))["object_id"], dtype=np.int64)
        bad = np.flatnonzero(theirs[rows[mine]] != ids[mine])
        if bad.size:
            row = int(rows[mine][bad[0]])
            raise ValueError(f"score table {table_path} does not match the store: tile {name!r} row {row} is "
                             f"object {int(ids[mine][bad[0]])} in the table and {int(theirs[row])} in the store")


def top_cutouts(store_path, table_path, column: str, n: int, out, *, tile: str = "cutouts",
                overwrite: bool = False, command: str = "") -> dict:
    """Write the ``n`` cutouts of ``store_path`` that ``column`` of the score table ranks highest into ``out``.

    Unscored rows (NaN: flagged cutouts, or rows the table lacks) are never chosen.  Returns
    ``{"n_written", "n_scored", "threshold"}`` (``threshold``: the lowest score kept).
    """
    if n < 1:
        raise ValueError(f"--top must be at least 1, not {n}")
    store = SurveyStore.open(store_path)
    by_tile = score_table_rows(table_path, column, store)
    scored = [name for name in store.tiles if name in by_tile]      # store order: ties go to the earlier tile
    values = np.concatenate([by_tile[name][1] for name in scored] or [np.zeros(0)])
    rows = np.concatenate([by_tile[name][0] for name in scored] or [np.zeros(0, np.int64)])
    which = np.repeat(np.arange(len(scored)), [len(by_tile[name][0]) for name in scored])
    chosen = select_top(values, n)
    n_scored = int(np.isfinite(values).sum())
    picked = {name: np.sort(rows[chosen][which[chosen] == t]) for t, name in enumerate(scored)}
    note = {"made_by": command or "lensengine store top", "source": str(store_path), "scores": str(table_path),
            "column": column, "top": n,
            "threshold": float(values[chosen].min()) if chosen.size else None}
    with SurveyStore.build(out, overwrite=overwrite, **_create_args(store, note)) as dest:
        writer = _Writer(dest, tile)
        for name in store.tiles:
            mine = picked.get(name, np.zeros(0, np.int64))
            for start, stop in store.chunk_slices(name):
                here = mine[(mine >= start) & (mine < stop)]
                if here.size:
                    batch = store.read(name, start, stop)
                    writer.add(batch.take(here - start))
        writer.flush()
    return {"n_written": int(chosen.size), "n_scored": n_scored, "threshold": note["threshold"]}

