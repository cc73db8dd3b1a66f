"""benchmarks/bench_runners.py: the fixed set read from stores (with its hard non-lenses), candidate int8 recipes
measured beside the runners in the same run, and a summary that keeps reduced precision apart from fp32."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import BENCHMARKS, load_script

SCRIPT = BENCHMARKS / "bench_runners.py"


@pytest.fixture(autouse=True)
def _own_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("LENSENGINE_CACHE", str(tmp_path_factory.getbasetemp() / "lensengine-cache"))


def _bench():
    return load_script(SCRIPT, "_bench_runners")


def test_hard_rows_are_the_ones_fp32_scores_highest(tmp_path):
    from lensengine.engine.registry import resolve_models
    from tests.engine.conftest import make_store

    bench = _bench()
    store = tmp_path / "s.zarr"
    make_store(store, tiles=("T0", "T1"), n_per_tile=12, chunk_size=12, bad=False)
    entries = resolve_models(None, ["OU-J"])
    whole, _ = bench.store_bands(f"{store}:0:24", entries, 1)
    scores = bench._fp32_scores(whole, 24, entries, 1)
    hard, what = bench.store_bands(f"{store}:0:24:hard=4", entries, 1)
    assert len(hard["J"]) == 6 and "the 4 scored highest" in what  # 4 hardest and 2 others
    kept = [int(np.flatnonzero((whole["J"] == row).all(axis=(1, 2)))[0]) for row in hard["J"]]
    assert set(np.argsort(-scores)[:4]) <= set(kept)  # the four highest-scoring rows, from both tiles
    with pytest.raises(SystemExit, match="outside the store"):
        bench.store_bands(f"{store}:0:99", entries, 1)


def test_a_recipe_is_measured_beside_the_reference_and_the_summary_keeps_fp32_apart(tmp_path):
    pytest.importorskip("onnx", reason="quantizing needs onnx (the training extra)")
    from tests.engine.conftest import make_store

    store = tmp_path / "s.zarr"
    make_store(store, tiles=("T0",), n_per_tile=24, chunk_size=24, bad=False)
    out = tmp_path / "r.json"
    assert _bench().main(["--model", "OU-J", "--runners", "ort-fp32", "--cutouts", f"{store}:0:12",
                          "--calibration", f"{store}:12:24", "--calib-n", "8", "--recipes", "minmax-rr",
                          "--repeats", "1", "--min-seconds", "0", "--threads", "1", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    runners = report["results"][0]["runners"]
    q = runners["int8:minmax-rr@ort"]
    assert q["img_s"] > 0 and q["quantizers"] > 0 and q["max_delta_p"] > 0  # really quantized: not fp32 exactly
    assert runners["int8:minmax-rr@ov"]["img_s"] > 0 or "openvino" in runners["int8:minmax-rr@ov"]["error"]
    assert report["results"][0]["inputs"]["parts"] == [f"{store}[0:12]"]
    summary = report["summary"]
    reduced = summary["best_eligible_reduced_precision"]["models"]["OU-J"]
    assert reduced["runner"] == "ort-fp32" or reduced["max_delta_p"] <= 0.01  # never one beyond the bound
    assert summary["fastest_regardless_of_delta_p"]["models"]["OU-J"]["runner"] != "ort-fp32"


def test_summary_family_rate_adds_time_per_cutout():
    bench = _bench()
    results = [{"model": m, "runners": {"ort-fp32": {"img_s": 100.0, "max_delta_p": 0.0},
                                        "openvino-fp32": {"img_s": 150.0, "max_delta_p": 1e-7},
                                        "int8:x@ov": {"img_s": rate, "max_delta_p": dp},
                                        # NNCF's accuracy control gave every layer back: not reduced precision
                                        "int8:all-back@ov": {"img_s": 140.0, "max_delta_p": 0.0, "quantizers": 0}}}
               for m, rate, dp in (("OU-J", 400.0, 0.005), ("OU-66", 400.0, 0.05))]
    s = bench.summarise(results)
    assert s["best_eligible_reduced_precision"]["models"] == {
        "OU-J": {"runner": "int8:x@ov", "speedup": 4.0, "max_delta_p": 0.005},
        "OU-66": {"runner": "ort-fp32", "speedup": 1.0, "max_delta_p": 0.0}}
    # OU-J at 1/400 s and OU-66 at 1/100 s per cutout: 80 cutouts/s for the pair against 50 in fp32
    fam = s["best_eligible_reduced_precision"]["family_66px"]
    assert fam["ort_fp32_img_s"] == pytest.approx(50.0) and fam["speedup"] == pytest.approx(1.6)
    assert s["best_eligible"]["models"]["OU-66"]["runner"] == "openvino-fp32"
    assert s["fastest_regardless_of_delta_p"]["family_66px"]["speedup"] == pytest.approx(4.0)
