"""Checking and describing a survey store (``lensengine store validate`` / ``store info``).

:func:`validate_store` reads every committed chunk once and reports each
problem with its tile, chunk and, where one cutout is at fault, its object ID:
wrong shapes, dtypes or chunking, missing or corrupt chunk files, data beyond
the committed length (an unfinished write), NaN/inf pixels and constant bands.
A band that is entirely NaN in a cutout flagged ``MISSING_BAND`` is expected
(the contract for a band missing in one cutout) and not reported.  A store
whose creation never finished (it still carries the ``incomplete`` mark,
:meth:`SurveyStore.build`) is one problem, ``incomplete-store``: nothing in it
is trusted.  Stores at fsspec URLs are checked the same way.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from lensengine.catalogs.flags import Flag
from lensengine.catalogs.store import INCOMPLETE_MARK, ChunkReadError, SurveyStore
from lensengine.catalogs.vocabulary import NISP_BANDS

__all__ = ["Problem", "validate_store", "store_info"]


@dataclass
class Problem:
    """One finding of :func:`validate_store`."""

    tile: str | None
    chunk: int | None
    object_id: int | None
    kind: str  # incomplete-store, layout, missing-chunk, corrupt-chunk, incomplete-write, nonfinite, constant
    message: str

    def __str__(self) -> str:
        where = []
        if self.tile is not None:
            where.append(f"tile {self.tile}")
        if self.chunk is not None:
            where.append(f"chunk {self.chunk}")
        if self.object_id is not None:
            where.append(f"object {self.object_id}")
        return f"{' '.join(where) or 'store'}: [{self.kind}] {self.message}"

    def to_dict(self) -> dict:
        return asdict(self)


def _check_layout(store: SurveyStore, tile: str, problems: list[Problem]) -> bool:
    """Layout problems (the same check a run makes before work) and unfinished appends; False if unreadable."""
    found = store.layout_problems(tile)
    problems.extend(Problem(tile, None, None, "layout", message) for message in found)
    group = store._tile(tile)
    n = store.n_cutouts(tile)
    lengths = {}
    for name in store.expected_arrays():
        try:
            lengths[name] = group[name].shape[0]
        except KeyError:
            continue
    pending = group.attrs.get("pending")
    beyond = {name: length for name, length in lengths.items() if length > n}
    if beyond or pending:
        stop = max([n, *beyond.values()] + ([pending[1]] if pending else []))
        first, last = n // store.chunk_size, (stop - 1) // store.chunk_size
        problems.append(Problem(tile, first, None, "incomplete-write",
                                f"an unfinished append: data beyond the committed length {n} "
                                f"(up to {stop}) in chunks {first}..{last}; the next append overwrites them"))
    return not found


def _check_cutouts(tile: str, index: int, batch, problems: list[Problem]) -> None:
    missing = (batch.flags & np.uint32(Flag.MISSING_BAND)) != 0
    for band, images in batch.bands().items():
        if images is None:
            continue
        finite = np.isfinite(images).all(axis=(-2, -1))
        all_nan = np.isnan(images).all(axis=(-2, -1))
        for i in np.flatnonzero(~finite & ~(all_nan & missing)):
            bad = int((~np.isfinite(images[i])).sum())
            problems.append(Problem(tile, index, int(batch.object_id[i]), "nonfinite",
                                    f"{band}: {bad} NaN/inf pixels"))
        with np.errstate(invalid="ignore"):
            span = np.where(finite, images.max(axis=(-2, -1)) - images.min(axis=(-2, -1)), 1)
        for i in np.flatnonzero(finite & (span <= 0)):
            problems.append(Problem(tile, index, int(batch.object_id[i]), "constant",
                                    f"{band}: constant image (value {float(images[i].flat[0]):g})"))


def validate_store(path, *, check_pixels: bool = True, progress=None) -> list[Problem]:
    """Check a store; return the problems found (empty list: valid).

    Raises ValueError when ``path`` is not a store of this format version.
    ``progress`` is an optional callable ``(tile, chunk, n_chunks)``.
    """
    store = SurveyStore.open(path, allow_incomplete=True)
    if INCOMPLETE_MARK in store.attrs:
        return [Problem(None, None, None, "incomplete-store",
                        f"the store's {store.attrs[INCOMPLETE_MARK]}: its writer failed or was killed, so none "
                        f"of it is trusted; write it again or delete it")]
    problems: list[Problem] = []
    if store.chunk_size < 1:
        problems.append(Problem(None, None, None, "layout", f"chunk_size {store.chunk_size} is not positive"))
    for tile in store.tiles:
        if not _check_layout(store, tile, problems):
            continue
        slices = store.chunk_slices(tile)
        group = store._tile(tile)
        for index in range(len(slices)):
            if progress is not None:
                progress(tile, index, len(slices))
            try:
                batch = store.read_chunk(tile, index)
            except ChunkReadError as exc:
                start, stop = slices[index]
                ids = _object_ids(group, start, stop)
                kind = "missing-chunk" if "missing" in exc.reason else "corrupt-chunk"
                problems.append(Problem(tile, index, None, kind, f"{exc.reason} (cutouts {start}..{stop - 1}{ids})"))
                continue
            if check_pixels:
                _check_cutouts(tile, index, batch, problems)
    return problems


def _object_ids(group, start: int, stop: int) -> str:
    try:
        ids = group["object_id"][start:stop]
    except Exception:  # noqa: BLE001 - the object_id chunk itself may be the corrupt one
        return ""
    return f", object ids {int(ids[0])}..{int(ids[-1])}" if len(ids) else ""


def store_info(path) -> dict:
    """A JSON-able summary of a store: metadata, tiles and their lengths, chunking, on-disk size."""
    store = SurveyStore.open(path)
    tiles = {}
    for tile in store.tiles:
        group = store._tile(tile)
        tiles[tile] = {"n_cutouts": store.n_cutouts(tile), "n_chunks": len(store.chunk_slices(tile)),
                       "pending": group.attrs.get("pending")}
    size = store.location.total_bytes()
    attrs = dict(store.attrs)
    return {"path": str(store.path), **attrs, "nisp_order": list(NISP_BANDS), "tiles": tiles,
            "total_cutouts": sum(t["n_cutouts"] for t in tiles.values()), "bytes_on_disk": size}
