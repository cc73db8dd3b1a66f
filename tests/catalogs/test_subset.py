"""`lensengine store concat` and `store top`: new stores from parts of others (catalogs/subset.py)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from lensengine.catalogs.store import CutoutBatch, SurveyStore
from lensengine.catalogs.subset import concat_stores, parse_part, select_top, top_cutouts

from .conftest import make_batch

TRUTH = {"label": "int8", "theta_e": "float64", "kind": "str"}


def _store(path, rng, sizes, start=0, chunk_size=16, truth=TRUTH):
    """A store with one tile per entry of ``sizes``; object IDs run on from ``start`` across tiles."""
    store = SurveyStore.create(path, survey="subset test", chunk_size=chunk_size, truth_columns=truth)
    batches = []
    for t, n in enumerate(sizes):
        batch = make_batch(rng, n, start=start)
        batch.truth = {k: batch.truth[k] for k in truth}
        store.append(f"t{t}", batch)
        batches.append(batch)
        start += n
    return store, CutoutBatch.concatenate(batches)


def _everything(path) -> CutoutBatch:
    store = SurveyStore.open(path)
    return CutoutBatch.concatenate([store.read(t, a, b) for t in store.tiles for a, b in store.chunk_slices(t)])


def _same(got: CutoutBatch, want: CutoutBatch, index=None) -> None:
    index = np.arange(len(want)) if index is None else np.asarray(index)
    np.testing.assert_array_equal(got.object_id, want.object_id[index])
    np.testing.assert_array_equal(got.ra, want.ra[index])
    np.testing.assert_array_equal(got.vis, want.vis[index])
    np.testing.assert_array_equal(got.nisp, want.nisp[index])
    for name in TRUTH:
        np.testing.assert_array_equal(got.truth[name], want.truth[name][index])


def test_parse_part_takes_a_count_and_leaves_urls_alone():
    assert parse_part("a.zarr:12").limit == 12
    assert str(parse_part("a.zarr:12").location) == "a.zarr"
    assert parse_part("a.zarr").limit is None
    assert parse_part("s3://bucket/x.zarr") == parse_part("s3://bucket/x.zarr")
    assert parse_part("s3://bucket/x.zarr").limit is None
    assert parse_part("s3://bucket/x.zarr:5").limit == 5
    assert parse_part("s3://bucket/x.zarr:5").location == "s3://bucket/x.zarr"


def test_concat_joins_whole_stores_and_first_cutouts_in_order(tmp_path, rng):
    _, a = _store(tmp_path / "a.zarr", rng, [20, 13])          # two tiles, partial chunks
    _, b = _store(tmp_path / "b.zarr", rng, [30], start=100)
    n = concat_stores(tmp_path / "out.zarr", [parse_part(f"{tmp_path / 'a.zarr'}:25"),
                                              parse_part(str(tmp_path / "b.zarr"))])
    assert n == 55
    out = SurveyStore.open(tmp_path / "out.zarr")
    assert out.tiles == ["cutouts"] and out.chunk_size == 16
    assert out.truth_columns == SurveyStore.open(tmp_path / "a.zarr").truth_columns
    want = CutoutBatch.concatenate([a.take(np.arange(25)), b])
    _same(_everything(tmp_path / "out.zarr"), want)
    sources = out.attrs["provenance"]["sources"]
    assert [s["first"] for s in sources] == [25, None]


def test_concat_refuses_mismatched_stores_and_leaves_nothing(tmp_path, rng):
    _store(tmp_path / "a.zarr", rng, [10])
    _store(tmp_path / "b.zarr", rng, [10], truth={"label": "int8", "theta_e": "float64"})
    with pytest.raises(ValueError, match="differ in their truth columns.*kind"):
        concat_stores(tmp_path / "out.zarr", [parse_part(str(tmp_path / "a.zarr")),
                                              parse_part(str(tmp_path / "b.zarr"))])
    with pytest.raises(ValueError, match="holds 10 cutouts, fewer than the 11"):
        concat_stores(tmp_path / "out.zarr", [parse_part(f"{tmp_path / 'a.zarr'}:11")])
    assert not (tmp_path / "out.zarr").exists()
    assert not list(tmp_path.glob(".out.zarr*"))


def test_select_top_by_hand():
    scores = np.array([0.2, np.nan, 0.9, 0.5, 0.9, 0.1, 0.7])
    # the three highest finite scores: 0.9 (row 2), 0.9 (row 4; the tie goes to the earlier row first), 0.7
    assert select_top(scores, 3).tolist() == [2, 4, 6]
    assert select_top(scores, 2).tolist() == [2, 4]
    assert select_top(np.array([0.5, 0.5, 0.5]), 2).tolist() == [0, 1]
    assert select_top(scores, 100).tolist() == [0, 2, 3, 4, 5, 6]   # never an unscored row


def _table(path, tiles, rows, ids, scores, column="P_OU_VIS"):
    data = {"OBJECT_ID": pa.array(ids, pa.int64()), "ROW": pa.array(rows, pa.int64()),
            column: pa.array(scores, pa.float32())}
    if tiles is not None:
        data = {"TILE": pa.array(tiles, pa.string()), **data}
    pq.write_table(pa.table(data), path)
    return path


def test_top_keeps_the_highest_scores_across_tiles_in_store_order(tmp_path, rng):
    _, everything = _store(tmp_path / "pool.zarr", rng, [20, 18])
    tiles = ["t0"] * 20 + ["t1"] * 18
    rows = list(range(20)) + list(range(18))
    scores = np.linspace(0, 1, 38, dtype=np.float32)[::-1].copy()    # row 0 of t0 highest
    scores[[3, 25]] = np.float32(2.0)                                 # t0 row 3 and t1 row 5 on top
    scores[0] = np.nan                                                # a flagged cutout is never kept
    table = _table(tmp_path / "scores.parquet", tiles, rows, everything.object_id, scores)
    result = top_cutouts(tmp_path / "pool.zarr", table, "P_OU_VIS", 4, tmp_path / "hard.zarr")
    # by hand: 2.0 (t0/3), 2.0 (t1/5), then the linspace's highest finite: t0 rows 1 and 2
    assert result == {"n_written": 4, "n_scored": 37, "threshold": pytest.approx(float(scores[2]))}
    _same(_everything(tmp_path / "hard.zarr"), everything, [1, 2, 3, 25])
    note = SurveyStore.open(tmp_path / "hard.zarr").attrs["provenance"]
    assert note["column"] == "P_OU_VIS" and note["top"] == 4


def test_top_refuses_a_table_of_another_store_or_a_missing_column(tmp_path, rng):
    _, everything = _store(tmp_path / "pool.zarr", rng, [12])
    ids = everything.object_id.copy()
    ids[7] += 1
    table = _table(tmp_path / "other.parquet", None, np.arange(12), ids, np.ones(12))
    with pytest.raises(ValueError, match="row 7 is object 8 in the table and 7 in the store"):
        top_cutouts(tmp_path / "pool.zarr", table, "P_OU_VIS", 3, tmp_path / "hard.zarr")
    good = _table(tmp_path / "good.parquet", None, np.arange(12), everything.object_id, np.ones(12))
    with pytest.raises(ValueError, match=r"no column 'P_OU_66' \(score columns: P_OU_VIS\)"):
        top_cutouts(tmp_path / "pool.zarr", good, "P_OU_66", 3, tmp_path / "hard.zarr")
    rows_out = _table(tmp_path / "rows.parquet", None, np.arange(12) + 1, everything.object_id, np.ones(12))
    with pytest.raises(ValueError, match="outside its 12 cutouts"):
        top_cutouts(tmp_path / "pool.zarr", rows_out, "P_OU_VIS", 3, tmp_path / "hard.zarr")
    assert not (tmp_path / "hard.zarr").exists()


def test_cli_top_then_concat_builds_a_training_store(tmp_path, rng, cli_root):
    _, pool = _store(tmp_path / "pool.zarr", rng, [24])
    _, train = _store(tmp_path / "train.zarr", rng, [10], start=500)
    scores = np.arange(24, dtype=np.float32)
    table = _table(tmp_path / "pool_scores.parquet", ["t0"] * 24, np.arange(24), pool.object_id, scores)
    runner = CliRunner()
    got = runner.invoke(cli_root, ["store", "top", str(tmp_path / "pool.zarr"), "--scores", str(table),
                                   "--by", "P_OU_VIS", "-n", "5", "--out", str(tmp_path / "hard.zarr"), "--json"])
    assert got.exit_code == 0, got.output
    assert json.loads(got.output)["n_written"] == 5
    got = runner.invoke(cli_root, ["store", "concat", "--out", str(tmp_path / "mix.zarr"),
                                   f"{tmp_path / 'train.zarr'}:6", str(tmp_path / "hard.zarr")])
    assert got.exit_code == 0, got.output
    assert "wrote 11 cutouts from 2 store(s)" in got.output
    mixed = _everything(tmp_path / "mix.zarr")
    np.testing.assert_array_equal(mixed.object_id, np.r_[500:506, 19:24])
    got = runner.invoke(cli_root, ["store", "top", str(tmp_path / "pool.zarr"), "--scores", str(table),
                                   "--by", "P_NOPE", "-n", "5", "--out", str(tmp_path / "x.zarr")])
    assert got.exit_code == 2 and "no column 'P_NOPE'" in got.output


def test_cli_concat_of_a_store_with_a_corrupt_chunk_fails_naming_it(tmp_path, rng, cli_root):
    from lensengine.catalogs._zarr_layout import chunk_file

    _store(tmp_path / "a.zarr", rng, [40])                    # chunks of 16: 0-15, 16-31, 32-39
    shard = chunk_file(tmp_path / "a.zarr", "t0", "vis", 1, 3)
    shard.write_bytes(np.random.default_rng(1).integers(0, 256, shard.stat().st_size, dtype=np.uint8).tobytes())
    runner = CliRunner()
    got = runner.invoke(cli_root, ["store", "concat", "--out", str(tmp_path / "out.zarr"), str(tmp_path / "a.zarr")])
    assert got.exit_code == 1
    assert "tile 't0' chunk 1" in got.output and "nothing was written" in got.output
    assert not (tmp_path / "out.zarr").exists() and not list(tmp_path.glob(".out.zarr*"))
    # the cutouts before the bad chunk can still be taken
    got = runner.invoke(cli_root, ["store", "concat", "--out", str(tmp_path / "out.zarr"), f"{tmp_path / 'a.zarr'}:16"])
    assert got.exit_code == 0, got.output
    assert SurveyStore.open(tmp_path / "out.zarr").total_cutouts() == 16
