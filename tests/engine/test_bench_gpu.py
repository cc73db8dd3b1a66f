"""benchmarks/bench_gpu.py runs its whole path on the CPU with --dry-run, so GPU time is never spent on a crash."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import BENCHMARKS, load_script

SCRIPT = BENCHMARKS / "bench_gpu.py"


def _bench():
    return load_script(SCRIPT, "_bench_gpu")


def test_dry_run_measures_every_section_and_writes_json(tmp_path, tiny_models):
    pytest.importorskip("torch")
    out = tmp_path / "gpu.json"
    args = ["--dry-run", "--models", str(tiny_models), "--model", "OU-J", "-n", "24",
            "--chunk", "8", "--batches", "2,4", "--per-point", "0", "--json", str(out)]
    assert _bench().main(args) == 0
    report = json.loads(out.read_text())
    assert report["machine"]["dry_run"] is True and report["settings"]["batches"] == [2, 4]
    assert report["store"]["generated"] and report["read"]["complete"] and report["read"]["cutouts"] == 24
    assert report["read"]["gb_per_s"] > 0
    ort = report["ort"]["cpu-standing-in-for-cuda"]
    for name in ("OU-J",):  # one 66-px model: bf16 is emulated on most CPUs, a 200-px one takes long
        assert ort[name]["provider_used"] == "CPUExecutionProvider"
        assert set(ort[name]["sweep"]) == {"2", "4"} and ort[name]["best_img_s"] > 0
        assert ort[name]["max_delta_p"] == 0.0  # the same provider as the reference: exactly equal
        torch_run = report["torch_bf16"]["eager"][name]
        assert torch_run["best_img_s"] > 0 and torch_run["max_delta_p"] < 0.05
    if "padded" not in report:  # made where the onnx package is (the training extra): its own file, same P
        padded = report["ort"]["cpu-standing-in-for-cuda-pad8"]["OU-J"]
        assert padded["file"].endswith("OU_J.onnx") and padded["file"] != ort["OU-J"]["file"]
        assert padded["max_delta_p"] < 1e-5 and padded["best_img_s"] > 0
    best = report["best_variant"]
    assert best["models"]["OU-J"]["variant"] in ("cpu-standing-in-for-cuda", "cpu-standing-in-for-cuda-pad8")
    assert best["ensemble_model_only_cutouts_per_s"] == pytest.approx(best["models"]["OU-J"]["img_s"])
    e2e = report["end_to_end"]["1"]
    assert e2e["cutouts"] == 24 and e2e["cutouts_per_s"] > 0 and 0 < e2e["of_model_only_bound"]
    assert report["ensemble_model_only_cutouts_per_s"] > 0 and report["goal_cutouts_per_s"] == 20_000
    assert report["ensemble_chain"]["cutouts_per_s"] > 0 and report["ensemble_chain"]["call_sizes"] == {"OU-J": 16}
    from lensengine.engine.run_cli import GPU_BATCH_SIZE

    ceiling = report["ceiling"]["1"]  # the engine alone, networks that cost nothing, at a GPU run's sub-batch
    assert (ceiling["cutouts"], ceiling["batch"]) == (24, GPU_BATCH_SIZE) and ceiling["cpu_ms_per_cutout"] > 0


def test_an_exhausted_time_box_records_what_it_skipped(tmp_path, tiny_models):
    out = tmp_path / "gpu.json"
    args = ["--dry-run", "--models", str(tiny_models), "--model", "OU-J", "-n", "8", "--chunk", "8",
            "--batches", "2", "--time-box", "0.001", "--json", str(out)]
    assert _bench().main(args) == 0
    report = json.loads(out.read_text())
    assert report["ort"]["cpu-standing-in-for-cuda"]["OU-J"] == {"skipped": "time box"}
    assert report["end_to_end"]["1"] == {"skipped": "time box"}


def test_the_best_variant_is_the_fastest_within_the_bound_per_model():
    ort = {"cuda": {"A": {"best_img_s": 100.0, "best_batch": 64, "max_delta_p": 0.0},
                    "B": {"best_img_s": 50.0, "best_batch": 64, "max_delta_p": 0.0}},
           "cuda-fast-wrong": {"A": {"best_img_s": 400.0, "best_batch": 64, "max_delta_p": 0.02},
                               "B": {"best_img_s": 200.0, "best_batch": 256, "max_delta_p": 0.001}},
           "tensorrt": {"A": {"error": "no engine"}, "B": {"skipped": "time box"}}}
    best = _bench().best_variants(ort)
    assert best["models"]["A"] == {"variant": "cuda", "img_s": 100.0, "batch": 64}  # 400 img/s is 0.02 off
    assert best["models"]["B"] == {"variant": "cuda-fast-wrong", "img_s": 200.0, "batch": 256}
    assert best["ensemble_model_only_cutouts_per_s"] == pytest.approx(1 / (1 / 100 + 1 / 200))
    del ort["cuda"]["A"], ort["cuda-fast-wrong"]["A"]["best_img_s"]  # no variant of A within the bound: no bound
    assert _bench().best_variants(ort)["ensemble_model_only_cutouts_per_s"] == 0.0


def test_without_a_gpu_only_the_dry_run_is_offered(tmp_path):
    from lensengine.engine.sessions import gpu_available

    if gpu_available():
        pytest.skip("a GPU is present here: the real benchmark would run")
    with pytest.raises(SystemExit) as exc:
        _bench().main(["--json", str(tmp_path / "x.json")])
    assert exc.value.code == 2 and not (tmp_path / "x.json").exists()


def test_padded_channels_compute_the_same_function_in_aligned_shapes(tmp_path, tiny_models):
    """benchmarks/pad_channels.py: every convolution but the last has a multiple of 8 filters, the copy keeps
    the model's contract (name, bands, stamp) and scores as the original, and a graph whose padded tensor
    would reach an op that mixes channels is refused rather than rewritten wrongly."""
    onnx = pytest.importorskip("onnx")
    from onnx import helper, numpy_helper

    from lensengine.engine.models import discover_models

    pad = load_script(BENCHMARKS / "pad_channels.py", "_pad_channels")
    out = tmp_path / "pad8"
    report = tmp_path / "pad8.json"
    assert pad.main([str(tiny_models), str(out), "--check", "8", "--threads", "1", "--json", str(report)]) == 0
    rows = {r["model"]: r for r in json.loads(report.read_text())["models"]}
    assert set(rows) == {"OU-J", "OU-JYH", "OU-VIS"}
    for name, row in rows.items():
        assert row["convolutions_changed"] > 0 and row["max_delta_p"] < 1e-6, name
    before = {(e.name, e.bands, e.stamp) for e in discover_models(tiny_models)}
    assert {(e.name, e.bands, e.stamp) for e in discover_models(out)} == before
    for path in out.glob("*.onnx"):
        graph = onnx.load(str(path)).graph
        convs = [n for n in graph.node if n.op_type == "Conv"]
        inits = {t.name: t for t in graph.initializer}
        shapes = [tuple(inits[c.input[1]].dims) for c in convs]
        assert all(s[0] % 8 == 0 for s in shapes[:-1]) and all(s[1] % 8 == 0 for s in shapes[1:]), shapes
        assert set(inits) <= {t for n in graph.node for t in n.input}  # the replaced tensors are gone
    with pytest.raises(SystemExit):  # the folder already holds the copies: nothing is overwritten
        pad.main([str(tiny_models), str(out)])

    # a 5-filter convolution feeding a Flatten and a dense layer: padding its filters would change the dense
    # layer's input, so the rewrite refuses it when it is not the last convolution
    w = numpy_helper.from_array(np.ones((5, 1, 3, 3), np.float32), "w")
    b = numpy_helper.from_array(np.zeros(5, np.float32), "b")
    w2 = numpy_helper.from_array(np.ones((5, 5, 1, 1), np.float32), "w2")
    b2 = numpy_helper.from_array(np.zeros(5, np.float32), "b2")
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"]), helper.make_node("Flatten", ["c"], ["f"]),
             helper.make_node("Conv", ["x5", "w2", "b2"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 1, 4, 4]),
                                           helper.make_tensor_value_info("x5", onnx.TensorProto.FLOAT, [1, 5, 2, 2])],
                              [helper.make_tensor_value_info("f", onnx.TensorProto.FLOAT, None),
                               helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], [w, b, w2, b2])
    with pytest.raises(ValueError, match="Flatten node .* takes a padded tensor"):
        pad.pad_conv_channels(helper.make_model(graph), 8)
