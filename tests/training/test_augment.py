"""Training augmentation is exact: a transformed cutout scores like the same transform applied in training.

The dihedral transforms are applied to the network input, the raw-band jitter
(noise, blur, sky gradient) before the Preprocessor; these tests show that the
first equals preprocessing the transformed cutout (SPEC §4 commutes with the
eight symmetries of the square) and that every jitter does what it claims.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from lensengine.engine.preprocess import Preprocessor, resize_matrix  # noqa: E402
from lensengine.engine.specs import NATIVE_STAMP, get_spec  # noqa: E402
from lensengine.training.data import (AugmentDraw, Augmenter, BatchLoader, CutoutSet, border_rms,  # noqa: E402
                                      dihedral)

CODES = [(rot, flip) for flip in (False, True) for rot in range(4)]


def raw_bands(n: int, seed: int) -> dict[str, np.ndarray]:
    """Asymmetric scenes: an off-centre elliptical blob, a companion and an arc, plus noise (sigma 0.03)."""
    rng = np.random.default_rng(seed)
    out = {}
    for band, size in NATIVE_STAMP.items():
        c = (np.arange(size) - (size - 1) / 2) / size * 20.0
        yy, xx = np.meshgrid(c, c, indexing="ij")
        imgs = np.empty((n, size, size), np.float32)
        for i in range(n):
            dy, dx = rng.uniform(-2, 2, 2)
            main = np.exp(-0.5 * (((yy - dy) / 0.8) ** 2 + ((xx - dx) / 0.4) ** 2))
            comp = 0.5 * np.exp(-0.5 * ((yy - 5) ** 2 + (xx + 3) ** 2) / 0.3)
            arc = 0.4 * np.exp(-0.5 * ((np.hypot(yy - dy, xx - dx) - 1.5) / 0.15) ** 2) * (xx > dx)
            imgs[i] = main + comp + arc + rng.normal(0, 0.03, (size, size))
        out[band] = imgs
    return out


def test_the_eight_transforms_are_distinct_and_resampling_is_centrosymmetric():
    x = np.arange(16.0).reshape(4, 4)
    images = {dihedral(x, r, f).tobytes() for r, f in CODES}
    assert len(images) == 8
    # resize = A @ X @ A.T commutes with flips and transposes iff J A J = A (J reverses the order)
    for n_in, n_out in ((200, 66), (66, 200)):
        a = resize_matrix(n_in, n_out)
        np.testing.assert_allclose(a[::-1, ::-1], a, rtol=0, atol=1e-13)


@pytest.mark.parametrize("model", ["OU-66", "OU-200"])
def test_dihedral_commutes_with_preprocessing(model):
    spec = get_spec(model)
    prep = Preprocessor([spec])
    raw = raw_bands(3, seed=1)
    base = prep(raw).inputs[model]
    for rot, flip in CODES:
        turned = prep({b: dihedral(a, rot, flip) for b, a in raw.items()}).inputs[model]
        np.testing.assert_allclose(turned, dihedral(base, rot, flip), rtol=0, atol=2e-6)
        if (rot, flip) != (0, False):
            assert np.abs(turned - base).max() > 0.1  # the scenes really are asymmetric


def _net(spec):
    from lensengine.training.networks import PLensModel, build_model

    torch.manual_seed(3)
    return PLensModel(build_model(spec).eval())


def _p_lens(net, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return net(torch.from_numpy(np.ascontiguousarray(x))).numpy()


@pytest.mark.parametrize("cache", ["prepared", "raw"])
def test_training_flips_score_like_transformed_cutouts(cache):
    spec = get_spec("OU-JYH")
    raw = {b: a for b, a in raw_bands(12, seed=2).items() if b in spec.bands}
    labels = np.arange(12) % 2
    prep = Preprocessor([spec])
    data = (CutoutSet(spec, labels, inputs=prep(raw).inputs[spec.name]) if cache == "prepared"
            else CutoutSet(spec, labels, raw=raw))
    aug = Augmenter("flips", spec.bands)
    index = np.array([7, 0, 3, 11, 5, 2, 9, 1])
    x, y = data.batch(index, aug, np.random.default_rng(42))
    draw = aug.draw(len(index), np.random.default_rng(42))
    assert len({(int(r), bool(f)) for r, f in zip(draw.rot, draw.flip)}) > 2  # per cutout, not per batch
    engine = np.concatenate([prep({b: dihedral(raw[b][i:i + 1], r, f) for b in spec.bands}).inputs[spec.name]
                             for i, r, f in zip(index, draw.rot, draw.flip)])
    np.testing.assert_array_equal(y, labels[index])
    np.testing.assert_allclose(x, engine, rtol=0, atol=2e-6)
    net = _net(spec)
    np.testing.assert_allclose(_p_lens(net, x), _p_lens(net, engine), rtol=0, atol=1e-5)


def test_full_augmentation_is_jitter_then_engine_preprocessing_and_seeded():
    spec = get_spec("OU-66")
    raw = raw_bands(8, seed=3)
    data = CutoutSet(spec, np.arange(8) % 2, raw=raw)
    aug = Augmenter("full", spec.bands)
    index = np.arange(8)
    x, _ = data.batch(index, aug, np.random.default_rng(9))
    draw = aug.draw(8, np.random.default_rng(9))
    jittered = aug.jitter_raw({b: raw[b][index] for b in spec.bands}, draw)
    prep = Preprocessor([spec])
    engine = np.concatenate([prep({b: dihedral(jittered[b][i:i + 1], draw.rot[i], draw.flip[i])
                                   for b in spec.bands}).inputs[spec.name] for i in range(8)])
    np.testing.assert_allclose(x, engine, rtol=0, atol=2e-6)
    net = _net(spec)
    np.testing.assert_allclose(_p_lens(net, x), _p_lens(net, engine), rtol=0, atol=1e-5)
    # deterministic per seed, different across seeds, and really jittered
    np.testing.assert_array_equal(x, data.batch(index, aug, np.random.default_rng(9))[0])
    assert not np.allclose(x, data.batch(index, aug, np.random.default_rng(10))[0])
    flips_only = prep({b: raw[b] for b in spec.bands}).inputs[spec.name]
    flips_only = np.stack([dihedral(flips_only[i], draw.rot[i], draw.flip[i]) for i in range(8)])
    assert np.abs(x - flips_only).max() > 0.01
    with pytest.raises(ValueError, match="raw"):
        CutoutSet(spec, np.zeros(2), inputs=flips_only[:2]).batch(np.arange(2), aug, np.random.default_rng(0))


def _draw(n, bands, noise=0.0, blur=0.0, gradient=(0.0, 0.0), seed=5):
    return AugmentDraw(rot=np.zeros(n, int), flip=np.zeros(n, bool),
                       noise={b: np.full(n, noise, np.float32) for b in bands},
                       blur={b: np.full(n, blur, np.float32) for b in bands},
                       gradient={b: np.tile(np.float32(gradient), (n, 1)) for b in bands}, noise_seed=seed)


def test_noise_is_a_fraction_of_the_border_rms():
    rng = np.random.default_rng(4)
    raw = raw_bands(6, seed=4)
    for band in ("VIS", "J"):
        est = border_rms(raw[band])
        np.testing.assert_allclose(est, 0.03, rtol=0.12)  # the scenes' noise, despite the companion
    aug = Augmenter("full", ("VIS",))
    sky = {"VIS": rng.normal(0, 0.05, (40, 200, 200)).astype(np.float32)}
    out = aug.jitter_raw(sky, _draw(40, ("VIS",), noise=0.75))["VIS"]
    added = out - sky["VIS"]
    # independent noise of 0.75 x the measured rms: total rms 0.05 x sqrt(1 + 0.75^2)
    np.testing.assert_allclose(added.std(axis=(1, 2)), 0.75 * border_rms(sky["VIS"]), rtol=0.02)
    np.testing.assert_allclose(out.std(), 0.05 * np.hypot(1, 0.75), rtol=0.01)


def test_blur_conserves_flux_and_gradient_is_a_plane():
    aug = Augmenter("full", ("J",))
    img = np.zeros((2, 66, 66), np.float32)
    img[:, 30, 36] = 1.0
    img[:, 40:43, 20] = 2.0
    blurred = aug.jitter_raw({"J": img}, _draw(2, ("J",), blur=0.5))["J"]  # rms of a sparse image: 0
    np.testing.assert_allclose(blurred.sum(axis=(1, 2)), img.sum(axis=(1, 2)), rtol=1e-5)
    assert blurred[0, 30, 36] < 0.7 and blurred[0, 30, 37] > 0.02  # spread to the neighbours
    # a Gaussian kernel with mirror padding is symmetric: blur commutes with the transforms
    for r, f in CODES:
        turned = aug.jitter_raw({"J": dihedral(img, r, f)}, _draw(2, ("J",), blur=0.5))["J"]
        np.testing.assert_allclose(turned, dihedral(blurred, r, f), atol=1e-6)
    sky = np.random.default_rng(6).normal(0, 0.1, (2, 66, 66)).astype(np.float32)
    rms = border_rms(sky)
    planed = aug.jitter_raw({"J": sky}, _draw(2, ("J",), gradient=(0.0, 0.5)))["J"] - sky
    u = (np.arange(66) - 32.5) / 65
    np.testing.assert_allclose(planed, 0.5 * rms[:, None, None] * u[None, None, :] * np.ones((1, 66, 1)), atol=1e-6)


def test_batches_do_not_depend_on_prefetch_and_none_is_plain():
    spec = get_spec("OU-J")
    raw = {"J": raw_bands(10, seed=7)["J"]}
    data = CutoutSet(spec, np.arange(10) % 2, raw=raw)
    aug = Augmenter("full", spec.bands)
    order = np.random.default_rng(1).permutation(10)
    runs = [[x for x, _ in BatchLoader(data, order, 4, prefetch=p, augmenter=aug, seed=11)] for p in (1, 3)]
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)
    plain = [x for x, _ in BatchLoader(data, order, 4, augmenter=Augmenter("none", spec.bands), seed=11)]
    np.testing.assert_array_equal(plain[0], data.batch(order[:4])[0])
    with pytest.raises(ValueError, match="augment must be"):
        Augmenter("rotate", spec.bands)
