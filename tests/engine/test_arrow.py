"""NumPy <-> Arrow without pandas (engine/arrow.py): the same arrays as pyarrow's own conversions, and a
worker's write-and-check of a part that never loads pandas (it cost the first task of every worker 1.2 s)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pyarrow as pa
import pytest

from lensengine.engine.arrow import array_from_numpy, column_to_numpy, empty_columns, read_parquet

NUMERIC = [pa.int8(), pa.int16(), pa.int32(), pa.int64(), pa.uint8(), pa.uint16(), pa.uint32(), pa.uint64(),
           pa.float32(), pa.float64()]


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b, equal_nan=a.dtype.kind == "f")


@pytest.mark.parametrize("arrow_type", NUMERIC, ids=str)
def test_numbers_are_built_and_read_as_pyarrow_does(arrow_type):
    dtype = np.dtype(arrow_type.to_pandas_dtype())
    rng = np.random.default_rng(3)
    values = (rng.normal(size=9) * 100).astype(dtype)
    if dtype.kind == "f":
        values[[1, 4]] = [np.nan, np.inf]
    built = array_from_numpy(values, arrow_type)
    reference = pa.array(values, type=arrow_type)
    assert built.type == arrow_type and built.null_count == 0
    assert built.buffers()[1].to_pybytes() == reference.buffers()[1].to_pybytes()
    # slices of chunks (non-zero offsets) and several chunks read back whole
    column = pa.chunked_array([reference.slice(2, 5), reference, reference.slice(9)])
    assert _same(column_to_numpy(column), column.to_numpy(zero_copy_only=False))
    out = column_to_numpy(column)
    out[0] = 0  # a copy, not a read-only view of Arrow's buffer


def test_text_is_built_and_read_as_pyarrow_does():
    values = np.array(["sim", "", "é漢字", "tile-7", None], dtype=object)  # None: str(None), as astype(str)
    for arrow_type in (pa.string(), pa.large_string()):
        built = array_from_numpy(values, arrow_type)
        assert built.equals(pa.array(values.astype(str), type=arrow_type))
        column = pa.chunked_array([built.slice(1, 3), built])
        got = column_to_numpy(column)
        assert got.dtype == object and got.tolist() == column.to_numpy(zero_copy_only=False).tolist()


def test_anything_else_goes_through_pyarrow_with_its_checks():
    # a cast: pa.array checks it, so a value that does not fit is refused rather than wrapped
    with pytest.raises(pa.ArrowInvalid):
        array_from_numpy(np.array([1, 300], np.int64), pa.int8())
    assert array_from_numpy(np.array([1, 2], np.int64), pa.int32()).equals(pa.array([1, 2], type=pa.int32()))
    flags = np.array([True, False, True])
    assert array_from_numpy(flags, pa.bool_()).equals(pa.array(flags))
    with_nulls = pa.chunked_array([pa.array([1.0, None, 3.0], type=pa.float32())])
    assert _same(column_to_numpy(with_nulls), with_nulls.to_numpy(zero_copy_only=False))
    text_nulls = pa.chunked_array([pa.array(["a", None])])
    assert column_to_numpy(text_nulls).tolist() == text_nulls.to_numpy(zero_copy_only=False).tolist()


def test_empty_columns_match_an_empty_table():
    schema = pa.schema([(str(t), t) for t in NUMERIC] + [("s", pa.string()), ("b", pa.bool_())])
    table = schema.empty_table()
    got = empty_columns(schema)
    assert list(got) == table.column_names
    for name in table.column_names:
        assert _same(got[name], table.column(name).to_numpy(zero_copy_only=False))


def test_a_part_is_written_and_checked_without_pandas(tmp_path):
    """What a worker does per task -- the part written, then checked and its candidates read -- in a fresh process."""
    code = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        import numpy as np, pyarrow as pa
        from lensengine.engine.arrow import array_from_numpy, column_to_numpy, read_parquet
        from lensengine.engine.run_state import PartsFolder, ids_sha256
        parts = PartsFolder(Path({str(tmp_path)!r}) / "p")
        parts.scores_path.mkdir(parents=True)
        ids = np.arange(10, 14, dtype=np.int64)
        cols = {{"TILE": np.array(["t"] * 4, dtype=object), "ROW": np.arange(4, dtype=np.int64), "OBJECT_ID": ids,
                "P_ENSEMBLE": np.linspace(0, 1, 4).astype(np.float32)}}
        types = {{"TILE": pa.string(), "ROW": pa.int64(), "OBJECT_ID": pa.int64(), "P_ENSEMBLE": pa.float32()}}
        table = pa.Table.from_arrays([array_from_numpy(cols[k], types[k]) for k in cols], names=list(cols))
        path = parts.part_path("t", 0)
        identity = {{"tile": "t", "start": 0, "stop": 4, "run": "r"}}
        parts.write_part(path, table, {{**identity, "ids": ids_sha256(ids)}})
        problem, got = parts.check_part(path, identity, columns=("P_ENSEMBLE",))
        assert problem is None, problem
        assert got["TILE"].tolist() == ["t"] * 4 and np.array_equal(got["P_ENSEMBLE"], cols["P_ENSEMBLE"])
        back = read_parquet(path)
        assert column_to_numpy(back.column("OBJECT_ID")).tolist() == ids.tolist()
        print("pandas loaded:", "pandas" in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "pandas loaded: False" in out
