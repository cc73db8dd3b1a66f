"""Survey store: round trips, chunking, dask, codecs and opening errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lensengine.catalogs.store import FORMAT_VERSION, ChunkReadError, CutoutBatch, SurveyStore
from lensengine.engine.preprocess import Preprocessor
from lensengine.engine.specs import MODEL_SPECS


def test_round_trip_and_chunks(small_store):
    store, data = small_store
    reopened = SurveyStore.open(store.path)
    assert reopened.tiles == ["t0"]
    assert reopened.n_cutouts("t0") == 40 == reopened.total_cutouts()
    assert reopened.chunk_slices("t0") == [(0, 16), (16, 32), (32, 40)]
    assert reopened.attrs["format_version"] == FORMAT_VERSION
    assert reopened.attrs["pixel_scales"] == {"VIS": 0.1, "Y": 0.3, "J": 0.3, "H": 0.3}
    chunks = [reopened.read_chunk("t0", i) for i in range(3)]
    got = CutoutBatch.concatenate(chunks)
    np.testing.assert_array_equal(got.vis, data.vis)
    np.testing.assert_array_equal(got.nisp, data.nisp)
    np.testing.assert_array_equal(got.object_id, data.object_id)
    np.testing.assert_array_equal(got.ra, data.ra)
    np.testing.assert_array_equal(got.truth["label"], data.truth["label"])
    np.testing.assert_array_equal(got.truth["kind"], data.truth["kind"])
    assert got.vis.dtype == np.float32 and got.flags.dtype == np.uint32 and got.object_id.dtype == np.int64
    part = reopened.read("t0", 10, 35)
    np.testing.assert_array_equal(part.nisp, data.nisp[10:35])
    with pytest.raises(IndexError):
        reopened.read_chunk("t0", 3)
    index = reopened.read_index("t0", 5, 20)
    np.testing.assert_array_equal(index["object_id"], data.object_id[5:20])
    np.testing.assert_array_equal(index["dec"], data.dec[5:20])
    assert [i for i, _ in reopened.iter_chunks("t0")] == [0, 1, 2]


def test_bands_feed_preprocessor(small_store):
    store, _ = small_store
    batch = store.read_chunk("t0", 2)
    bands = batch.bands()
    assert list(bands) == ["VIS", "Y", "J", "H"] and bands["J"].shape == (8, 66, 66)
    prepared = Preprocessor(list(MODEL_SPECS.values()))(bands)
    assert prepared.inputs["OU-200"].shape == (8, 4, 200, 200)
    assert prepared.usable["OU-66"].all()


def test_to_dask_is_chunk_aligned(small_store):
    store, data = small_store
    arrays = store.to_dask("t0")
    assert arrays["vis"].chunks[0] == (16, 16, 8)
    assert arrays["nisp"].dtype == np.float32
    np.testing.assert_array_equal(arrays["nisp"][16:32].compute(), data.nisp[16:32])
    np.testing.assert_array_equal(arrays["object_id"].compute(), data.object_id)


def test_store_without_vis(tmp_path, batch_factory):
    store = SurveyStore.create(tmp_path / "n.zarr", survey="t", bands=("J", "Y", "H"), chunk_size=8)
    b = batch_factory(5, truth=False)
    b.vis = None
    store.append("a", b)
    got = SurveyStore.open(store.path).read_chunk("a", 0)
    assert got.vis is None and got.bands()["VIS"] is None
    np.testing.assert_array_equal(got.bands()["H"], b.nisp[:, 2])


def test_lossy_codec_precision(tmp_path, batch_factory):
    b = batch_factory(4, truth=False)
    store = SurveyStore.create(tmp_path / "l.zarr", survey="t", chunk_size=8, codec="lossy")
    store.append("a", b)
    got = store.read_chunk("a", 0)
    rel = np.abs(got.vis / b.vis - 1)
    assert 0 < rel.max() <= 2.0 ** -13
    with pytest.raises(ValueError, match="unknown codec"):
        SurveyStore.create(tmp_path / "x.zarr", survey="t", codec="jpeg")


def test_open_errors_name_the_path(tmp_path, small_store):
    with pytest.raises(ValueError, match="not a lensengine survey store: found nothing"):
        SurveyStore.open(tmp_path / "absent.zarr")
    (tmp_path / "plain").mkdir()
    with pytest.raises(ValueError, match="plain.*directory without zarr.json"):
        SurveyStore.open(tmp_path / "plain")
    store, _ = small_store
    meta = json.loads((store.path / "zarr.json").read_text())
    meta["attributes"]["format_version"] = 99
    (store.path / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="version 99"):
        SurveyStore.open(store.path)


def test_append_rules(tmp_path, small_store, batch_factory):
    store, _ = small_store
    with pytest.raises(ValueError, match="read-only"):
        SurveyStore.open(store.path).append("t0", batch_factory(2, truth=False))
    with pytest.raises(ValueError, match="truth columns"):
        SurveyStore.open(store.path, "a").append("t0", batch_factory(2, truth=False))
    bad = batch_factory(2)
    bad.vis = bad.vis[:, :100]
    with pytest.raises(ValueError, match="vis has shape"):
        SurveyStore.open(store.path, "a").append("t0", bad)
    with pytest.raises(ValueError, match="tile name"):
        SurveyStore.open(store.path, "a").append("a/b", batch_factory(2))
    with pytest.raises(FileExistsError):
        SurveyStore.create(store.path, survey="t")


def test_crash_mid_append_keeps_committed_length(small_store, batch_factory):
    store, data = small_store
    store = SurveyStore.open(store.path, "a")
    group = store._tile("t0")
    # simulate a crash after the data of a 10-cutout append were written, before the commit
    group.attrs["pending"] = [40, 50]
    for name in ("vis", "nisp", "object_id", "ra", "dec", "flags", "truth/label", "truth/theta_e", "truth/kind"):
        arr = group[name]
        arr.resize((50, *arr.shape[1:]))
    reopened = SurveyStore.open(store.path, "a")
    assert reopened.n_cutouts("t0") == 40
    np.testing.assert_array_equal(reopened.read("t0", 0, 40).vis, data.vis)
    more = batch_factory(3, start=40)
    reopened.append("t0", more)
    assert reopened.n_cutouts("t0") == 43
    assert reopened._tile("t0")["vis"].shape[0] == 43
    np.testing.assert_array_equal(reopened.read("t0", 40, 43).vis, more.vis)


def test_corrupt_chunk_raises_chunk_read_error(small_store):
    store, _ = small_store
    shard = store.path / "tiles" / "t0" / "vis" / "c" / "1" / "0" / "0"
    shard.write_bytes(b"garbage" * 100)
    with pytest.raises(ChunkReadError) as info:
        store.read_chunk("t0", 1)
    assert info.value.tile == "t0" and info.value.index == 1 and "vis" in info.value.reason
    store.read_chunk("t0", 0)  # the others still read
    (store.path / "tiles" / "t0" / "flags" / "c" / "2").unlink()
    with pytest.raises(ChunkReadError, match="missing"):
        store.read_chunk("t0", 2)


def test_pieces_of_a_chunk_decode_its_small_columns_once(small_store, monkeypatch):
    """Reading a chunk piece by piece gives what one read gives, decoding IDs, flags and truth once per chunk."""
    written, expected = small_store
    store = SurveyStore.open(written.path)
    decoded = []  # (chunk, start, stop) of every read of the object IDs
    read_arrays = store._read_arrays

    def counting(tile, index, start, stop, names, empty=None):
        if "object_id" in names:
            decoded.append((index, start, stop))
        return read_arrays(tile, index, start, stop, names, empty)

    monkeypatch.setattr(store, "_read_arrays", counting)
    pieces = [store.read("t0", a, min(a + 5, 40)) for a in range(0, 40, 5)]  # pieces within chunks of 16
    got = CutoutBatch.concatenate([store.read("t0", a, b) for a, b in [(0, 16), (16, 32), (32, 40)]])
    joined = CutoutBatch.concatenate(pieces)
    for batch in (joined, got):
        np.testing.assert_array_equal(batch.object_id, expected.object_id)
        np.testing.assert_array_equal(batch.vis, expected.vis)
        np.testing.assert_array_equal(batch.flags, expected.flags)
        for name, values in expected.truth.items():
            np.testing.assert_array_equal(batch.truth[name], values)
        assert batch.truth["kind"].dtype.kind == "U"
    # the small columns: chunks 0, 1, 2 once for the pieces (whole committed chunk), then 0, 1, 2 again
    # as the last chunk read was 2; images are read per piece
    assert decoded == [(0, 0, 16), (1, 16, 32), (2, 32, 40), (0, 0, 16), (1, 16, 32), (2, 32, 40)]
    pieces[0].flags[:] = 7  # a piece is the caller's own copy
    assert not store.read("t0", 0, 5).flags.any()


def test_corrupt_small_column_fails_every_piece_of_its_chunk(small_store):
    store, _ = small_store
    store = SurveyStore.open(store.path)
    (store.path / "tiles" / "t0" / "truth" / "label" / "c" / "1").write_bytes(b"garbage" * 10)
    for a in (16, 24):
        with pytest.raises(ChunkReadError, match="label"):
            store.read("t0", a, a + 8)
    assert len(store.read("t0", 32, 40)) == 8  # the next chunk still reads


def test_first_rows_place_each_tile_after_the_ones_before_it(tmp_path, rng):
    from .conftest import make_batch

    store = SurveyStore.create(tmp_path / "f.zarr", survey="t", chunk_size=8)
    sizes = {"B": 5, "A": 12, "C": 3}
    for tile, n in sizes.items():
        store.append(tile, make_batch(rng, n))
    first, at = store.first_rows(), 0
    assert list(first) == store.tiles
    for tile in store.tiles:  # by hand: each tile starts where the ones before it end
        assert first[tile] == at
        at += sizes[tile]
    assert at == store.total_cutouts() == 20
