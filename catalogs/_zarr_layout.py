"""Private helpers for the survey store's zarr v3 layout (see docs/store-format.md).

Layout of ``STORE.zarr`` (one zarr v3 group)::

    zarr.json                      root attributes: format name and version, survey, bands,
                                   pixel scales, stamps, chunking, codec, truth columns, provenance
    tiles/<tile>/zarr.json         tile attributes: ``n_cutouts`` (committed length), ``pending``
    tiles/<tile>/vis               (N, 200, 200) float32, shards (chunk_size, 200, 200), inner (32, 200, 200)
    tiles/<tile>/nisp              (N, 3, 66, 66) float32 (Y, J, H), shards (chunk_size, 3, 66, 66)
    tiles/<tile>/object_id         (N,) int64     \
    tiles/<tile>/ra, dec           (N,) float64    |  chunks (chunk_size,), no sharding
    tiles/<tile>/flags             (N,) uint32     |
    tiles/<tile>/truth/<name>      (N,) any       /

Every array's chunk (or shard) ``i`` along N holds cutouts ``[i*chunk_size, (i+1)*chunk_size)``,
so one engine task reads one file per array.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from lensengine.catalogs.vocabulary import NATIVE_STAMP, NISP_BANDS

FORMAT_NAME = "lensengine-survey-store"
FORMAT_VERSION = 1
#: Inner chunk (cutouts) of the sharded image arrays: the unit of random access.
INNER_CHUNK = 32
#: Blosc settings chosen by measurement (benchmarks/bench_store.py).
BLOSC = {"cname": "zstd", "clevel": 5, "shuffle": "bitshuffle"}
#: Mantissa bits kept by the "lossy" codec (relative error <= 2**-13 ~ 1.2e-4).
DEFAULT_KEEPBITS = 12

SCALAR_COLUMNS = {"object_id": "int64", "ra": "float64", "dec": "float64", "flags": "uint32"}
IMAGE_SHAPES = {"vis": (NATIVE_STAMP["VIS"], NATIVE_STAMP["VIS"]),
                "nisp": (len(NISP_BANDS), NATIVE_STAMP["Y"], NATIVE_STAMP["Y"])}
_TILE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


def check_tile_name(tile: str) -> str:
    if not isinstance(tile, str) or not _TILE_RE.match(tile):
        raise ValueError(f"tile name {tile!r} is not allowed: use letters, digits and _ . + - (no slashes)")
    return tile


def parse_codec(codec: str) -> tuple[str, int | None]:
    """``"lossless"`` -> (lossless, None); ``"lossy"`` or ``"bitround:N"`` -> (bitround, N)."""
    if codec == "lossless":
        return "lossless", None
    if codec == "lossy":
        return "bitround", DEFAULT_KEEPBITS
    match = re.fullmatch(r"bitround:(\d+)", codec or "")
    if match and 1 <= int(match.group(1)) <= 23:
        return "bitround", int(match.group(1))
    raise ValueError(f"unknown codec {codec!r}: expected 'lossless', 'lossy' or 'bitround:N' (1 <= N <= 23)")


def normalise_truth_dtype(name: str, dtype: str) -> str:
    """Truth dtypes as stored: numeric numpy dtypes as given, any string dtype as ``"str"``."""
    if dtype in ("str", "object", "O") or np.dtype(dtype).kind in "USO":
        return "str"
    kind = np.dtype(dtype).kind
    if kind not in "biuf":
        raise ValueError(f"truth column {name!r}: dtype {dtype!r} not supported (numeric, bool or str)")
    return np.dtype(dtype).str if kind != "b" else "bool"


def bitround(x: np.ndarray, keepbits: int) -> np.ndarray:
    """Round float32 mantissas to ``keepbits`` bits (round-half-to-even; numcodecs BitRound)."""
    from numcodecs import BitRound

    x = np.ascontiguousarray(x, dtype=np.float32)
    out = BitRound(keepbits=keepbits).encode(x)
    return np.asarray(out).view(np.float32).reshape(x.shape)


def compressors():
    from zarr.codecs import BloscCodec

    return [BloscCodec(**BLOSC)]


def create_tile_arrays(group, chunk_size: int, has_vis: bool, has_nisp: bool, truth: dict[str, str]) -> None:
    """Create the empty (length 0) arrays of one tile in ``group``."""
    inner = min(INNER_CHUNK, chunk_size)
    for name, shape in IMAGE_SHAPES.items():
        if (name == "vis" and not has_vis) or (name == "nisp" and not has_nisp):
            continue
        group.create_array(name, shape=(0, *shape), dtype="float32", chunks=(inner, *shape),
                           shards=(chunk_size, *shape), compressors=compressors(), fill_value=np.nan,
                           dimension_names=("n", "y", "x") if name == "vis" else ("n", "band", "y", "x"))
    for name, dtype in SCALAR_COLUMNS.items():
        group.create_array(name, shape=(0,), dtype=dtype, chunks=(chunk_size,), compressors=compressors(),
                           fill_value=0, dimension_names=("n",))
    if truth:
        tgroup = group.create_group("truth")
        for name, dtype in truth.items():
            fill = "" if dtype == "str" else (False if dtype == "bool" else 0)
            tgroup.create_array(name, shape=(0,), dtype=dtype, chunks=(chunk_size,),
                                compressors=compressors(), fill_value=fill, dimension_names=("n",))


def array_names(has_vis: bool, has_nisp: bool, truth: dict[str, str]) -> list[str]:
    """Paths (relative to the tile group) of every array of a tile."""
    names = (["vis"] if has_vis else []) + (["nisp"] if has_nisp else []) + list(SCALAR_COLUMNS)
    return names + [f"truth/{t}" for t in truth]


def chunk_key(tile: str, array: str, index: int, ndim: int) -> str:
    """The key (path below the store root) of chunk (or shard) ``index`` along N of one array."""
    return "/".join(["tiles", tile, array, "c", str(index), *(["0"] * (ndim - 1))])


def chunk_file(root: Path, tile: str, array: str, index: int, ndim: int) -> Path:
    """The file holding chunk (or shard) ``index`` along N of one array in a local store."""
    return Path(root) / chunk_key(tile, array, index, ndim)


def open_for_write(group, name: str):
    """An array of ``group`` that writes every chunk, even one equal to the fill value.

    Without this zarr skips all-NaN or all-zero chunks, and a missing chunk
    file could not be told from a lost one.
    """
    return group[name].with_config({"write_empty_chunks": True})
