"""The survey store: tiled multiband cutouts in zarr v3 (layout in docs/store-format.md).

A store holds tiles; each tile holds N cutouts: VIS (N, 200, 200) and NISP
(N, 3, 66, 66, bands Y, J, H) in float32 physical units, object IDs, RA/Dec,
per-cutout flags and optional truth columns.  Images are sharded along N in
``chunk_size`` cutouts (one engine task) with 32-cutout inner chunks (fast
random access).

Appends are crash-safe: data are written first, and the tile's committed
length (``n_cutouts``) is updated only afterwards, so a crash leaves the store
readable at its last committed length; :func:`lensengine.catalogs.validate.validate_store`
reports the chunks of an unfinished write.  One writer per tile at a time.

A store is a local directory or an fsspec URL (``s3://``, ``gs://``, read-only
``https://``; :mod:`lensengine.catalogs._location`).  :meth:`SurveyStore.build`
makes a new store appear whole or not at all: locally it is built in a hidden
sibling folder and renamed into place; at a URL (no rename there) its root
metadata carries an ``incomplete`` mark from the first write to the last, and
:meth:`SurveyStore.open` refuses a store that still carries it.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lensengine.catalogs import _zarr_layout as layout
from lensengine.catalogs._location import Location, as_location, is_url, location_key
from lensengine.catalogs._shard_read import ChunkLayout, ShardLayout
from lensengine.catalogs._zarr_layout import FORMAT_NAME, FORMAT_VERSION
from lensengine.catalogs.vocabulary import BANDS, NATIVE_STAMP, NISP_BANDS, PIXEL_SCALE

__all__ = ["FORMAT_VERSION", "CutoutBatch", "SurveyStore", "ChunkReadError", "IncompleteStoreError", "as_location",
           "is_url", "location_key", "pid_alive"]

#: Root attribute present while a store is being created (see :meth:`SurveyStore.build`).
INCOMPLETE_MARK = "incomplete"

log = logging.getLogger(__name__)


class ChunkReadError(Exception):
    """A chunk of a tile could not be read or decoded (missing or corrupt file)."""

    def __init__(self, tile: str, index: int, reason: str):
        super().__init__(f"tile {tile!r} chunk {index}: {reason}")
        self.tile = tile
        self.index = index
        self.reason = reason


class IncompleteStoreError(ValueError):
    """The store's creation never finished (it still carries the ``incomplete`` mark)."""


@dataclass
class CutoutBatch:
    """A batch of cutouts in physical units (never pre-normalised)."""

    object_id: np.ndarray
    ra: np.ndarray
    dec: np.ndarray
    vis: np.ndarray | None
    nisp: np.ndarray | None
    flags: np.ndarray
    truth: dict[str, np.ndarray] = field(default_factory=dict)
    #: bands the source holds; None means all bands whose array is present
    held: tuple[str, ...] | None = None

    def __len__(self) -> int:
        return len(self.object_id)

    def bands(self) -> dict[str, np.ndarray | None]:
        """``{"VIS": (n,200,200), "Y": (n,66,66), "J": ..., "H": ...}``, None for absent bands.

        The dict feeds :class:`lensengine.engine.preprocess.Preprocessor` directly.
        """
        held = self.held if self.held is not None else BANDS
        out: dict[str, np.ndarray | None] = {
            "VIS": self.vis if (self.vis is not None and "VIS" in held) else None}
        for i, band in enumerate(NISP_BANDS):
            out[band] = self.nisp[:, i] if (self.nisp is not None and band in held) else None
        return out

    def take(self, rows) -> "CutoutBatch":
        """The cutouts at ``rows`` (indices or a boolean mask), in that order."""
        return CutoutBatch(object_id=self.object_id[rows], ra=self.ra[rows], dec=self.dec[rows],
                           vis=None if self.vis is None else self.vis[rows],
                           nisp=None if self.nisp is None else self.nisp[rows], flags=self.flags[rows],
                           truth={k: v[rows] for k, v in self.truth.items()}, held=self.held)

    @classmethod
    def concatenate(cls, batches: list["CutoutBatch"]) -> "CutoutBatch":
        if len(batches) == 1:
            return batches[0]
        first = batches[0]

        def cat(name):
            parts = [getattr(b, name) for b in batches]
            return None if parts[0] is None else np.concatenate(parts)

        return cls(object_id=cat("object_id"), ra=cat("ra"), dec=cat("dec"), vis=cat("vis"), nisp=cat("nisp"),
                   flags=cat("flags"), truth={k: np.concatenate([b.truth[k] for b in batches]) for k in first.truth},
                   held=first.held)


class SurveyStore:
    """A survey store on local disk or at an fsspec URL (see the module docstring).

    ``path`` is what locates it: a :class:`~pathlib.Path`, or the URL as a string.
    """

    def __init__(self, path, group, mode: str, location: Location | None = None):
        self.path: Path | str = as_location(path)
        self.location = location or Location(path)
        self._group = group
        self.mode = mode
        self.attrs: dict = dict(group.attrs)
        self.bands: tuple[str, ...] = tuple(self.attrs["bands"])
        self.truth_columns: dict[str, str] = dict(self.attrs.get("truth_columns") or {})
        self.chunk_size: int = int(self.attrs["chunk_size"])
        self.codec: str = self.attrs["codec"]
        self._keepbits = layout.parse_codec(self.codec)[1]
        self._tile_groups: dict = {}  # tile -> zarr group, metadata read once (a snapshot in "r" mode)
        self._array_cache: dict = {}  # (tile, array) -> zarr array, read-only mode only
        # the small columns (IDs, positions, flags, truth) of the chunk read last, read-only mode only: they are
        # stored one chunk per file, so a piece of a chunk would otherwise decode the whole file again
        self._small_cache: tuple | None = None  # ((tile, index, stop), {name: chunk rows})
        self._small_lock = threading.Lock()

    # --- creation and opening -------------------------------------------------

    @classmethod
    def create(cls, path, *, survey: str, bands=BANDS, chunk_size: int = 1024, codec: str = "lossless",
               truth_columns: dict[str, str] | None = None, provenance: dict | None = None,
               overwrite: bool = False, incomplete: bool = False) -> "SurveyStore":
        """Create an empty store at ``path`` (a directory or URL, conventionally ``*.zarr``).

        With ``incomplete=True`` the root metadata's first write already carries the
        ``incomplete`` mark, which :meth:`finish` removes (used by :meth:`build`).
        """
        import zarr

        from lensengine import __version__

        location = Location(path)
        bands = tuple(bands)
        unknown = [b for b in bands if b not in BANDS]
        if unknown or not bands or len(set(bands)) != len(bands):
            raise ValueError(f"bands {bands} must be distinct names from {BANDS}")
        bands = tuple(b for b in BANDS if b in bands)
        layout.parse_codec(codec)
        inner = min(layout.INNER_CHUNK, chunk_size)
        if chunk_size < 1 or chunk_size % inner:
            raise ValueError(f"chunk_size {chunk_size} must be a positive multiple of {layout.INNER_CHUNK} "
                             f"(or smaller than it)")
        truth = {name: layout.normalise_truth_dtype(name, dt) for name, dt in (truth_columns or {}).items()}
        if location.exists():
            if not overwrite:
                raise FileExistsError(f"{location} already exists (use overwrite=True to replace it)")
            location.remove()
        attrs = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "survey": survey,
            "bands": list(bands),
            "nisp_order": list(NISP_BANDS),
            "pixel_scales": {b: PIXEL_SCALE[b] for b in bands},
            "stamps": {b: NATIVE_STAMP[b] for b in bands},
            "units": "physical (as ingested; never pre-normalised)",
            "chunk_size": chunk_size,
            "inner_chunk": inner,
            "codec": codec,
            "truth_columns": truth,
            "provenance": dict(provenance or {}),
            "software": f"lensengine {__version__}",
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        if incomplete:
            attrs[INCOMPLETE_MARK] = (f"creation started {attrs['created']} by {attrs['software']} "
                                      f"(pid {os.getpid()}) and has not finished")
        # the attributes go into the root zarr.json's first write: no moment shows a store without them
        group = zarr.open_group(location.zarr_store(read_only=False), mode="w", zarr_format=3, attributes=attrs)
        group.create_group("tiles")
        return cls(path, group, "a", location)

    def finish(self) -> None:
        """Remove the ``incomplete`` mark: the store's last write, after all its data."""
        if INCOMPLETE_MARK in self._group.attrs:
            attrs = {k: v for k, v in self._group.attrs.asdict().items() if k != INCOMPLETE_MARK}
            self._group.attrs.put(attrs)
            self.attrs = attrs

    def update_provenance(self, **values) -> None:
        """Set keys of the store's provenance after the fact (e.g. how many cutouts a stopped writer left)."""
        attrs = self._group.attrs.asdict()
        attrs["provenance"] = {**dict(attrs.get("provenance") or {}), **values}
        self._group.attrs.put(attrs)
        self.attrs = attrs

    @classmethod
    @contextlib.contextmanager
    def build(cls, path, *, overwrite: bool = False, **create_args):
        """Create a store that appears at ``path`` only if the ``with`` block succeeds; yields it.

        Local: the store is written in a hidden sibling folder (``.NAME.partial-PID``) and
        renamed into place at the end (an existing store replaced with ``overwrite`` is
        renamed aside first and deleted last); on an error the sibling is deleted, so
        nothing is left, and a killed build leaves only the hidden sibling, removed by the
        next build.  URL: the store is written in place, carrying the ``incomplete`` mark
        until its last write; on an error it is deleted (best effort), and a killed build
        leaves a store that open and validate refuse and that the next build replaces.
        The yielded store is for writing inside the block; open the result again to read it.
        """
        location = Location(path)
        if location.exists() and not overwrite and not cls._is_incomplete(location):
            raise FileExistsError(f"{location} already exists: pass --overwrite to replace it or --append to "
                                  f"add a tile")
        if location.local is None:
            store = cls.create(path, overwrite=True, incomplete=True, **create_args)
            try:
                yield store
                store.finish()
            except BaseException:
                with contextlib.suppress(Exception):
                    location.remove()
                raise
            return
        target = location.local.absolute()
        _remove_dead_partials(target)
        scratch = target.with_name(f".{target.name}.partial-{os.getpid()}")
        store = cls.create(scratch, overwrite=True, incomplete=True, **create_args)
        aside = target.with_name(f".{target.name}.replaced-{os.getpid()}")
        try:
            yield store
            store.finish()
            if target.exists() or target.is_symlink():
                os.replace(target, aside)
            os.replace(scratch, target)
        except BaseException:
            with contextlib.suppress(Exception):
                if aside.exists() and not target.exists():
                    os.replace(aside, target)  # the old store back where it was
                Location(scratch).remove()
            raise
        if aside.exists():
            Location(aside).remove()
        store.path, store.location = target, Location(target)

    @staticmethod
    def _is_incomplete(location: Location) -> bool:
        """Whether the location holds a store still marked ``incomplete`` (safe to replace)."""
        import json

        try:
            if location.local is not None:
                meta = json.loads((location.local / "zarr.json").read_text())
            else:
                fs, root = location.fs()
                meta = json.loads(fs.cat_file(f"{root}/zarr.json"))
        except (OSError, ValueError):
            return False
        return INCOMPLETE_MARK in (meta.get("attributes") or {})

    @classmethod
    def open(cls, path, mode: str = "r", *, allow_incomplete: bool = False) -> "SurveyStore":
        """Open an existing store (a directory or URL) read-only (``"r"``) or for appending (``"a"``).

        Raises :class:`IncompleteStoreError` for a store whose creation never finished
        (unless ``allow_incomplete``: for :func:`~lensengine.catalogs.validate.validate_store`).
        """
        import zarr

        if mode not in ("r", "a"):
            raise ValueError(f"mode must be 'r' or 'a', not {mode!r}")
        location = Location(path)
        path = location.url or location.local
        if not location.is_file("zarr.json"):
            raise ValueError(f"{path} is not a lensengine survey store: found {location.describe_missing()}")
        try:
            group = zarr.open_group(location.zarr_store(read_only=mode == "r"), mode="r" if mode == "r" else "r+",
                                    zarr_format=3)  # no probing for zarr v2 metadata (requests on a URL)
        except (ValueError, TypeError, KeyError, OSError) as exc:
            raise ValueError(f"{path} is not a lensengine survey store: {exc}") from exc
        fmt = group.attrs.get("format")
        version = group.attrs.get("format_version")
        if fmt != FORMAT_NAME:
            raise ValueError(f"{path} is not a lensengine survey store: format attribute is {fmt!r}, "
                             f"expected {FORMAT_NAME!r}")
        if version != FORMAT_VERSION:
            raise ValueError(f"{path} has store format version {version!r}; this lensengine reads "
                             f"version {FORMAT_VERSION}")
        if INCOMPLETE_MARK in group.attrs and not allow_incomplete:
            raise IncompleteStoreError(
                f"{path} is an unfinished store: its {group.attrs[INCOMPLETE_MARK]} (the writer failed or was "
                f"killed); write it again (`lensengine store from-fits ... --out {path}` replaces it) or delete it")
        return cls(path, group, mode, location)

    # --- tiles ------------------------------------------------------------------

    @property
    def tiles(self) -> list[str]:
        return sorted(name for name, _ in self._group["tiles"].groups())

    def _tile(self, tile: str):
        if tile in self._tile_groups:
            return self._tile_groups[tile]
        try:
            group = self._tile_groups[tile] = self._group["tiles"][tile]
            return group
        except KeyError:
            raise KeyError(f"tile {tile!r} not in store {self.path} (tiles: {', '.join(self.tiles) or 'none'})") \
                from None

    @property
    def has_vis(self) -> bool:
        return "VIS" in self.bands

    @property
    def has_nisp(self) -> bool:
        return any(b in self.bands for b in NISP_BANDS)

    def n_cutouts(self, tile: str) -> int:
        """Committed cutouts of a tile (data beyond this length belong to an unfinished write)."""
        return int(self._tile(tile).attrs.get("n_cutouts", 0))

    def total_cutouts(self) -> int:
        return sum(self.n_cutouts(t) for t in self.tiles)

    def first_rows(self) -> dict[str, int]:
        """Each tile's first row in store order (the tiles one after another): a cutout's store row is its
        tile's first row plus its row in the tile."""
        starts = np.cumsum([0] + [self.n_cutouts(t) for t in self.tiles])
        return {t: int(start) for t, start in zip(self.tiles, starts)}

    def expected_arrays(self) -> dict[str, tuple[tuple[int, ...], str]]:
        """Every array a tile must hold: ``{path: (cutout shape, dtype)}``, from the format and the store's bands."""
        out: dict[str, tuple[tuple[int, ...], str]] = {}
        for name in ("vis", "nisp"):
            if (name == "vis" and self.has_vis) or (name == "nisp" and self.has_nisp):
                out[name] = (layout.IMAGE_SHAPES[name], "float32")
        for name, dtype in layout.SCALAR_COLUMNS.items():
            out[name] = ((), dtype)
        for name, dtype in self.truth_columns.items():
            out[f"truth/{name}"] = ((), dtype)
        return out

    def layout_problems(self, tile: str) -> list[str]:
        """What is wrong with a tile's arrays against the format (empty: nothing); reads metadata only.

        Checks each array's presence, cutout shape, dtype and chunking along N, and that it holds at
        least the committed length.  A wrong dtype or shape in an array's metadata makes every chunk
        undecodable, and a committed length beyond the data names cutouts that do not exist, so a run
        checks this before any work (data *beyond* the committed length is an unfinished append and
        is fine: it is never read).
        """
        problems = []
        try:
            n = int(self._tile(tile).attrs.get("n_cutouts", 0))
        except (TypeError, ValueError):
            return [f"committed length n_cutouts={self._tile(tile).attrs.get('n_cutouts')!r} is not an integer"]
        if n < 0:
            problems.append(f"committed length n_cutouts={n} is negative")
        group = self._tile(tile)
        for name, (shape, dtype) in self.expected_arrays().items():
            try:
                arr = group[name]
            except KeyError:
                problems.append(f"array {name!r} is missing")
                continue
            if tuple(arr.shape[1:]) != shape:
                problems.append(f"array {name!r} has cutout shape {tuple(arr.shape[1:])}, expected {shape}")
            if dtype != "str" and np.dtype(arr.dtype) != np.dtype(dtype):
                problems.append(f"array {name!r} has dtype {arr.dtype}, expected {dtype}")
            outer = arr.shards or arr.chunks
            if outer[0] != self.chunk_size:
                problems.append(f"array {name!r} is chunked by {outer[0]} along N, the store says {self.chunk_size}")
            if arr.shape[0] < n:
                problems.append(f"array {name!r} holds {arr.shape[0]} cutouts, fewer than the committed length {n}")
        return problems

    def fingerprint(self, tile: str) -> tuple[str, list[str | None]]:
        """A cheap content fingerprint of a tile, and the SHA-256 of each chunk's object IDs.

        The fingerprint hashes the committed length, the object IDs, RA and Dec of every committed
        cutout, and the path, size and modification time (ns) of every file under the tile (for a
        store at a URL: each object's size and the ETag/last-modified stamp the server reports).  It reads
        only the small columns, not the images: a store replaced at the same path almost always
        differs in IDs or positions, and any rewrite of an image chunk gives its file a new mtime
        (zarr writes whole files).  Copying a store with new timestamps changes the fingerprint
        although the pixels are equal: that errs on the safe side (a refused resume, never mixed rows).
        A chunk whose small columns cannot be read has ``None`` as its ID hash.
        """
        digest = hashlib.sha256(f"n_cutouts={self.n_cutouts(tile)};".encode())
        id_hashes: list[str | None] = []
        try:  # the whole tile in one read: zarr fetches the chunks concurrently (many requests on a URL)
            whole = self.read_index(tile, 0, self.n_cutouts(tile))
        except ChunkReadError:
            whole = None  # some chunk is unreadable: find it chunk by chunk
        for start, stop in self.chunk_slices(tile):
            try:
                index = ({k: v[start:stop] for k, v in whole.items()} if whole is not None
                         else self.read_index(tile, start, stop))
            except ChunkReadError as exc:
                digest.update(f"unreadable {start}:{stop};".encode())
                log.debug("fingerprint: %s", exc)
                id_hashes.append(None)
                continue
            ids = np.ascontiguousarray(index["object_id"], dtype="<i8")
            id_hashes.append(hashlib.sha256(ids.tobytes()).hexdigest())
            for name in ("object_id", "ra", "dec"):
                digest.update(np.ascontiguousarray(index[name]).tobytes())
        for key, size, stamp in self.location.stamps(f"tiles/{tile}"):
            digest.update(f"{key}:{size}:{stamp};".encode())
        return digest.hexdigest(), id_hashes

    def check_layout(self) -> None:
        """Raise :class:`ValueError` naming every tile and array whose layout is wrong (see :meth:`layout_problems`)."""
        found = [f"tile {tile!r}: {problem}" for tile in self.tiles for problem in self.layout_problems(tile)]
        if found:
            shown = "; ".join(found[:10]) + (f"; and {len(found) - 10} more" if len(found) > 10 else "")
            raise ValueError(f"store {self.path} does not match its format ({FORMAT_NAME} v{FORMAT_VERSION}): "
                             f"{shown} (see `lensengine store validate {self.path}`)")

    def chunk_slices(self, tile: str) -> list[tuple[int, int]]:
        """Chunk-aligned ``[start, stop)`` ranges covering the committed cutouts of a tile."""
        n = self.n_cutouts(tile)
        return [(s, min(s + self.chunk_size, n)) for s in range(0, n, self.chunk_size)]

    # --- reading ----------------------------------------------------------------

    def _array(self, tile: str, name: str):
        """A tile's array; handles are cached in read-only mode (opening one reads its metadata file)."""
        if self.mode != "r":
            return self._tile(tile)[name]
        key = (tile, name)
        if key not in self._array_cache:
            self._array_cache[key] = self._tile(tile)[name]
        return self._array_cache[key]

    def _direct(self, tile: str, name: str) -> "ShardLayout | ChunkLayout | None":
        """How to read an array without zarr's threads (:mod:`._shard_read`), read-only mode only: a sharded
        image array, or a small numeric or text column."""
        if self.mode != "r":
            return None
        key = (tile, name, "direct")
        if key not in self._array_cache:
            kind = ShardLayout if name in layout.IMAGE_SHAPES else ChunkLayout
            self._array_cache[key] = kind.of(self._array(tile, name))
        return self._array_cache[key]

    def _arrays(self) -> list[str]:
        return layout.array_names(self.has_vis, self.has_nisp, self.truth_columns)

    def read_chunk(self, tile: str, index: int) -> CutoutBatch:
        """Read chunk ``index`` of a tile; raises :class:`ChunkReadError` if it is missing or corrupt."""
        slices = self.chunk_slices(tile)
        if not 0 <= index < len(slices):
            raise IndexError(f"tile {tile!r} has {len(slices)} committed chunks; chunk {index} does not exist")
        start, stop = slices[index]
        return self._read_piece(tile, index, start, stop)

    def read(self, tile: str, start: int, stop: int, *, empty=None) -> CutoutBatch:
        """Read committed cutouts ``[start, stop)`` of a tile (any range).

        ``empty(shape, dtype)``, if given, makes the image arrays of a range within one chunk of a read-only
        local store (the direct shard reads): the scoring workers pass their buffer pool, so that the image
        pieces they read one after another reuse memory instead of faulting in new pages every time.
        """
        n = self.n_cutouts(tile)
        if not 0 <= start <= stop <= n:
            raise IndexError(f"range [{start}, {stop}) outside the {n} committed cutouts of tile {tile!r}")
        cs = self.chunk_size
        if start == stop:
            return self._read_piece(tile, start // cs, start, stop)
        edges = [start, *range((start // cs + 1) * cs, stop, cs), stop]
        if len(edges) == 2:
            return self._read_piece(tile, start // cs, start, stop, empty)
        # pieces of several chunks are joined into new arrays: the pieces themselves are short-lived
        pieces = [self._read_piece(tile, a // cs, a, b) for a, b in zip(edges[:-1], edges[1:])]
        return CutoutBatch.concatenate(pieces)

    def _read_piece(self, tile: str, index: int, start: int, stop: int, empty=None) -> CutoutBatch:
        images = [name for name in self._arrays() if name in layout.IMAGE_SHAPES]
        small = [name for name in self._arrays() if name not in layout.IMAGE_SHAPES]
        first = index * self.chunk_size
        cached = self.mode == "r" and first <= start < stop  # a piece of one committed chunk, read-only
        if cached:
            rows = self._small_columns(tile, index, min(first + self.chunk_size, self.n_cutouts(tile)), small)
            data = {name: rows[name][start - first:stop - first].copy() for name in small}  # callers may write
        else:
            data = self._as_text(self._read_arrays(tile, index, start, stop, small))
        data.update(self._read_arrays(tile, index, start, stop, images, empty))
        truth = {name: data[f"truth/{name}"] for name in self.truth_columns}
        return CutoutBatch(object_id=data["object_id"], ra=data["ra"], dec=data["dec"], vis=data.get("vis"),
                           nisp=data.get("nisp"), flags=data["flags"], truth=truth, held=self.bands)

    def _read_arrays(self, tile: str, index: int, start: int, stop: int, names: list[str],
                     empty=None) -> dict[str, np.ndarray]:
        """Rows ``[start, stop)`` of the named arrays, all within chunk ``index``; :class:`ChunkReadError` if not read."""
        # zarr reads a missing chunk as fill values, which must not pass for data: check the chunk files
        # exist.  On a disk that is cheap, before reading; at a URL each check is a request, so only the
        # arrays whose piece came back all fill values are checked, after reading.
        remote = self.location.local is None
        if not remote:
            self._check_chunk_files(tile, index, start, stop, names)
        data = {}
        for name in names:
            try:
                direct = None if remote else self._direct(tile, name)
                if direct is not None:  # a read-only local store: the chunk or shard file decoded in this thread
                    ndim = 1 + len(direct.shape)
                    path = layout.chunk_file(self.location.local, tile, name, index, ndim)
                    data[name] = direct.read(path, index * direct.rows, start, stop, empty)
                else:
                    data[name] = self._array(tile, name)[start:stop]
            except Exception as exc:  # noqa: BLE001 - any decoding failure of one chunk must not stop a run
                raise ChunkReadError(tile, index, f"array {name!r}: {type(exc).__name__}: {exc}") from exc
        if remote:
            self._check_chunk_files(tile, index, start, stop, [
                name for name in names if _all_fill(data[name], self._array(tile, name).fill_value)])
        return data

    def _small_columns(self, tile: str, index: int, stop: int, names: list[str]) -> dict[str, np.ndarray]:
        """The small columns of a chunk's committed rows (up to ``stop``), decoded once for all its pieces."""
        key = (tile, index, stop)
        with self._small_lock:
            if self._small_cache is not None and self._small_cache[0] == key:
                return self._small_cache[1]
            rows = self._as_text(self._read_arrays(tile, index, index * self.chunk_size, stop, names))
            self._small_cache = (key, rows)
            return rows

    def _as_text(self, data: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``data`` with its text truth columns as fixed-width NumPy strings (zarr returns variable-width ones)."""
        for name, dtype in self.truth_columns.items():
            if dtype == "str":
                data[f"truth/{name}"] = np.asarray(data[f"truth/{name}"].tolist(), dtype=str)
        return data

    def _check_chunk_files(self, tile: str, index: int, start: int, stop: int, names) -> None:
        for name in names:
            ndim = 1 + len(layout.IMAGE_SHAPES.get(name, ()))
            if stop > start and not self.location.is_file(layout.chunk_key(tile, name, index, ndim)):
                raise ChunkReadError(tile, index, f"array {name!r}: chunk file missing")

    def read_index(self, tile: str, start: int, stop: int) -> dict[str, np.ndarray]:
        """Only the small columns (``object_id``, ``ra``, ``dec``, ``flags``) of committed cutouts ``[start, stop)``.

        Cheap (no images); useful for finding objects and for naming the cutouts of an unreadable image chunk.
        """
        n = self.n_cutouts(tile)
        if not 0 <= start <= stop <= n:
            raise IndexError(f"range [{start}, {stop}) outside the {n} committed cutouts of tile {tile!r}")
        out = {}
        for name in layout.SCALAR_COLUMNS:
            try:
                out[name] = self._array(tile, name)[start:stop]
            except Exception as exc:  # noqa: BLE001 - a decoding failure of one chunk must not stop a run
                raise ChunkReadError(tile, start // self.chunk_size, f"array {name!r}: {type(exc).__name__}: {exc}") \
                    from exc
        return out

    def iter_chunks(self, tile: str):
        """Yield ``(index, CutoutBatch)`` for every committed chunk of a tile."""
        for i in range(len(self.chunk_slices(tile))):
            yield i, self.read_chunk(tile, i)

    def to_dask(self, tile: str) -> dict:
        """Chunk-aligned dask arrays of the committed cutouts: ``vis``, ``nisp``, ``object_id`` ... ``truth/<name>``."""
        import dask.array as da

        group = self._tile(tile)
        n = self.n_cutouts(tile)
        out = {}
        for name in self._arrays():
            arr = group[name]
            chunks = (self.chunk_size, *arr.shape[1:])
            out[name] = da.from_array(arr, chunks=chunks, lock=False, asarray=True, name=False)[:n] \
                if arr.shape[0] else da.zeros((0, *arr.shape[1:]), dtype=arr.dtype, chunks=chunks)
        return out

    # --- writing ----------------------------------------------------------------

    def append(self, tile: str, batch: CutoutBatch) -> None:
        """Append a batch to a tile (created if needed); crash-safe (see the module docstring)."""
        if self.mode == "r":
            raise ValueError(f"store {self.path} is open read-only; open it with mode='a' to append")
        layout.check_tile_name(tile)
        data = self._check_batch(batch)
        tiles = self._group["tiles"]
        if tile not in self.tiles:
            group = tiles.create_group(tile)
            layout.create_tile_arrays(group, self.chunk_size, self.has_vis, self.has_nisp, self.truth_columns)
            group.attrs.update({"n_cutouts": 0, "pending": None})
        group = self._tile(tile)
        n0 = int(group.attrs.get("n_cutouts", 0))
        k = len(batch)
        if k == 0:
            return
        group.attrs["pending"] = [n0, n0 + k]
        for name, values in data.items():
            arr = layout.open_for_write(group, name)
            arr.resize((n0 + k, *arr.shape[1:]))
            arr[n0:n0 + k] = values
        group.attrs.update({"n_cutouts": n0 + k, "pending": None})

    def remove_tile(self, tile: str) -> None:
        """Delete a tile and its data (an append that failed part-way)."""
        if self.mode == "r":
            raise ValueError(f"store {self.path} is open read-only; open it with mode='a' to remove a tile")
        self._tile(tile)
        del self._group["tiles"][tile]
        self._tile_groups.pop(tile, None)

    def _check_batch(self, batch: CutoutBatch) -> dict[str, np.ndarray]:
        k = len(batch)
        data: dict[str, np.ndarray] = {}
        for name, dtype in layout.SCALAR_COLUMNS.items():
            values = np.asarray(getattr(batch, name))
            if values.shape != (k,):
                raise ValueError(f"batch column {name!r} has shape {values.shape}, expected ({k},)")
            data[name] = values.astype(dtype, copy=False)
        for name, held in (("vis", self.has_vis), ("nisp", self.has_nisp)):
            values = getattr(batch, name)
            if not held:
                continue
            expected = (k, *layout.IMAGE_SHAPES[name])
            if values is None or np.shape(values) != expected:
                got = None if values is None else np.shape(values)
                raise ValueError(f"batch {name} has shape {got}, expected {expected} (store bands {self.bands})")
            values = np.asarray(values, dtype=np.float32)
            data[name] = layout.bitround(values, self._keepbits) if self._keepbits else values
        missing = set(self.truth_columns) - set(batch.truth)
        if missing:
            raise ValueError(f"batch lacks truth columns {sorted(missing)} that store {self.path} holds")
        for name, dtype in self.truth_columns.items():
            values = np.asarray(batch.truth[name])
            if values.shape != (k,):
                raise ValueError(f"truth column {name!r} has shape {values.shape}, expected ({k},)")
            data[f"truth/{name}"] = values.astype(str) if dtype == "str" else values.astype(dtype, copy=False)
        return data

    def __repr__(self) -> str:
        return (f"SurveyStore({str(self.path)!r}, survey={self.attrs.get('survey')!r}, bands={self.bands}, "
                f"tiles={len(self.tiles)}, cutouts={self.total_cutouts()})")


def _all_fill(values: np.ndarray, fill) -> bool:
    """Whether every value equals the array's fill value (NaN fills compare as NaN)."""
    values = np.asarray(values)
    if values.size == 0:
        return True
    if values.dtype.kind == "f" and fill is not None and np.isnan(fill):
        return bool(np.isnan(values).all())
    return bool((values == fill).all())


def _remove_dead_partials(target: Path) -> None:
    """Delete hidden folders beside ``target`` left by builds whose process is gone (killed).

    A ``.partial-PID`` folder is an unfinished new store.  A ``.replaced-PID`` folder is the old store a
    build was replacing; it is deleted only when ``target`` exists (the kill came after the new store's
    rename), never when it is the only copy left.
    """
    for kind in ("partial", "replaced"):
        for scratch in target.parent.glob(f".{target.name}.{kind}-*"):
            pid = scratch.name.rsplit("-", 1)[-1]
            if pid.isdigit() and not pid_alive(int(pid)) and (kind == "partial" or target.exists()):
                log.info("removing %s, left by a store build that was killed", scratch)
                Location(scratch).remove()


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host (a pid we may not signal exists too)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
