"""Preprocessing: the one implementation used by training, inference and import.

SPEC §4: each band is resampled to the model's stamp size with the
scikit-image ``resize`` defaults (bilinear, ``mode="reflect"``, Gaussian
anti-aliasing when downsampling) and then min-max scaled to [0, 1] per cutout
and band.  ``skimage.transform.resize`` is linear and separable, so for a fixed
pair of sizes it equals ``A @ X @ A.T`` with ``A = resize(eye(n), (m, n))``.
The matrices for the two resamplings the networks need (VIS 200 -> 66 and NISP
66 -> 200) are shipped in ``engine/data`` so the engine needs no scikit-image;
a test checks them against scikit-image itself.

Bad input never raises and never yields a NaN score: :func:`inspect_bands`
finds NaN/inf pixels, constant bands, missing bands and wrong shapes per cutout
and band; bad bands are zeroed before resampling and the caller withholds the
scores of models that read them.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import numpy as np

from lensengine.catalogs.flags import Flag
from lensengine.engine.specs import BANDS, NATIVE_STAMP, ModelSpec

__all__ = [
    "resize_matrix",
    "resize_batch",
    "minmax_batch",
    "inspect_bands",
    "Preprocessor",
    "PreparedBatch",
]


@lru_cache(maxsize=None)
def resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """The (n_out, n_in) float64 matrix of ``skimage.transform.resize`` along one axis.

    Shipped for the sizes the networks use; other sizes are computed with
    scikit-image (the ``training`` extra) on first use.
    """
    if n_in == n_out:
        return np.eye(n_in)
    name = f"resize_{n_in}_{n_out}.npy"
    data = resources.files("lensengine.engine").joinpath("data", name)
    if data.is_file():
        with data.open("rb") as fh:
            return np.load(fh)
    try:
        from skimage.transform import resize
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise RuntimeError(
            f"no shipped resampling matrix for {n_in} -> {n_out} pixels and scikit-image is not "
            "installed to compute one (pip install 'lensengine[training]')"
        ) from exc
    return resize(np.eye(n_in), (n_out, n_in))


def resize_batch(images: np.ndarray, size: int) -> np.ndarray:
    """Resample square images (..., n, n) to (..., size, size) exactly like skimage's resize."""
    n = images.shape[-1]
    if images.shape[-2] != n:
        raise ValueError(f"expected square images, got shape {images.shape}")
    if n == size:
        return images.astype(np.float32, copy=False)
    a = resize_matrix(n, size).astype(np.float32)
    x = images.astype(np.float32, copy=False)
    return np.matmul(np.matmul(a, x), a.T)


def minmax_batch(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Min-max scale each image (..., S, S) to [0, 1].

    Returns ``(scaled, constant)`` where ``constant`` marks images with
    max == min (or a non-finite range); those come back as zeros, never NaN.
    """
    lo = images.min(axis=(-2, -1), keepdims=True)
    hi = images.max(axis=(-2, -1), keepdims=True)
    span = hi - lo
    constant = ~(np.isfinite(span) & (span > 0))
    safe = np.where(constant, 1.0, span)
    scaled = (images - lo) / safe
    scaled = np.where(constant, 0.0, scaled).astype(np.float32, copy=False)
    return scaled, constant[..., 0, 0]


def inspect_bands(bands: dict[str, np.ndarray | None], n: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Check raw bands; return ``(clean, band_flags)``.

    ``bands`` maps band name to an array (n, S, S) in its native size, or None
    when the band is absent.  ``clean`` holds float32 copies with bad cutouts
    zeroed (so nothing non-finite reaches a network); ``band_flags`` holds a
    uint32 flag array (n,) per band.
    """
    clean: dict[str, np.ndarray] = {}
    flags: dict[str, np.ndarray] = {}
    for band, native in NATIVE_STAMP.items():
        arr = bands.get(band)
        flag = np.zeros(n, dtype=np.uint32)
        if arr is None:
            flag[:] = np.uint32(Flag.MISSING_BAND)
            clean[band] = np.zeros((n, native, native), dtype=np.float32)
        elif arr.shape != (n, native, native):
            flag[:] = np.uint32(Flag.BAD_SHAPE)
            clean[band] = np.zeros((n, native, native), dtype=np.float32)
        else:
            x = np.asarray(arr, dtype=np.float32)
            finite = np.isfinite(x).all(axis=(-2, -1))
            lo = np.where(finite, x.min(axis=(-2, -1)), 0)
            hi = np.where(finite, x.max(axis=(-2, -1)), 0)
            flag[~finite] |= np.uint32(Flag.NONFINITE)
            flag[finite & (hi <= lo)] |= np.uint32(Flag.CONSTANT_BAND)
            if flag.any():
                x = x.copy()
                x[flag != 0] = 0.0
            clean[band] = x
        flags[band] = flag
    return clean, flags


@dataclass
class PreparedBatch:
    """Network inputs for one batch of cutouts.

    ``inputs`` maps model name to a float32 array (n, C, S, S); ``usable``
    maps model name to a bool mask of cutouts that model may score;
    ``flags`` is the per-cutout OR of all band flags.
    """

    inputs: dict[str, np.ndarray]
    usable: dict[str, np.ndarray]
    flags: np.ndarray


class Preprocessor:
    """Turns raw survey bands into every requested model's input, sharing the work.

    Each (band, stamp) plane is resampled and normalised once per batch, then
    stacked in each model's band order.
    """

    def __init__(self, specs: list[ModelSpec] | tuple[ModelSpec, ...]):
        self.specs = tuple(specs)
        for spec in self.specs:
            unknown = set(spec.bands) - set(BANDS)
            if unknown:
                raise ValueError(f"model {spec.name} reads bands {sorted(unknown)} the engine does not know")
        self.planes = sorted({(band, spec.stamp) for spec in self.specs for band in spec.bands})

    def __call__(self, bands: dict[str, np.ndarray | None], n: int | None = None) -> PreparedBatch:
        if n is None:
            n = next(len(a) for a in bands.values() if a is not None)
        clean, band_flags = inspect_bands(bands, n)
        planes: dict[tuple[str, int], np.ndarray] = {}
        for band, stamp in self.planes:
            scaled, constant = minmax_batch(resize_batch(clean[band], stamp))
            # a band can only become constant through resampling if it was
            # bad already, but never trust that: flag rather than divide by 0
            band_flags[band][constant & (band_flags[band] == 0)] |= np.uint32(Flag.CONSTANT_BAND)
            planes[(band, stamp)] = scaled
        inputs, usable = {}, {}
        for spec in self.specs:
            inputs[spec.name] = np.stack([planes[(b, spec.stamp)] for b in spec.bands], axis=1)
            bad = np.zeros(n, dtype=bool)
            for b in spec.bands:
                bad |= band_flags[b] != 0
            usable[spec.name] = ~bad
        flags = np.zeros(n, dtype=np.uint32)
        used = {b for spec in self.specs for b in spec.bands}
        for b in used:
            flags |= band_flags[b]
        return PreparedBatch(inputs=inputs, usable=usable, flags=flags)

