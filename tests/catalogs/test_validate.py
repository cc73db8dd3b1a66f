"""`store validate` and `store info`: problems are found and named; exit codes 0/1/2."""

from __future__ import annotations

import json

import click
import numpy as np
import pytest
from click.testing import CliRunner

from lensengine.catalogs.commands import register_commands
from lensengine.catalogs.flags import Flag
from lensengine.catalogs.store import SurveyStore
from lensengine.catalogs.validate import validate_store


@pytest.fixture
def cli():
    @click.group()
    def root():
        """Test root."""

    register_commands(root)
    return root


def test_valid_store(small_store, cli):
    store, _ = small_store
    assert validate_store(store.path) == []
    result = CliRunner().invoke(cli, ["store", "validate", str(store.path)])
    assert result.exit_code == 0, result.output
    assert "valid" in result.output
    info = CliRunner().invoke(cli, ["store", "info", str(store.path), "--json"])
    assert info.exit_code == 0
    data = json.loads(info.output)
    assert data["total_cutouts"] == 40 and data["tiles"]["t0"]["n_chunks"] == 3
    text = CliRunner().invoke(cli, ["store", "info", str(store.path)])
    assert "t0" in text.output and "40 cutouts" in text.output


def test_corrupt_chunk_and_nan_cutout_are_named(tmp_path, batch_factory, cli):
    store = SurveyStore.create(tmp_path / "bad.zarr", survey="t", chunk_size=16)
    b = batch_factory(40, start=1000, truth=False)
    b.vis[5, 10, 10] = np.nan            # object 1005, chunk 0
    b.nisp[20, 1] = 3.0                  # object 1020, chunk 1: constant J
    b.nisp[33, 2] = np.nan               # object 1033, chunk 2: a band missing for one cutout ...
    b.flags[33] = np.uint32(Flag.MISSING_BAND)  # ... is allowed
    store.append("t0", b)
    shard = store.path / "tiles" / "t0" / "nisp" / "c" / "2" / "0" / "0" / "0"
    assert shard.is_file()
    before = validate_store(store.path)  # the NaN and constant cutouts only; 1033 is flagged MISSING_BAND
    assert [(p.kind, p.object_id) for p in before] == [("nonfinite", 1005), ("constant", 1020)]
    shard.write_bytes(np.random.default_rng(1).bytes(shard.stat().st_size))
    problems = validate_store(store.path)
    by_kind = {p.kind: p for p in problems}
    assert set(by_kind) == {"nonfinite", "constant", "corrupt-chunk"}
    assert (by_kind["nonfinite"].chunk, by_kind["nonfinite"].object_id) == (0, 1005)
    assert (by_kind["constant"].chunk, by_kind["constant"].object_id) == (1, 1020)
    assert "J" in by_kind["constant"].message
    assert by_kind["corrupt-chunk"].chunk == 2 and "nisp" in by_kind["corrupt-chunk"].message
    assert "1032..1039" in by_kind["corrupt-chunk"].message
    result = CliRunner().invoke(cli, ["store", "validate", str(store.path)])
    assert result.exit_code == 1
    assert "tile t0 chunk 0 object 1005: [nonfinite] VIS: 1 NaN/inf pixels" in result.output
    assert "tile t0 chunk 2: [corrupt-chunk]" in result.output


def test_incomplete_write_and_missing_chunk(small_store):
    store, _ = small_store
    group = SurveyStore.open(store.path, "a")._tile("t0")
    group.attrs["pending"] = [40, 60]
    arr = group["vis"].with_config({"write_empty_chunks": True})
    arr.resize((60, 200, 200))
    arr[40:60] = 1.0
    (store.path / "tiles" / "t0" / "ra" / "c" / "0").unlink()
    problems = validate_store(store.path)
    kinds = [p.kind for p in problems]
    assert kinds == ["incomplete-write", "missing-chunk"]
    assert "chunks 2..3" in problems[0].message and "committed length 40" in problems[0].message
    assert problems[1].chunk == 0 and "'ra'" in problems[1].message


def test_bad_usage_exit_2(tmp_path, cli):
    result = CliRunner().invoke(cli, ["store", "validate", str(tmp_path / "nothing.zarr")])
    assert result.exit_code == 2
    assert "not a lensengine survey store" in result.output
    assert CliRunner().invoke(cli, ["store", "info", str(tmp_path)]).exit_code == 2
