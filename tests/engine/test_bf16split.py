"""The split first layer of ``openvino-bf16-split`` (engine/bf16split.py), on any CPU: its parts are bf16 numbers
that add up to the fp32 value, and the rewritten network computes what the original does (run here in ONNX
Runtime fp32, so no bf16 hardware is needed; the runner itself is checked against its bound in test_runners)."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="the rewrite needs onnx (the training extra)")

from lensengine.engine.bf16split import (
    bf16_parts,
    split_graph,
    split_input,
    split_model,
    split_problem,
)


@pytest.fixture(scope="module")
def ou_j():
    from lensengine.engine.registry import resolve_models

    return resolve_models(None, ["OU-J"])[0]


def test_the_parts_are_bf16_numbers_that_add_up_to_the_value():
    a = np.random.default_rng(7).normal(0, 3, 10_000).astype(np.float32) * np.float32(10.0) ** np.float32(
        np.random.default_rng(8).integers(-6, 6, 10_000))
    hi, lo = bf16_parts(a)
    assert not (hi.view(np.uint32) & 0xFFFF).any() and not (lo.view(np.uint32) & 0xFFFF).any()
    rel = np.abs((hi.astype(np.float64) + lo) - a) / np.abs(a)
    assert rel.max() <= 2.0 ** -16
    assert np.abs((hi.astype(np.float64) - a) / a).max() > 2.0 ** -10  # hi alone is bf16's 8 bits, not enough
    three = split_input(a.reshape(100, 2, 5, 10))  # the batch form: [hi, lo, hi] on the channel axis
    assert not (three.view(np.uint32) & 0xFFFF).any()
    np.testing.assert_array_equal(three[:, :2], hi.reshape(100, 2, 5, 10))
    np.testing.assert_array_equal(three[:, 4:], three[:, :2])
    rel = np.abs((three[:, :2].astype(np.float64) + three[:, 2:4]) - a.reshape(100, 2, 5, 10)) / np.abs(a.reshape(
        100, 2, 5, 10))
    assert rel.max() <= 2.0 ** -15


def test_the_rewritten_network_computes_what_the_original_does(ou_j, tmp_path):
    import onnxruntime as ort

    rng = np.random.default_rng(3)
    x = rng.gamma(2.0, 0.05, (6, 1, 66, 66)).astype(np.float32)
    proto = onnx.load(str(ou_j.path))
    split_graph(proto)
    path = tmp_path / "split.onnx"
    onnx.save(proto, str(path))
    original = ort.InferenceSession(str(ou_j.path), providers=["CPUExecutionProvider"])
    rewritten = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert rewritten.get_inputs()[0].shape[1] == 3 * original.get_inputs()[0].shape[1]
    p = original.run(None, {"cutout": x})[0]
    q = rewritten.run(None, {"cutout": split_input(x)})[0]
    assert np.abs(p - q).max() < 1e-5
    # the parts matter: hi alone (bf16's rounding of the input) is visibly off
    hi, _ = bf16_parts(x)
    r = rewritten.run(None, {"cutout": np.concatenate([hi, np.zeros_like(hi), hi], axis=1)})[0]
    assert np.abs(p - r).max() > 10 * np.abs(p - q).max()


def test_a_network_whose_input_feeds_more_than_one_convolution_is_refused(tmp_path):
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((2, 1, 3, 3), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["cutout", "w"], ["c"]), helper.make_node("Relu", ["cutout"], ["r"])], "two-users",
        [helper.make_tensor_value_info("cutout", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, None)], [w])
    path = tmp_path / "two.onnx"
    onnx.save(helper.make_model(graph), str(path))
    problem = split_problem(str(path))
    assert problem and "not one convolution" in problem and "Relu" in problem


def test_the_split_copy_is_made_once_and_reused(ou_j, tmp_path):
    first = split_model(ou_j, ou_j.sha256, tmp_path)
    stamp = first.stat().st_mtime_ns
    assert split_model(ou_j, ou_j.sha256, tmp_path) == first and first.stat().st_mtime_ns == stamp
    assert ou_j.sha256[:20] in first.name and not list(tmp_path.glob("*.tmp-*"))
