"""Rows of a store's arrays read straight from their local chunk files, in the calling thread.

zarr reads a piece of a shard through its event-loop thread and a pool of decoding threads. Beside a
run's two network threads on two cores, those hand-overs cost far more than the decoding itself: in a
``lensengine run`` of 4 096 cutouts the zarr threads used 0.52 ms of CPU per cutout against 0.13 ms for
the same reads alone (stop 36, ``docs/performance.md``). For the layout this project writes (sharding
with little-endian bytes and Blosc inside, a CRC32C-checked index at the end of the shard) this module
does what zarr does, without the threads: it reads the shard's index, checks its checksum, and decodes
the inner chunks a range of rows needs with Blosc into the output. A missing inner chunk reads as the
fill value, as in zarr. The small per-cutout columns (IDs, positions, flags, numeric and text truth; one Blosc
chunk per file) are read the same way by :class:`ChunkLayout`: through zarr, the 40-odd columns of a simulated
store took about 28 ms per chunk, the first piece of every chunk, while the run's networks waited for it
(stop 42). Any other layout, and any remote store, is read by zarr.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

import google_crc32c
import numpy as np
from numcodecs import blosc
from numcodecs.vlen import VLenUTF8

#: Offset and length of an inner chunk the shard does not hold (zarr's sharding specification).
_ABSENT = 2**64 - 1
#: The environment switch that sends every read through zarr (``off``), for comparison and as a way out.
SWITCH = "LENSENGINE_DIRECT_READ"


class _ReadBuffers:
    """Byte buffers that the compressed inner chunks are read into, handed out one per read and kept after it.

    Reading a chunk into a new ``bytes`` object each time gives the kernel fresh pages to fill.  Inside a
    Dask worker, whose malloc settings put every large allocation in new pages, those page faults were 40 %
    of a run's (stop 40, ``docs/performance.md``).  A buffer kept from an earlier read has its pages already.
    """

    def __init__(self, keep: int = 4):
        self._free: list[bytearray] = []
        self._keep = keep
        self._lock = threading.Lock()

    def take(self, size: int) -> bytearray:
        with self._lock:
            fits = [i for i, buf in enumerate(self._free) if len(buf) >= size]
            if fits:  # the smallest that fits: a VIS chunk's buffer stays for the VIS reads of other threads
                return self._free.pop(min(fits, key=lambda i: len(self._free[i])))
            if self._free:
                self._free.pop(0)  # too small for this store's chunks: let it go
        return bytearray(size + size // 4)  # room for the next chunks, whose compressed sizes vary a little

    def give(self, buf: bytearray) -> None:
        with self._lock:
            if len(self._free) < self._keep:
                self._free.append(buf)


_buffers = _ReadBuffers()


@dataclass(frozen=True)
class ShardLayout:
    """What reading one sharded array needs: rows per shard and per inner chunk, a row's shape, the fill."""

    rows: int                # rows (cutouts) per shard
    inner: int               # rows per inner chunk
    shape: tuple[int, ...]   # one row's shape
    fill: float

    @classmethod
    def of(cls, array) -> "ShardLayout | None":
        """The layout of a zarr array if this module can read it, else ``None`` (zarr reads it)."""
        if _switched_off():
            return None
        try:
            from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec, ShardingCodec
            from zarr.codecs.sharding import ShardingCodecIndexLocation

            meta = array.metadata
            codecs = meta.codecs
            if len(codecs) != 1 or not isinstance(codecs[0], ShardingCodec):
                return None
            shard = codecs[0]
            inside = [type(c) for c in shard.codecs]
            index = [type(c) for c in shard.index_codecs]
            if (inside != [BytesCodec, BloscCodec] or index != [BytesCodec, Crc32cCodec]
                    or not _little_endian(shard.codecs[0]) or not _little_endian(shard.index_codecs[0])
                    or shard.index_location != ShardingCodecIndexLocation.end):
                return None
            outer = tuple(meta.chunk_grid.chunk_shape)
            inner = tuple(shard.chunk_shape)
            if np.dtype(array.dtype) != np.dtype("<f4") or outer[1:] != inner[1:] or outer[0] % inner[0]:
                return None
            return cls(rows=outer[0], inner=inner[0], shape=outer[1:], fill=float(array.fill_value))
        except Exception:  # noqa: BLE001 - any metadata this module does not understand: zarr reads it
            return None

    def read(self, path: Path, first: int, start: int, stop: int, empty=None) -> np.ndarray:
        """Rows ``[start, stop)`` (array coordinates) of the shard file ``path``, whose first row is ``first``.

        ``empty(shape, dtype)`` makes the result array (default ``np.empty``): a caller that reads piece after
        piece of the same size can hand out arrays it keeps (the engine's buffer pool), whose pages the kernel
        has already given, instead of a new 20 MB array a read (stop 41, ``docs/performance.md``).

        Raises ``ValueError`` or ``RuntimeError`` naming what is wrong: a file too short for its index, an
        index whose checksum does not match, an inner chunk that does not decode to its size.
        """
        n_inner = self.rows // self.inner
        out = (empty or np.empty)((stop - start, *self.shape), np.float32)
        if stop <= start:
            return out
        chunk_bytes = self.inner * out[0].nbytes
        with open(path, "rb") as fh:
            size = 16 * n_inner + 4
            end = fh.seek(0, os.SEEK_END)
            if end < size:
                raise ValueError(f"shard file of {end} bytes cannot hold its {size}-byte index")
            fh.seek(end - size)
            tail = fh.read(size)
            if google_crc32c.value(tail[:-4]) != int.from_bytes(tail[-4:], "little"):
                raise ValueError("shard index checksum does not match")
            index = np.frombuffer(tail[:-4], "<u8").reshape(n_inner, 2)
            lo, hi = start - first, stop - first
            for j in range(lo // self.inner, -(-hi // self.inner)):
                a, b = max(lo, j * self.inner), min(hi, (j + 1) * self.inner)
                dest = out[a - lo:b - lo]
                offset, length = (int(v) for v in index[j])
                if offset == _ABSENT and length == _ABSENT:
                    dest[...] = self.fill
                    continue
                if offset + length > end - size:
                    raise ValueError(f"inner chunk {j} lies outside the shard's data ({offset}+{length} bytes)")
                fh.seek(offset)
                buf = _buffers.take(length)
                try:
                    data = memoryview(buf)[:fh.readinto(memoryview(buf)[:length])]
                    stored = int.from_bytes(data[4:8], "little") if len(data) >= 16 else -1
                    if stored != chunk_bytes:
                        raise ValueError(f"inner chunk {j} holds {stored} bytes, expected {chunk_bytes}")
                    whole = b - a == self.inner
                    target = dest if whole else np.empty((self.inner, *self.shape), np.float32)
                    blosc.decompress(data, target)
                finally:  # the chunk is decoded (or the read failed): nothing reads the buffer after this
                    _buffers.give(buf)
                if not whole:
                    dest[...] = target[a - j * self.inner:b - j * self.inner]
        return out


def _switched_off() -> bool:
    """Whether :data:`SWITCH` sends every read through zarr."""
    return os.environ.get(SWITCH, "").lower() in ("off", "0", "no", "false")


def _little_endian(codec) -> bool:
    """Whether a zarr ``bytes`` codec stores little-endian (or leaves the order unset, as for one-byte types)."""
    endian = getattr(codec.endian, "value", codec.endian)
    return endian in ("little", None)


@dataclass(frozen=True)
class ChunkLayout:
    """What reading one unsharded 1-D array needs: rows per chunk file and the dtype (Blosc inside)."""

    rows: int            # rows per chunk file
    dtype: np.dtype      # object for a text column
    shape: tuple = ()    # one row's shape (a scalar), as :class:`ShardLayout` has it

    @classmethod
    def of(cls, array) -> "ChunkLayout | None":
        """The layout of a zarr array if this module can read it, else ``None`` (zarr reads it)."""
        if _switched_off():
            return None
        try:
            from zarr.codecs import BloscCodec, BytesCodec, VLenUTF8Codec

            meta = array.metadata
            kinds = [type(c) for c in meta.codecs]
            if len(array.shape) != 1 or len(kinds) != 2 or kinds[1] is not BloscCodec:
                return None
            if kinds[0] is VLenUTF8Codec:  # a text column
                dtype = np.dtype(object)
            else:
                dtype = np.dtype(array.dtype)
                if kinds[0] is not BytesCodec or not _little_endian(meta.codecs[0]) or dtype.kind not in "biuf":
                    return None
            return cls(rows=int(meta.chunk_grid.chunk_shape[0]), dtype=dtype)
        except Exception:  # noqa: BLE001 - any metadata this module does not understand: zarr reads it
            return None

    def read(self, path: Path, first: int, start: int, stop: int, empty=None) -> np.ndarray:
        """Rows ``[start, stop)`` (array coordinates) of the chunk file ``path``, whose first row is ``first``.

        ``empty`` is accepted for the same call as :meth:`ShardLayout.read` and not used: these columns are
        small.  Raises ``ValueError`` when the file does not decode to one whole chunk.
        """
        data = Path(path).read_bytes()
        if self.dtype.kind == "O":  # text: Blosc around zarr's variable-length UTF-8 encoding
            whole = _VLEN_UTF8.decode(blosc.decompress(data))
            if len(whole) != self.rows:
                raise ValueError(f"chunk holds {len(whole)} strings, expected {self.rows}")
        else:
            whole = np.empty(self.rows, self.dtype)
            stored = int.from_bytes(data[4:8], "little") if len(data) >= 16 else -1
            if stored != whole.nbytes:
                raise ValueError(f"chunk holds {stored} bytes, expected {whole.nbytes}")
            blosc.decompress(data, whole)
        return whole[start - first:stop - first]  # a view of this read's own array


_VLEN_UTF8 = VLenUTF8()
