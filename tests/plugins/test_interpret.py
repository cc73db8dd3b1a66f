"""The interpretability plugin: registration through the hooks, CLI, and every method's output shapes.

Uses randomly initialised networks of both families (no shared data needed) and
tiny budgets (large occlusion squares, a few optimisation steps).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from click.testing import CliRunner  # noqa: E402

from lensengine.plugins import _interpret_methods as M  # noqa: E402
from lensengine.plugins import _interpret_run as R  # noqa: E402
from lensengine.training.networks import build_model  # noqa: E402

FAMILIES = {"OU-66": ("OU-66", 66, 22), "OU-200": ("OU-200", 200, 50)}  # model, stamp, coarse occlusion patch


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family_net(request):
    name, stamp, patch = FAMILIES[request.param]
    torch.manual_seed(0)
    net = build_model(name).eval()
    x = torch.rand(4, stamp, stamp)
    return name, net, x, patch


def _raw_bands(n, seed=0):
    rng = np.random.default_rng(seed)
    return {"VIS": rng.random((n, 200, 200), dtype=np.float32),
            **{b: rng.random((n, 66, 66), dtype=np.float32) for b in ("Y", "J", "H")}}


def test_plugin_registered_through_hooks():
    from lensengine.engine.cli import _register_plugin_commands, cli
    from lensengine.plugins.manager import get_plugin_manager

    pm = get_plugin_manager()
    plugin = pm.get_plugin("lensengine.plugins.interpret")
    assert plugin is not None
    assert "register_commands" in {h.name for h in pm.get_hookcallers(plugin)}
    _register_plugin_commands()
    result = CliRunner().invoke(cli, ["explain", "--help"])
    assert result.exit_code == 0, result.output
    for option in ("--model", "--tiles", "--ids", "--method", "--recipe", "--out"):
        assert option in result.output


def test_explain_bad_usage_exits_2(tmp_path):
    from lensengine.engine.cli import _register_plugin_commands, cli

    _register_plugin_commands()
    result = CliRunner().invoke(cli, ["explain", "--model", "OU-66", "--method", "occlusion", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "--ids" in result.output


def test_occlusion_shape_and_batching_matches_single_calls(family_net):
    name, net, x, patch = family_net
    grid = M.occlusion_map(net, x, patch=patch, stride=patch, batch_size=3)
    n = len(range(0, x.shape[-1] - patch + 1, patch))
    assert grid.shape == (n, n)
    # the batched map equals occluding one square at a time
    with torch.no_grad():
        base = torch.softmax(net(x[None]), 1)[0, 1]
        y = x.clone()
        y[:, patch:2 * patch, 0:patch] = 0
        single = torch.softmax(net(y[None]), 1)[0, 1] - base
    assert grid[1, 0] == pytest.approx(float(single), abs=1e-5)
    full = M.expand_grid(grid, x.shape[-1], patch, patch)
    assert full.shape == x.shape[1:]
    assert net.training is False


def test_default_occlusion_geometry():
    assert M.OCCLUSION_DEFAULTS == {"OU-66": (1, 1), "OU-200": (4, 4)}
    assert M.GRADCAM_LAYER == {"OU-66": 27, "OU-200": 20}
    net = build_model("OU-66")
    assert isinstance(net.layer[27], torch.nn.ReLU) and isinstance(net.layer[26], torch.nn.Conv2d)
    net = build_model("OU-200")
    assert isinstance(net.layer[20], torch.nn.ReLU) and isinstance(net.layer[19], torch.nn.Conv2d)


def test_kernel_activations_and_top_k(family_net):
    name, net, x, _ = family_net
    batch = torch.stack([x, x * 0.5, x.flip(-1)])
    kav = M.kernel_activations(net, batch)
    convs = M.conv_layers(net)
    assert sorted(kav) == sorted(convs)
    for layer, values in kav.items():
        assert values.shape == (3, convs[layer].out_channels)
    # KAV is the mean of the pre-ReLU conv output
    with torch.no_grad():
        first = min(convs)
        assert kav[first][0] == pytest.approx(convs[first](x[None]).mean(dim=(2, 3))[0].numpy(), abs=1e-5)
    top = M.TopKernelImages(k=2)
    top.update(kav, [10, 11, 12])
    top.update({k: v[:1] + 1.0 for k, v in kav.items()}, [99])
    rows = top.rows()
    assert len(rows) == 2 * sum(c.out_channels for c in convs.values())
    assert all(r["object_id"] == 99 and r["rank"] == 1 for r in rows if r["kernel"] == 0 and r["layer"] == first
               and r["rank"] == 1)


def test_generated_images_shapes_and_constraints(family_net):
    name, net, x, _ = family_net
    img, hist = M.class_generated_image(net, 1, steps=2)
    assert img.shape == tuple(x.shape) and len(hist) == 3
    assert img.min() >= 0 and img.max() <= 1
    img, hist = M.class_generated_image(net, 0, recipe="code", steps=2)
    assert img.shape == tuple(x.shape) and img.min() >= 0 and img.max() <= 1
    dream, hist = M.deep_dream(net, x, 1, steps=2)
    assert dream.shape == tuple(x.shape)
    layer = max(M.conv_layers(net))
    gki, hist = M.generated_kernel_image(net, layer, 3, steps=3)
    assert gki.shape == tuple(x.shape) and len(hist) == 3
    assert all(p.requires_grad for p in net.parameters())  # weights unfrozen again afterwards
    assert M.RECIPES["paper"].cgi_steps == 5000 and M.RECIPES["paper"].dream_steps == 1000
    assert M.RECIPES["code"].cgi_steps == 99 and M.RECIPES["code"].cgi_lr == 0.1


def test_guided_gradcam_shapes(family_net):
    name, net, x, _ = family_net
    res = M.guided_gradcam(net, x)
    s = x.shape[-1]
    assert res["gradcam"].shape == (s, s) and res["map"].shape == (s, s)
    assert res["guided"].shape == tuple(x.shape) and res["guided_gradcam"].shape == tuple(x.shape)
    assert 0 <= res["gradcam"].min() and res["gradcam"].max() <= 1 + 1e-6
    assert 0 <= res["map"].min() and res["map"].max() <= 1
    assert M.gradcam_display_mask(res["map"]).dtype == bool
    # the guided-backprop hooks are gone: a plain backward pass works and differs
    inp = x[None].clone().requires_grad_(True)
    net(inp)[0, 1].backward()
    assert inp.grad is not None


def test_explain_cutouts_writes_figures_and_maps(tmp_path, family_net):
    name, net, _, patch = family_net
    opts = R.ExplainOptions(patch=patch, stride=patch, steps=2, kernels=[(0, 1)])
    ids = [57]
    out = R.explain_cutouts(name, net, _raw_bands(len(ids)), R.PER_CUTOUT, tmp_path, object_ids=ids, options=opts)
    assert sorted(out) == ids
    for oid, by_method in out.items():
        assert sorted(by_method) == sorted(R.PER_CUTOUT)
        for method, path in by_method.items():
            assert path.suffix == ".png" and path.stat().st_size > 0
            assert any(path.parent.glob(f"{oid}_{method}.np*"))
    model = R.explain_model(name, net, R.PER_MODEL, tmp_path, options=opts)
    assert len(model["cgi"]) == 1 and len(model["gki"]) == 1
    assert all(p.is_file() for ps in model.values() for p in ps)


def test_explain_cutouts_skips_bad_cutouts(tmp_path):
    net = build_model("OU-66").eval()
    bands = _raw_bands(2)
    bands["J"][1] = np.nan
    out = R.explain_cutouts("OU-66", net, bands, ["kav"], tmp_path, options=R.ExplainOptions())
    assert list(out) == [0]


def test_wrong_network_for_model_name(tmp_path):
    net = build_model("OU-VIS")
    with pytest.raises(ValueError, match="OU-66"):
        R.explain_cutouts("OU-66", net, _raw_bands(1), ["kav"], tmp_path)


def test_explain_command_on_store(tmp_path, published_weights_dir):
    store_mod = pytest.importorskip("lensengine.catalogs.store")
    from lensengine.engine.cli import _register_plugin_commands, cli

    bands = _raw_bands(3, seed=1)
    batch = store_mod.CutoutBatch(object_id=np.array([5, 12, 57]), ra=np.zeros(3), dec=np.zeros(3),
                                  vis=bands["VIS"], nisp=np.stack([bands[b] for b in ("Y", "J", "H")], axis=1),
                                  flags=np.zeros(3, np.uint32))
    path = tmp_path / "s.zarr"
    store = store_mod.SurveyStore.create(path, survey="test", chunk_size=2)
    store.append("t0", batch)
    _register_plugin_commands()
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["explain", "--model", "OU-66", "--weights", str(published_weights_dir),
                                      "--tiles", str(path), "--ids", "57,12", "--method", "gradcam", "--out", str(out),
                                      "--json"])
    assert result.exit_code == 0, result.output
    written = json.loads(result.output)
    assert sorted(written["cutouts"]) == ["12", "57"]
    result = CliRunner().invoke(cli, ["explain", "--model", "OU-66", "--weights", str(published_weights_dir),
                                      "--tiles", str(path), "--method", "kav", "--top-k", "2", "--out", str(out),
                                      "--json"])
    assert result.exit_code == 0, result.output
    written = json.loads(result.output)
    rows = (out / "OU_66" / "kav_top.csv").read_text().splitlines()
    assert rows[0] == "layer,kernel,rank,object_id,kav"
    assert len(rows) == 1 + 2 * (4 * 50 + 4 * 40 + 30)
    assert (out / "OU_66" / "kav_top.png").is_file()
    result = CliRunner().invoke(cli, ["explain", "--model", "OU-66", "--weights", str(published_weights_dir),
                                      "--tiles", str(path), "--ids", "999", "--method", "gradcam", "--out", str(out)])
    assert result.exit_code == 2
