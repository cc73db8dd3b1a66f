"""The seven networks: exact architectures, published weights, batch-safe forward."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from lensengine.engine.specs import MODEL_NAMES, MODEL_SPECS  # noqa: E402
from lensengine.training.export import load_published  # noqa: E402
from lensengine.training.networks import LensCNN, build_model, count_parameters, p_lens  # noqa: E402

# SPEC §3 / paper Tables 3-4
EXPECTED_PARAMS = {"OU-J": 201_842, "OU-Y": 201_842, "OU-H": 201_842, "OU-JYH": 202_742,
                   "OU-66": 203_192, "OU-VIS": 327_882, "OU-200": 331_632}


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_parameter_counts(name):
    assert count_parameters(build_model(name)) == EXPECTED_PARAMS[name] == MODEL_SPECS[name].n_params


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_published_weights_load_strictly(name, published_weights_dir):
    net = load_published(published_weights_dir, name)
    assert count_parameters(net) == EXPECTED_PARAMS[name]
    raw = torch.load(published_weights_dir / f"{MODEL_SPECS[name].file_stem}_Weights.pt",
                     map_location="cpu", weights_only=True)
    # the weights really are the published ones (not a fresh init that happens to fit)
    ours = net.state_dict()
    for key, value in raw.items():
        assert torch.equal(ours[key.replace("VIS_layer.", "layer.")], value)


def test_sequential_indices_match_spec():
    net = build_model("OU-66")
    convs = [i for i, m in enumerate(net.layer) if isinstance(m, torch.nn.Conv2d)]
    pools = [i for i, m in enumerate(net.layer) if isinstance(m, torch.nn.MaxPool2d)]
    assert convs == [0, 4, 7, 10, 13, 17, 20, 23, 26] and pools == [2, 15, 28]
    net = build_model("OU-200")
    convs = [i for i, m in enumerate(net.layer) if isinstance(m, torch.nn.Conv2d)]
    pools = [i for i, m in enumerate(net.layer) if isinstance(m, torch.nn.MaxPool2d)]
    assert convs == [0, 4, 8, 12, 16, 19] and pools == [2, 6, 10, 14]


@pytest.mark.parametrize("name", ["OU-66", "OU-200"])
def test_forward_is_batch_safe(name):
    torch.manual_seed(0)
    spec = MODEL_SPECS[name]
    net = build_model(name).eval()
    x = torch.rand(5, spec.channels, spec.stamp, spec.stamp)
    with torch.no_grad():
        batch = p_lens(net(x))
        single = torch.cat([p_lens(net(x[i : i + 1])) for i in range(5)])
    assert batch.shape == (5,)
    # softmax over classes, not over the batch (the published OU-200 bug)
    torch.testing.assert_close(batch, single, rtol=1e-5, atol=1e-6)
    assert not np.isclose(float(batch.sum()), 1.0)


def test_init_is_he_normal_with_zero_biases():
    torch.manual_seed(1)
    net = LensCNN("OU-66", 4)
    first = net.layer[0]
    assert torch.count_nonzero(first.bias) == 0
    fan_in = 4 * 3 * 3
    std = float(first.weight.detach().std())
    assert abs(std - np.sqrt(2.0 / fan_in)) / np.sqrt(2.0 / fan_in) < 0.15


def test_unknown_family_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown architecture family"):
        LensCNN("OU-99", 1)
