"""The split first layer of ``openvino-bf16-split`` and ``openvino-bf16-split2`` (engine/bf16split.py), on any CPU:
its parts are bf16 numbers that add up to the fp32 value, the compensated weights are bf16 numbers that keep the
first layer's output closer than rounding each weight does, and the rewritten networks compute what the original
does (run here in ONNX Runtime fp32, so no bf16 hardware is needed; the runners themselves are checked against
their bound in test_runners)."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="the rewrite needs onnx (the training extra)")

from lensengine.engine.runners import calibration_inputs  # noqa: E402

from lensengine.engine.bf16split import (
    bf16_parts,
    compensated_bf16,
    patch_moments,
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


def _first_weights(proto) -> np.ndarray:
    graph = proto.graph
    first = next(node for node in graph.node if node.op_type == "Conv" and node.input[0] == graph.input[0].name)
    return onnx.numpy_helper.to_array(next(t for t in graph.initializer if t.name == first.input[1]))


def test_patch_moments_are_the_mean_outer_product_of_the_patches():
    x = np.random.default_rng(5).normal(size=(2, 2, 6, 7))
    pads, strides = (1, 0, 1, 0), (2, 1)
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (0, 0)))
    patches = [xp[n, :, i:i + 3, j:j + 2].reshape(-1) for n in range(2)
               for i in range(0, xp.shape[2] - 2, 2) for j in range(0, xp.shape[3] - 1)]
    want = np.mean([np.outer(p, p) for p in patches], axis=0)
    np.testing.assert_allclose(patch_moments(x, (3, 2), pads, strides), want, rtol=1e-12)


def test_compensated_weights_are_bf16_numbers_closer_in_output_than_nearest_rounding():
    """OU-66's first layer (four bands, 3x3) on the synthetic calibration cutouts: the output error's mean square
    with compensated rounding is several times below rounding every weight to the nearest bf16 number."""
    from lensengine.engine.registry import resolve_models

    model = resolve_models(None, ["OU-66"])[0]
    w = _first_weights(onnx.load(str(model.path)))
    assert w.shape == (50, 4, 3, 3)
    moments = patch_moments(calibration_inputs(model), w.shape[2:])
    flat = w.reshape(w.shape[0], -1).astype(np.float64)
    q = compensated_bf16(flat, moments)
    assert q.dtype == np.float32 and not (q.view(np.uint32) & 0xFFFF).any()
    nearest = bf16_parts(flat.astype(np.float32))[0]

    def mean_square(approx):
        d = flat - approx
        return float(np.einsum("oi,ij,oj->", d, moments, d))

    assert mean_square(q) < mean_square(nearest) / 3
    assert np.abs(q - flat).max() < 2.0 ** -6 * np.abs(flat).max()  # still each weight's neighbourhood


def test_the_two_part_network_computes_what_the_original_does(tmp_path):
    """OU-JYH rewritten with two input parts and compensated weights, run in fp32: the input split is exact, so
    what is left is the weights' rounding, within the runner's 0.01 on survey-like cutouts (and the two-part input
    is the three-part one without its third part)."""
    import onnxruntime as ort

    from lensengine.engine.preprocess import Preprocessor
    from lensengine.engine.registry import resolve_models
    from lensengine.engine.runners import _synthetic_calibration_bands

    model = resolve_models(None, ["OU-JYH"])[0]
    bands = _synthetic_calibration_bands(48, seed=99)  # other cutouts than the calibration's
    x = Preprocessor([model.as_spec()])({b: bands[b] for b in model.bands}, 48).inputs[model.name]
    proto = onnx.load(str(model.path))
    split_graph(proto, 2, calibration_inputs(model))
    path = tmp_path / "split2.onnx"
    onnx.save(proto, str(path))
    original = ort.InferenceSession(str(model.path), providers=["CPUExecutionProvider"])
    rewritten = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert rewritten.get_inputs()[0].shape[1] == 2 * original.get_inputs()[0].shape[1]
    two = split_input(x, 2)
    np.testing.assert_array_equal(two, split_input(x)[:, :6])
    p = original.run(None, {"cutout": x})[0]
    q = rewritten.run(None, {"cutout": two})[0]
    assert 1e-6 < np.abs(p - q).max() < 0.01
    made = split_model(model, model.sha256, tmp_path, parts=2, calibration=lambda: calibration_inputs(model))
    assert made.name.endswith("-bf16split2-v1.onnx")
    # the cached copy holds the same compensated weights as the rewrite above
    np.testing.assert_array_equal(_first_weights(onnx.load(str(made))), _first_weights(proto))
    with pytest.raises(ValueError, match="calibration"):
        split_graph(onnx.load(str(model.path)), 2)


def test_a_cached_split_copy_answers_whether_the_model_can_be_split(ou_j, tmp_path, monkeypatch):
    """Choosing runners asks each model whether it can be split; once the copy of that very file is in the cache
    the answer is yes without loading the model again (nor onnx, 0.46 s of a run's start-up); before, the
    graph is checked."""
    from lensengine.engine import bf16split, runners

    monkeypatch.setenv("LENSENGINE_CACHE", str(tmp_path))
    monkeypatch.setattr(runners, "_openvino_capabilities", lambda: ("FP32", "BF16"))  # any CPU: only the check
    if runners.runner_problem("openvino-bf16-split2") is not None:
        pytest.skip(runners.runner_problem("openvino-bf16-split2"))  # OpenVINO is not installed
    checked = []
    real = bf16split.split_problem

    def counting(path, parts=3):
        checked.append(parts)
        return real.__wrapped__(path, parts)

    monkeypatch.setattr(bf16split, "split_problem", counting)
    assert runners.runner_problem("openvino-bf16-split2", ou_j) is None and checked == [2]
    made = split_model(ou_j, ou_j.sha256, tmp_path / "runners", 2, lambda: calibration_inputs(ou_j))
    assert made == bf16split.split_path(ou_j.sha256, tmp_path / "runners", 2)
    assert runners.runner_problem("openvino-bf16-split2", ou_j) is None and checked == [2]
    assert runners.runner_problem("openvino-bf16-split", ou_j) is None and checked == [2, 3]  # no 3-part copy yet
