"""The direct shard reader (catalogs/_shard_read.py) against zarr's own read of the same store."""

import numpy as np
import pytest

from lensengine.catalogs._shard_read import SWITCH, ChunkLayout, ShardLayout
from lensengine.catalogs.store import ChunkReadError, CutoutBatch, SurveyStore

from .conftest import make_batch


@pytest.fixture
def sharded(tmp_path, rng):
    """100 cutouts in shards of 64 with inner chunks of 32: two shards, the last one partly written."""
    store = SurveyStore.create(tmp_path / "s.zarr", survey="test", chunk_size=64, truth_columns={"label": "int8"})
    batches = [make_batch(rng, 70), make_batch(rng, 30, start=70)]
    for b in batches:
        store.append("t0", b)
    return store.path, CutoutBatch.concatenate(batches)


def _shard(path, name, index):
    ndim = 3 if name == "vis" else 4
    return path / "tiles" / "t0" / name / "c" / str(index) / "/".join(["0"] * (ndim - 1))


def test_the_store_layout_is_read_directly(sharded, monkeypatch):
    path, _ = sharded
    store = SurveyStore.open(path)
    vis, nisp = store._direct("t0", "vis"), store._direct("t0", "nisp")
    assert vis == ShardLayout(rows=64, inner=32, shape=(200, 200), fill=vis.fill) and np.isnan(vis.fill)
    assert nisp.shape == (3, 66, 66) and nisp.inner == 32
    assert store._direct("t0", "object_id") == ChunkLayout(rows=64, dtype=np.dtype("int64"))  # a small column
    assert store._direct("t0", "truth/label") == ChunkLayout(rows=64, dtype=np.dtype("int8"))
    assert ShardLayout.of(store._array("t0", "object_id")) is None  # not sharded
    monkeypatch.setenv(SWITCH, "off")
    assert ShardLayout.of(store._array("t0", "vis")) is None
    assert ChunkLayout.of(store._array("t0", "object_id")) is None
    assert SurveyStore.open(path, mode="a")._direct("t0", "vis") is None  # a store being written: zarr


@pytest.mark.parametrize("start,stop", [(0, 100), (0, 5), (30, 34), (31, 97), (64, 100), (96, 100), (40, 40), (63, 65)])
def test_direct_reads_equal_zarr_and_the_written_cutouts(sharded, monkeypatch, start, stop):
    path, expected = sharded
    direct = SurveyStore.open(path).read("t0", start, stop)
    monkeypatch.setenv(SWITCH, "off")
    through_zarr = SurveyStore.open(path).read("t0", start, stop)
    for name in ("vis", "nisp"):
        got, want = getattr(direct, name), getattr(through_zarr, name)
        assert got.dtype == np.float32 and got.shape == want.shape
        assert got.tobytes() == want.tobytes()
        np.testing.assert_array_equal(got, getattr(expected, name)[start:stop])


def test_reads_reuse_their_buffers_and_threads_reading_at_once_get_their_own(sharded, monkeypatch):
    """The compressed chunks are read into kept buffers (no fresh pages per read), and four threads reading
    different rows at once each decode their own chunks: every read equals the written cutouts."""
    from concurrent.futures import ThreadPoolExecutor

    from lensengine.catalogs import _shard_read

    path, expected = sharded
    made = []
    monkeypatch.setattr(_shard_read, "_buffers", _shard_read._ReadBuffers())
    real_bytearray = bytearray
    monkeypatch.setattr(_shard_read, "bytearray", lambda n: made.append(n) or real_bytearray(n), raising=False)
    store = SurveyStore.open(path)
    for _ in range(3):
        store.read("t0", 0, 100)
    assert 0 < len(made) <= 2  # the first read made its buffers (vis, nisp); the later reads reused them
    ranges = [(0, 100), (3, 97), (31, 65), (64, 100)] * 6
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda r: SurveyStore.open(path).read("t0", *r), ranges))
    for (a, b), piece in zip(ranges, got):
        np.testing.assert_array_equal(piece.vis, expected.vis[a:b])
        np.testing.assert_array_equal(piece.nisp, expected.nisp[a:b])


def test_a_lossy_store_reads_the_same(tmp_path, rng, monkeypatch):
    store = SurveyStore.create(tmp_path / "l.zarr", survey="test", chunk_size=64, codec="lossy")
    store.append("t0", make_batch(rng, 50, truth=False))
    direct = SurveyStore.open(store.path).read("t0", 3, 50)
    monkeypatch.setenv(SWITCH, "off")
    np.testing.assert_array_equal(direct.vis, SurveyStore.open(store.path).read("t0", 3, 50).vis)


def _flip(path, offset_from_end):
    data = bytearray(path.read_bytes())
    data[-offset_from_end] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_damaged_index_is_a_chunk_read_error(sharded):
    path, _ = sharded
    _flip(_shard(path, "vis", 1), 10)  # inside the index: its checksum no longer matches
    store = SurveyStore.open(path)
    with pytest.raises(ChunkReadError, match="checksum") as info:
        store.read("t0", 70, 80)
    assert info.value.index == 1 and "vis" in info.value.reason
    assert len(store.read("t0", 0, 64)) == 64  # the other shard still reads


def test_damaged_or_short_data_is_a_chunk_read_error(sharded):
    path, _ = sharded
    shard = _shard(path, "nisp", 0)
    data = bytearray(shard.read_bytes())
    data[20:2000] = b"\0" * 1980  # the first inner chunk's Blosc stream
    shard.write_bytes(bytes(data))
    store = SurveyStore.open(path)
    with pytest.raises(ChunkReadError, match="nisp"):
        store.read("t0", 0, 10)
    _shard(path, "vis", 1).write_bytes(b"garbage")  # shorter than its index
    with pytest.raises(ChunkReadError, match="cannot hold its"):
        store.read("t0", 64, 70)


def test_an_absent_inner_chunk_reads_as_the_fill_value_as_in_zarr(sharded, monkeypatch):
    """zarr reads an inner chunk the shard's index marks absent as fill values (NaN for images); so does this."""
    import google_crc32c

    path, expected = sharded
    shard = _shard(path, "vis", 0)
    data = bytearray(shard.read_bytes())
    n_inner = 2
    index = np.frombuffer(bytes(data[-(16 * n_inner + 4):-4]), "<u8").reshape(n_inner, 2).copy()
    index[1] = 2**64 - 1  # rows 32-63 absent
    raw = index.tobytes()
    data[-(16 * n_inner + 4):] = raw + google_crc32c.value(raw).to_bytes(4, "little")
    shard.write_bytes(bytes(data))
    direct = SurveyStore.open(path).read("t0", 20, 40).vis
    monkeypatch.setenv(SWITCH, "off")
    np.testing.assert_array_equal(direct, SurveyStore.open(path).read("t0", 20, 40).vis)
    np.testing.assert_array_equal(direct[:12], expected.vis[20:32])
    assert np.isnan(direct[12:]).all()


@pytest.mark.parametrize("start,stop", [(0, 40), (0, 5), (14, 18), (16, 32), (33, 40), (39, 40)])
def test_small_columns_are_read_directly_and_equal_zarrs_read(small_store, monkeypatch, start, stop):
    """IDs, positions, flags and truth (numeric, bool and text) come from the chunk files without zarr, with
    zarr's values and dtypes; the last chunk is partly written."""
    import zarr

    store, expected = small_store
    assert SurveyStore.open(store.path)._direct("t0", "truth/kind") == ChunkLayout(rows=16, dtype=np.dtype(object))
    with monkeypatch.context() as m:  # any read through zarr fails: every column must be read directly
        m.setattr(zarr.Array, "__getitem__", lambda *a: pytest.fail("read through zarr"))
        direct = SurveyStore.open(store.path).read("t0", start, stop)
    monkeypatch.setenv(SWITCH, "off")
    through_zarr = SurveyStore.open(store.path).read("t0", start, stop)
    for name in ("object_id", "ra", "dec", "flags"):
        got, want = getattr(direct, name), getattr(through_zarr, name)
        assert got.dtype == want.dtype and got.tobytes() == want.tobytes()
    np.testing.assert_array_equal(direct.object_id, expected.object_id[start:stop])
    assert direct.truth.keys() == through_zarr.truth.keys() == {"label", "theta_e", "kind"}
    for name, got in direct.truth.items():
        assert got.dtype == through_zarr.truth[name].dtype
        np.testing.assert_array_equal(got, through_zarr.truth[name])
        np.testing.assert_array_equal(got, expected.truth[name][start:stop])


def test_a_damaged_small_column_is_a_chunk_read_error(small_store):
    store, _ = small_store
    (store.path / "tiles" / "t0" / "ra" / "c" / "1").write_bytes(b"not a blosc stream at all")
    reader = SurveyStore.open(store.path)
    with pytest.raises(ChunkReadError, match="'ra'") as info:
        reader.read("t0", 16, 20)
    assert info.value.index == 1
    assert len(reader.read("t0", 0, 16)) == 16 and len(reader.read("t0", 32, 40)) == 8  # the other chunks read


def test_a_read_takes_the_smallest_kept_buffer_that_fits():
    from lensengine.catalogs._shard_read import _ReadBuffers

    buffers = _ReadBuffers()
    small, large = buffers.take(100), buffers.take(1000)
    buffers.give(large)
    buffers.give(small)
    assert buffers.take(50) is small  # not the large one, which a large chunk of another thread needs
    assert buffers.take(900) is large
    assert len(buffers.take(2000)) >= 2000  # nothing kept fits: a new one


def test_a_read_within_a_chunk_makes_its_images_with_the_callers_allocator(sharded):
    """``read(..., empty=...)``: the direct reads decode into the arrays the caller's allocator gives (the
    engine's buffer pool), with the same values; a range over two chunks is read as before and joined into new
    arrays, which the allocator does not give."""
    path, expected = sharded
    store = SurveyStore.open(path)
    given = []

    def empty(shape, dtype):
        given.append(np.full(shape, -1.0, dtype))  # not zeros: a row the read skipped would show
        return given[-1]

    piece = store.read("t0", 8, 40, empty=empty)
    assert [a.shape for a in given] == [(32, 200, 200), (32, 3, 66, 66)]
    assert piece.vis is given[0] and piece.nisp is given[1]
    np.testing.assert_array_equal(piece.vis, expected.vis[8:40])
    np.testing.assert_array_equal(piece.nisp, expected.nisp[8:40])
    across = store.read("t0", 60, 70, empty=empty)
    assert len(given) == 2  # pieces of two chunks: read into short-lived arrays and joined into new ones
    np.testing.assert_array_equal(across.vis, expected.vis[60:70])
