"""Preprocessing: equality with scikit-image's resize, min-max scaling, bad-input flags."""

from __future__ import annotations

import numpy as np
import pytest

from lensengine.catalogs.flags import Flag
from lensengine.engine.preprocess import Preprocessor, inspect_bands, minmax_batch, resize_batch, resize_matrix
from lensengine.engine.specs import MODEL_SPECS

skimage_transform = pytest.importorskip("skimage.transform")


def _astro(rng, n, size):
    """Sersic-like blobs with an arc on sky noise, with a huge dynamic range."""
    y, x = np.mgrid[:size, :size] / size
    out = []
    for _ in range(n):
        cx, cy = rng.uniform(0.3, 0.7, 2)
        r = np.hypot(x - cx, y - cy)
        img = 500 * np.exp(-((r / 0.05) ** 0.25)) * rng.uniform(0.5, 2)
        img += 30 * np.exp(-(((r - 0.2) / 0.01) ** 2)) * (np.arctan2(y - cy, x - cx) > 0)
        img += rng.normal(0, 1, (size, size))
        out.append(img)
    return np.asarray(out, dtype=np.float32)


@pytest.mark.parametrize("n_in,n_out", [(200, 66), (66, 200)])
def test_shipped_matrices_equal_skimage(n_in, n_out):
    expected = skimage_transform.resize(np.eye(n_in), (n_out, n_in))
    np.testing.assert_allclose(resize_matrix(n_in, n_out), expected, atol=1e-12)


@pytest.mark.parametrize("n_in,n_out", [(200, 66), (66, 200)])
@pytest.mark.parametrize("kind", ["random", "astro"])
def test_resize_equals_skimage_resize(rng, n_in, n_out, kind):
    images = rng.normal(size=(4, n_in, n_in)).astype(np.float32) if kind == "random" else _astro(rng, 4, n_in)
    ours = resize_batch(images, n_out)
    for img, got in zip(images, ours):
        ref = skimage_transform.resize(img.astype(np.float64), (n_out, n_out))
        # compare on the normalised scale the networks see
        scale = ref.max() - ref.min()
        np.testing.assert_allclose(got, ref, atol=2e-5 * scale)


def test_full_pipeline_equals_skimage_then_minmax(rng):
    vis = _astro(rng, 3, 200)
    nisp = {b: _astro(rng, 3, 66) for b in "YJH"}
    batch = Preprocessor([MODEL_SPECS["OU-66"], MODEL_SPECS["OU-200"]])({"VIS": vis, **nisp})

    def ref(img, size):
        r = skimage_transform.resize(img.astype(np.float64), (size, size))
        return (r - r.min()) / (r.max() - r.min())

    for i in range(3):
        want66 = np.stack([ref(nisp["J"][i], 66), ref(nisp["Y"][i], 66), ref(nisp["H"][i], 66), ref(vis[i], 66)])
        np.testing.assert_allclose(batch.inputs["OU-66"][i], want66, atol=1e-5)
        want200 = np.stack([ref(nisp["J"][i], 200), ref(nisp["Y"][i], 200), ref(nisp["H"][i], 200), ref(vis[i], 200)])
        np.testing.assert_allclose(batch.inputs["OU-200"][i], want200, atol=1e-5)
    assert batch.inputs["OU-66"].dtype == np.float32
    assert batch.flags.tolist() == [0, 0, 0]


def test_minmax_range_and_constant():
    x = np.stack([np.arange(16.0).reshape(4, 4), np.full((4, 4), 3.0)])
    scaled, constant = minmax_batch(x)
    assert scaled[0].min() == 0 and scaled[0].max() == 1
    assert constant.tolist() == [False, True]
    assert np.all(scaled[1] == 0) and np.isfinite(scaled).all()


def test_minmax_overwrite_scales_in_place_to_the_same_bits(rng):
    x = rng.gamma(2.0, 3.0, (6, 20, 20)).astype(np.float32)
    x[1] = 5.0  # constant
    x[2, 0, 0], x[2, 1, 1] = 3e38, -3e38  # a span that overflows float32: redone in float64
    x[3, 4, 4] = np.nan
    copy = x.copy()
    expected, expected_constant = minmax_batch(copy.copy())
    scaled, constant = minmax_batch(x, overwrite=True)
    assert scaled is x  # no second array
    assert np.array_equal(scaled.view(np.uint32), expected.view(np.uint32))
    assert np.array_equal(constant, expected_constant)
    stacked = np.stack([copy, copy + 1], axis=1)  # one band of a stacked input: not contiguous, scaled in place
    view = stacked[:, 1]
    expected_view, _ = minmax_batch(view.copy())
    scaled_view, _ = minmax_batch(view, overwrite=True)
    assert scaled_view is view and np.shares_memory(scaled_view, stacked)
    assert np.array_equal(stacked[:, 1].view(np.uint32), expected_view.view(np.uint32))
    assert np.array_equal(stacked[:, 0], copy, equal_nan=True)  # the other band untouched
    readonly = copy.copy()
    readonly.flags.writeable = False
    assert minmax_batch(readonly, overwrite=True)[0] is not readonly  # read-only: a new array


def test_bad_input_is_flagged_per_cutout_and_band(rng):
    n = 6
    bands = {"VIS": rng.normal(size=(n, 200, 200)).astype(np.float32),
             "Y": rng.normal(size=(n, 66, 66)).astype(np.float32),
             "J": rng.normal(size=(n, 66, 66)).astype(np.float32),
             "H": rng.normal(size=(n, 66, 66)).astype(np.float32)}
    bands["VIS"][1, 10, 10] = np.nan
    bands["J"][2] = 7.0
    bands["H"][3, 0, 0] = np.inf
    batch = Preprocessor(list(MODEL_SPECS.values()))(bands)
    assert batch.flags[0] == 0
    assert batch.flags[1] == Flag.NONFINITE
    assert batch.flags[2] == Flag.CONSTANT_BAND
    assert batch.flags[3] == Flag.NONFINITE
    # a model that does not read the bad band still scores the cutout
    assert batch.usable["OU-J"].tolist() == [True, True, False, True, True, True]
    assert batch.usable["OU-VIS"].tolist() == [True, False, True, True, True, True]
    assert batch.usable["OU-200"].tolist() == [True, False, False, False, True, True]
    for x in batch.inputs.values():
        assert np.isfinite(x).all()


def test_missing_band_and_wrong_shape(rng):
    n = 2
    bands = {"VIS": rng.normal(size=(n, 200, 200)), "Y": rng.normal(size=(n, 66, 66)),
             "J": rng.normal(size=(n, 64, 64)), "H": None}
    clean, flags = inspect_bands(bands, n)
    assert flags["H"].tolist() == [Flag.MISSING_BAND] * 2
    assert flags["J"].tolist() == [Flag.BAD_SHAPE] * 2
    assert flags["VIS"].tolist() == [0, 0]
    assert clean["J"].shape == (n, 66, 66)
    batch = Preprocessor([MODEL_SPECS["OU-VIS"], MODEL_SPECS["OU-JYH"]])(bands)
    assert batch.usable["OU-VIS"].all() and not batch.usable["OU-JYH"].any()


@pytest.mark.parametrize("n_in,n_out", [(200, 66), (66, 200), (50, 20), (20, 50), (7, 130)])
def test_banded_resampling_is_the_dense_product(rng, n_in, n_out):
    """The blocks hold every nonzero weight of the matrix, and the banded products equal the dense ones within
    float32 rounding (they differ only by the zero terms the dense product adds)."""
    from lensengine.engine.preprocess import _resize_blocks, _resize_matrix32

    a = _resize_matrix32(n_in, n_out)
    rebuilt = np.zeros_like(a)
    for rows, cols, part, part_t in _resize_blocks(n_in, n_out):
        assert part.flags.c_contiguous and part_t.flags.c_contiguous
        np.testing.assert_array_equal(part_t, part.T)
        rebuilt[rows, cols] = part
    np.testing.assert_array_equal(rebuilt, a)
    images = rng.normal(size=(3, 2, n_in, n_in)).astype(np.float32)
    dense = np.matmul(np.matmul(a.astype(np.float64), images), a.T.astype(np.float64))
    got = resize_batch(images, n_out)
    assert got.shape == (3, 2, n_out, n_out) and got.dtype == np.float32
    np.testing.assert_allclose(got, dense, rtol=0, atol=8 * np.spacing(np.float32(np.abs(dense).max())))
    padded = np.zeros((3, 2, n_in, n_in + 3), np.float32)
    padded[..., :n_in] = images
    np.testing.assert_array_equal(resize_batch(padded[..., :n_in], n_out), got)  # a strided view: the same
    assert resize_batch(images[:0], n_out).shape == (0, 2, n_out, n_out)
    # an image's result does not depend on its batch (BLAS chooses kernels by size): bit for bit alone
    many = rng.normal(size=(40, n_in, n_in)).astype(np.float32)
    together = resize_batch(many, n_out)
    for i in (0, 17, 39):
        assert resize_batch(many[i:i + 1], n_out).tobytes() == together[i:i + 1].tobytes()


@pytest.mark.parametrize("pooled", [False, True])
def test_a_large_batch_is_prepared_in_slices_to_the_same_bits(rng, monkeypatch, pooled):
    """A batch of more than PREP_SLICE cutouts (a GPU run's sub-batch) is prepared slice by slice into
    whole-batch arrays: every input, usable mask and flag equals the batch prepared at once, bad cutouts in
    the second and last slices included, and a missing band stays missing."""
    from lensengine.engine import preprocess
    from lensengine.engine.buffers import BufferPool

    k = preprocess.PREP_SLICE
    n = 2 * k + 5  # two whole slices and a short one
    bands = {"VIS": _astro(rng, n, 200), "Y": _astro(rng, n, 66), "J": _astro(rng, n, 66), "H": None}
    bands["VIS"][k + 3, 5, 5] = np.nan
    bands["Y"][n - 1] = 3.0
    specs = list(MODEL_SPECS.values())
    sliced = Preprocessor(specs, BufferPool() if pooled else None)(bands)
    monkeypatch.setattr(preprocess, "PREP_SLICE", 10 * n)
    whole = Preprocessor(specs, BufferPool() if pooled else None)(bands)
    assert sliced.inputs.keys() == whole.inputs.keys()
    for name in whole.inputs:
        assert sliced.inputs[name].shape == whole.inputs[name].shape
        assert np.array_equal(sliced.inputs[name], whole.inputs[name]), name
        assert np.array_equal(sliced.usable[name], whole.usable[name]), name
    assert np.array_equal(sliced.flags, whole.flags)
    assert sliced.flags[k + 3] & Flag.NONFINITE and sliced.flags[n - 1] & Flag.CONSTANT_BAND
    assert not sliced.usable["OU-H"].any() and sliced.usable["OU-VIS"].sum() == n - 1


@pytest.mark.parametrize("pooled", [False, True])
def test_planes_made_in_place_in_a_stacked_input_equal_the_stacked_planes(rng, pooled):
    """OU-200's NISP planes and OU-66's VIS plane are resampled and scaled in their place in the stacked input
    (no plane of their own): every input equals the same model's bands prepared one by one and stacked, bit
    for bit, with a constant band, a NaN pixel and a missing band among them."""
    from lensengine.engine.buffers import BufferPool

    n = 9
    bands = {"VIS": _astro(rng, n, 200), "Y": _astro(rng, n, 66), "J": _astro(rng, n, 66), "H": _astro(rng, n, 66)}
    bands["J"][2] = 4.0
    bands["VIS"][5, 3, 3] = np.nan
    specs = list(MODEL_SPECS.values())
    prep = Preprocessor(specs, BufferPool() if pooled else None)
    assert prep.homes == {("VIS", 66): ("OU-66", 3), ("J", 200): ("OU-200", 0), ("Y", 200): ("OU-200", 1),
                          ("H", 200): ("OU-200", 2)}
    for case in (bands, {**bands, "H": None}):
        shared = prep(case)
        clean, _ = inspect_bands(case, n)
        for spec in specs:
            planes = [minmax_batch(resize_batch(clean[b], spec.stamp).copy())[0] for b in spec.bands]
            expected = np.stack(planes, axis=1)
            got = shared.inputs[spec.name]
            assert got.shape == expected.shape and got.tobytes() == expected.tobytes(), spec.name
