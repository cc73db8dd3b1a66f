"""Hard-negative mining from a real run: `lensengine store top` on the score table `lensengine run` wrote."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .conftest import make_store


def test_store_top_reads_a_run_score_table(tmp_path, tiny_models):
    from lensengine.catalogs.catalog import read_scores
    from lensengine.catalogs.store import CutoutBatch, SurveyStore
    from lensengine.catalogs.subset import top_cutouts
    from lensengine.engine.registry import resolve_models
    from lensengine.engine.run import RunOptions, execute_run

    pool = make_store(tmp_path / "pool.zarr", n_per_tile=24)          # two tiles, bad cutouts in T0
    out = tmp_path / "pool.fits"
    opts = RunOptions(store=tmp_path / "pool.zarr", out=out, scores=tmp_path / "pool_scores.parquet",
                      models=resolve_models(tiny_models), models_dir=Path(tiny_models), threshold=0.0,
                      progress=False, workers=1)
    execute_run(opts)
    table = read_scores(opts.scores)
    p = np.asarray(table["P_OU_VIS"], dtype=np.float64)
    tiles, rows = np.asarray(table["TILE"]).astype(str), np.asarray(table["ROW"])
    assert np.isnan(p).sum() >= 1                                     # the NaN VIS cutout is unscored

    result = top_cutouts(tmp_path / "pool.zarr", opts.scores, "P_OU_VIS", 5, tmp_path / "hard.zarr")

    finite = np.flatnonzero(np.isfinite(p))
    best = finite[np.argsort(-p[finite], kind="stable")[:5]]
    want = sorted((pool.tiles.index(tiles[i]), int(rows[i])) for i in best)
    hard = SurveyStore.open(tmp_path / "hard.zarr")
    got = CutoutBatch.concatenate([hard.read(t, a, b) for t in hard.tiles for a, b in hard.chunk_slices(t)])
    # make_store's object IDs are 1000 * tile index + row
    np.testing.assert_array_equal(got.object_id, [1000 * t + r for t, r in want])
    src = {1000 * t + r: pool.read(pool.tiles[t], r, r + 1) for t, r in want}
    for k, oid in enumerate(got.object_id):
        np.testing.assert_array_equal(got.vis[k], src[int(oid)].vis[0])
    assert result["n_written"] == 5 and result["threshold"] == float(p[best].min())
