"""Sanity checks that the maps mean something, on the published OU-66 and OU-200.

The input is a synthetic lens painted here (the simulator's truth has no
lensed-arc mask): a blue arc around a red elliptical blob on noise, with the
arc's pixels as the truth mask.  Occlusion and Guided Grad-CAM mass must fall
on the arc far more than on a random pixel set of the same size, and a
class-generated image for "lens" must reach P(lens) > 0.99.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from lensengine.engine.preprocess import Preprocessor  # noqa: E402
from lensengine.engine.specs import get_spec  # noqa: E402
from lensengine.plugins import _interpret_methods as M  # noqa: E402

pytestmark = pytest.mark.slow

# (band, size, pixel scale, galaxy amplitude, arc amplitude): a red lens (brightest in H), a blue arc
_BANDS = (("VIS", 200, 0.1, 1.0, 0.3), ("Y", 66, 0.3, 0.6, 0.2), ("J", 66, 0.3, 1.0, 0.12),
          ("H", 66, 0.3, 1.5, 0.1))


def synthetic_lens(seed: int = 0, *, radius: float = 2.0, full: bool = False, arc: bool = True,
                   noise: float = 0.02):
    """Raw bands (1, S, S) of a painted lens and the arc's truth mask per band."""
    rng = np.random.default_rng(seed)
    bands, masks = {}, {}
    for band, size, scale, gal_amp, arc_amp in _BANDS:
        c = (size - 1) / 2
        y, x = (np.mgrid[:size, :size] - c) * scale
        gal = gal_amp * np.exp(-np.hypot(x, y / 0.7) / 0.5)
        r, phi = np.hypot(x, y), np.arctan2(y, x)
        shape = np.exp(-0.5 * ((r - radius) / max(0.25, 0.7 * scale)) ** 2)
        if not full:
            shape = shape * np.clip(np.cos(phi - 0.5), 0, None) ** 2
        img = gal + (arc_amp * shape if arc else 0.0)
        bands[band] = (img + noise * rng.standard_normal((size, size)))[None].astype(np.float32)
        masks[band] = shape > 0.3
    return bands, masks


def _random_like(mask, seed=1):
    out = np.zeros(mask.size, dtype=bool)
    out[np.random.default_rng(seed).choice(mask.size, int(mask.sum()), replace=False)] = True
    return out.reshape(mask.shape)


def _setup(weights_dir, name, **kwargs):
    from lensengine.training.export import load_published

    spec = get_spec(name)
    bands, masks = synthetic_lens(**kwargs)
    x = torch.from_numpy(Preprocessor([spec])(bands).inputs[name][0])
    mask = masks["VIS"] if spec.stamp == 200 else masks["J"]
    return load_published(weights_dir, name), x, mask


def test_ou200_occlusion_and_gradcam_fall_on_the_arc(published_weights_dir):
    net, x, mask = _setup(published_weights_dir, "OU-200")
    p = M.lens_probability(net, x)[0]
    assert p > 0.9
    _, x0, _ = _setup(published_weights_dir, "OU-200", arc=False)
    assert M.lens_probability(net, x0)[0] < 0.5  # the arc is what makes it a lens
    rand = _random_like(mask)
    # coarse squares keep the test fast (the default 4x4 stride-4 map costs 2 500 forward passes);
    # they blur the map over the 2.5-pixel-wide arc: measured 3.5x here, 7x with 8x8 squares
    grid = M.occlusion_map(net, x, patch=12, stride=12)
    lens_evidence = -M.expand_grid(grid, 200, 12, 12)
    on_arc, on_random = M.mass_fraction(lens_evidence, mask), M.mass_fraction(lens_evidence, rand)
    assert on_arc > 2 * on_random, (on_arc, on_random)
    res = M.guided_gradcam(net, x)
    on_arc, on_random = M.mass_fraction(res["map"], mask), M.mass_fraction(res["map"], rand)
    assert on_arc > 5 * on_random, (on_arc, on_random)
    shown = M.gradcam_display_mask(res["map"])
    assert shown[mask].mean() > 3 * shown[rand].mean()


def test_ou66_occlusion_and_gradcam_fall_on_the_ring(published_weights_dir):
    net, x, mask = _setup(published_weights_dir, "OU-66", full=True)
    assert M.lens_probability(net, x)[0] > 0.99
    rand = _random_like(mask)
    # the published OU-66 saturates P(lens) on this input, so the logit shows what occlusion removes
    grid = M.occlusion_map(net, x, patch=3, stride=3, score="logit")
    lens_evidence = -M.expand_grid(grid, 66, 3, 3)
    on_ring, on_random = M.mass_fraction(lens_evidence, mask), M.mass_fraction(lens_evidence, rand)
    assert on_ring > 3 * on_random, (on_ring, on_random)
    res = M.guided_gradcam(net, x)
    on_ring, on_random = M.mass_fraction(res["map"], mask), M.mass_fraction(res["map"], rand)
    assert on_ring > 3 * on_random, (on_ring, on_random)


@pytest.mark.parametrize("name, recipe, steps", [("OU-66", "paper", 80), ("OU-200", "code", 20)])
def test_class_generated_lens_reaches_high_p(published_weights_dir, name, recipe, steps):
    from lensengine.training.export import load_published

    net = load_published(published_weights_dir, name)
    img, history = M.class_generated_image(net, 1, recipe=recipe, steps=steps, stop_at=0.99)
    assert history[-1] > 0.99, history[-5:]
    assert history[0] < 0.9
    assert M.lens_probability(net, img)[0] > 0.99


def test_kernel_image_raises_its_activation(published_weights_dir):
    from lensengine.training.export import load_published

    net = load_published(published_weights_dir, "OU-66")
    img, history = M.generated_kernel_image(net, 4, 25, steps=15)
    assert history[-1] > history[0]
    assert M.kernel_activations(net, img, layers=[4])[4][0, 25] > history[0]
