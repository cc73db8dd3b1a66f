"""NumPy columns to and from Arrow on the workers, without pyarrow loading pandas.

pyarrow's ``pa.array(ndarray)``, ``to_numpy()`` and ``pq.read_table`` import pandas (when it is installed)
on their first call in a process, to check for pandas types.  A worker that writes and checks score-table
parts needs none of that, but paid it inside its first task: about 1.2 s on the 2-core development
machine, a sixth of a short run's fixed cost (docs/performance.md, "Where a run's time outside the networks
went").  The helpers here build and read the Arrow buffers of the types a part holds (fixed-width numbers,
UTF-8 text) directly, giving what ``pa.array``/``to_numpy(zero_copy_only=False)`` give, and fall back to
them for anything else (nulls, booleans, a dtype that would need a cast), so nothing changes but the
imports.
"""

from __future__ import annotations

import numpy as np

__all__ = ["array_from_numpy", "column_to_numpy", "empty_columns", "read_parquet"]


def _fixed_width_dtype(arrow_type) -> np.dtype | None:
    """The NumPy dtype of a fixed-width integer or float Arrow type, None for any other type."""
    import pyarrow as pa

    if pa.types.is_integer(arrow_type):
        kind = "i" if pa.types.is_signed_integer(arrow_type) else "u"
        return np.dtype(f"{kind}{arrow_type.bit_width // 8}")
    if pa.types.is_float32(arrow_type):
        return np.dtype(np.float32)
    if pa.types.is_float64(arrow_type):
        return np.dtype(np.float64)
    return None


def array_from_numpy(values: np.ndarray, arrow_type):
    """``pa.array(values, type=arrow_type)`` for a 1-D column (text: ``values.astype(str)``), no nulls.

    Numbers already of the type's dtype and text are built from their buffers; anything else (a cast,
    booleans, nested types) goes through ``pa.array``, which checks the cast.
    """
    import pyarrow as pa

    values = np.asarray(values)
    n = len(values)
    dtype = _fixed_width_dtype(arrow_type)
    if dtype is not None and values.dtype == dtype and values.ndim == 1:
        return pa.Array.from_buffers(arrow_type, n, [None, pa.py_buffer(np.ascontiguousarray(values))])
    large = pa.types.is_large_string(arrow_type)
    if (pa.types.is_string(arrow_type) or large) and values.ndim == 1:
        encoded = [s.encode("utf-8") for s in values.astype(str).tolist()]
        offsets = np.zeros(n + 1, np.int64)
        np.cumsum([len(b) for b in encoded], out=offsets[1:])
        if large or offsets[-1] < 2**31:
            offsets = offsets if large else offsets.astype(np.int32)
            return pa.Array.from_buffers(arrow_type, n, [None, pa.py_buffer(offsets), pa.py_buffer(b"".join(encoded))])
    return pa.array(values.astype(str) if pa.types.is_string(arrow_type) else values, type=arrow_type)


def column_to_numpy(column) -> np.ndarray:
    """``column.to_numpy(zero_copy_only=False)`` of a (chunked) Arrow column, as a writable array.

    Fixed-width numbers without nulls are read from their buffers, text without nulls becomes an object
    array of ``str``; anything else goes through ``to_numpy``.
    """
    import pyarrow as pa

    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    dtype = _fixed_width_dtype(column.type)
    if column.null_count == 0 and dtype is not None:
        parts = [np.frombuffer(c.buffers()[1], dtype, count=len(c), offset=c.offset * dtype.itemsize)
                 for c in chunks if len(c)]
        return np.concatenate(parts) if parts else np.empty(0, dtype)
    if column.null_count == 0 and (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        out = np.empty(len(column), dtype=object)
        out[:] = column.to_pylist()
        return out
    return column.to_numpy(zero_copy_only=False)


def empty_columns(schema) -> dict[str, np.ndarray]:
    """``column_to_numpy`` of each column of ``schema.empty_table()``: no rows, each column's dtype."""
    import pyarrow as pa

    out = {}
    for field in schema:
        dtype = _fixed_width_dtype(field.type)
        if dtype is not None:
            out[field.name] = np.empty(0, dtype)
        elif pa.types.is_string(field.type) or pa.types.is_large_string(field.type):
            out[field.name] = np.empty(0, dtype=object)
        else:
            out[field.name] = pa.array([], type=field.type).to_numpy(zero_copy_only=False)
    return out


def read_parquet(path, columns=None):
    """One Parquet file as a pyarrow Table (``pq.read_table(path, columns=..., partitioning=None)``)."""
    import pyarrow.parquet as pq

    with pq.ParquetFile(path) as f:
        return f.read(columns=list(columns) if columns is not None else None)
