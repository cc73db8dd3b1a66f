"""benchmarks/bench_ceiling.py runs the real engine with networks that cost nothing, and keeps each model's contract."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lensengine.engine.models import discover_models
from tests.conftest import BENCHMARKS, load_script
from tests.engine.conftest import make_store


def test_the_ceiling_runs_the_engine_with_free_networks(tmp_path, tiny_models):
    pytest.importorskip("onnx")
    bench = load_script(BENCHMARKS / "bench_ceiling.py", "_bench_ceiling")
    store = tmp_path / "survey.zarr"
    make_store(store)  # two tiles of 48
    out = tmp_path / "ceiling.json"
    assert bench.main(["--tiles", str(store), "--models", str(tiny_models), "--workers", "1", "--batches", "8",
                       "--workdir", str(tmp_path / "work"), "--json", str(out)]) == 0
    run = json.loads(out.read_text())["runs"][0]
    assert (run["workers"], run["batch"], run["cutouts"]) == (1, 8, 96)
    assert run["cutouts_per_s"] > 0 and run["cpu_ms_per_cutout"] > 0 and 0 < run["busy_share"] <= 1

    free = discover_models(tmp_path / "work" / "free_models")
    assert [(e.name, e.bands, e.stamp) for e in free] == [(e.name, e.bands, e.stamp)
                                                          for e in discover_models(tiny_models)]
    # each free network scores a cutout by the mean of its prepared (min-max scaled) pixels: inside (0, 1), and
    # not one value for all, so the run really fed every cutout through
    import pyarrow.dataset as ds

    table = ds.dataset(tmp_path / "work" / "run0" / "w1_b8_scores").to_table().to_pandas()
    assert len(table) == 96
    good = table["FLAGS"].to_numpy() == 0  # the test store holds a few bad cutouts on purpose (flagged)
    p = table["P_OU_J"].to_numpy()
    assert good.sum() > 80
    assert np.all((p[good] > 0) & (p[good] < 1)) and np.unique(p[good]).size == good.sum()
