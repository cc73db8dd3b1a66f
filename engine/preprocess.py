"""Preprocessing: the one implementation used by training, inference and import.

SPEC §4: each band is resampled to the model's stamp size with the
scikit-image ``resize`` defaults (bilinear, ``mode="reflect"``, Gaussian
anti-aliasing when downsampling) and then min-max scaled to [0, 1] per cutout
and band.  ``skimage.transform.resize`` is linear and separable, so for a fixed
pair of sizes it equals ``A @ X @ A.T`` with ``A = resize(eye(n), (m, n))``.
The matrices for the two resamplings the paper's networks need (VIS 200 -> 66
and NISP 66 -> 200) are shipped in ``engine/data`` so the engine needs no
scikit-image; a test checks them against scikit-image itself.

A model with its own stamp (a third-party network at 64 px, say) is fed from
the same native grids through a matrix built here at run time, with NumPy
only: bilinear interpolation when enlarging (identical to scikit-image's, which
applies no smoothing then) and exact pixel-area averaging when shrinking
(where scikit-image would smooth with a Gaussian first).  The choice is made
by the sizes alone, never by what happens to be installed, so run, evaluate
and the recall test feed such a model the same numbers everywhere.

Bad input never raises and never yields a NaN score: :func:`inspect_bands`
finds NaN/inf pixels, constant bands, missing bands and wrong shapes per cutout
and band; bad bands are zeroed before resampling and the caller withholds the
scores of models that read them.  Extreme but finite pixels (near the float32
limit, or float64 beyond it) are scaled per cutout in float64 before anything
is cast or subtracted, so they are neither overflowed into a false
CONSTANT_BAND nor cast to inf and called NONFINITE.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache, partial
from importlib import resources

import numpy as np

from lensengine.catalogs.flags import Flag
from lensengine.engine.buffers import BufferPool
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
    """The (n_out, n_in) float64 matrix that resamples one axis from ``n_in`` to ``n_out`` pixels.

    The shipped matrices (scikit-image's ``resize``) for the sizes the paper's
    networks use; for any other pair, :func:`_bilinear_matrix` (enlarging) or
    :func:`_area_matrix` (shrinking).
    """
    if n_in == n_out:
        return np.eye(n_in)
    name = f"resize_{n_in}_{n_out}.npy"
    data = resources.files("lensengine.engine").joinpath("data", name)
    if data.is_file():
        with data.open("rb") as fh:
            return np.load(fh)
    return _bilinear_matrix(n_in, n_out) if n_out > n_in else _area_matrix(n_in, n_out)


def _bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """Bilinear interpolation at the output pixel centres, mirrored at the edges (scikit-image's rule)."""
    x = (np.arange(n_out) + 0.5) * n_in / n_out - 0.5
    x = np.abs(x)
    x = np.where(x > n_in - 1, 2 * (n_in - 1) - x, x)
    lo = np.clip(np.floor(x).astype(np.intp), 0, n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = x - lo
    a = np.zeros((n_out, n_in))
    rows = np.arange(n_out)
    np.add.at(a, (rows, lo), 1.0 - frac)
    np.add.at(a, (rows, hi), frac)
    return a


def _area_matrix(n_in: int, n_out: int) -> np.ndarray:
    """Each output pixel is the mean of the input it covers, weighting partly covered pixels by area."""
    edges = np.arange(n_out + 1) * (n_in / n_out)
    left = np.arange(n_in)
    overlap = np.clip(np.minimum(edges[1:, None], left + 1) - np.maximum(edges[:-1, None], left), 0.0, None)
    return overlap / overlap.sum(axis=1, keepdims=True)


@lru_cache(maxsize=1)
def _blas():
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


@lru_cache(maxsize=None)
def _resize_matrix32(n_in: int, n_out: int) -> np.ndarray:
    """:func:`resize_matrix` in float32, made once."""
    return resize_matrix(n_in, n_out).astype(np.float32)


#: Output pixels per block of the banded resampling (:func:`_resize_blocks`); measured fastest of 8-50.
RESIZE_BLOCK = 25


@lru_cache(maxsize=None)
def _resize_blocks(n_in: int, n_out: int) -> tuple[tuple[slice, slice, np.ndarray, np.ndarray], ...]:
    """The resampling matrix cut into blocks of :data:`RESIZE_BLOCK` output pixels, each with only the input
    pixels its weights reach: ``(outputs, inputs, A[outputs, inputs], A[outputs, inputs].T)``, contiguous.

    The matrices are banded (bilinear enlarging: 2 weights per output pixel; anti-aliased shrinking 200 -> 66:
    7-10), so a dense product multiplies mostly zeros; the blocks skip them (2.2-2.9x faster: bench_prep.py).
    """
    a = _resize_matrix32(n_in, n_out)
    blocks = []
    for i in range(0, n_out, RESIZE_BLOCK):
        rows = slice(i, min(i + RESIZE_BLOCK, n_out))
        used = np.flatnonzero(np.any(a[rows] != 0, axis=0))
        cols = slice(int(used[0]), int(used[-1]) + 1) if used.size else slice(0, 0)
        part = np.ascontiguousarray(a[rows, cols])
        blocks.append((rows, cols, part, np.ascontiguousarray(part.T)))
    return tuple(blocks)


def resize_batch(images: np.ndarray, size: int, buffers: BufferPool | None = None,
                 out: np.ndarray | None = None) -> np.ndarray:
    """Resample square images (..., n, n) to (..., size, size) with :func:`resize_matrix` on both axes.

    ``buffers`` (a :class:`~lensengine.engine.buffers.BufferPool`) gives the
    intermediate and the result arrays (the same values as new ones).  ``out``
    (float32, (..., size, size), any strides whose rows are contiguous, such as
    one band of a stacked model input) takes the result instead; it is unused
    when ``size`` is the images' own.

    The products are taken block by block over the matrix's band
    (:func:`_resize_blocks`): the same sums as the dense product without its
    zero terms, equal to it within float32 rounding (a few units in the last
    place).  They run on one BLAS thread: a threaded float32 GEMM sums in an
    order that depends on the thread count, and Dask workers run BLAS on one
    thread while an interactive process uses every core, so without this the
    same cutout would reach a network with different last bits in ``lensengine
    run`` and in ``lensengine evaluate``.  (Single-threaded is also the fast
    choice for these small matrices.)
    """
    n = images.shape[-1]
    if images.shape[-2] != n:
        raise ValueError(f"expected square images, got shape {images.shape}")
    if n == size:
        return images.astype(np.float32, copy=False)
    x = images.astype(np.float32, copy=False)
    lead = x.shape[:-2]
    new = buffers.empty if buffers is not None else partial(np.empty, dtype=np.float32)
    half = new((*lead, size, n))
    out = new((*lead, size, size)) if out is None else out
    blocks = _resize_blocks(n, size)
    # image by image (NumPy's stacked products), never one tall product over the batch: BLAS picks its kernel
    # by the matrices' sizes, and an image's result must not depend on how many others share its batch
    with _blas().limit(limits=1, user_api="blas"):
        for rows, cols, part, _ in blocks:  # half = A @ x: a block of output rows from the input rows it reads
            np.matmul(part, x[..., cols, :], out=half[..., rows, :])
        for rows, cols, _, part_t in blocks:  # out = half @ A.T: a block of output columns
            np.matmul(half[..., cols], part_t, out=out[..., rows])
    return out


def minmax_batch(images: np.ndarray, overwrite: bool = False,
                 out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Min-max scale each image (..., S, S) to [0, 1].

    Returns ``(scaled, constant)`` where ``constant`` marks images with
    max == min (or a non-finite range); those come back as zeros, never NaN.
    The work is float32 (this runs on every cutout) and in place on one new
    array (``out``, a float32 array of the same shape, if given), or on
    ``images`` itself with ``overwrite`` (a float32 array the caller made and no
    longer needs: a resampled plane; the same values).
    Only an image whose span of two finite float32 values overflows (up to
    6.8e38, e.g. pixels of ±3e38) is redone in float64, so it is scaled, not
    called constant; the decision is per image, so an image's result never
    depends on which other images share its batch (the cascade regroups cutouts).
    """
    lo = images.min(axis=(-2, -1), keepdims=True)
    hi = images.max(axis=(-2, -1), keepdims=True)
    with np.errstate(over="ignore"):
        span = hi - lo
    wide = np.isinf(span) & np.isfinite(lo) & np.isfinite(hi)
    constant = ~(np.isfinite(span) & (span > 0)) & ~wide
    at = np.nonzero(wide[..., 0, 0])
    big = images[at].astype(np.float64) if at[0].size else None  # read before an overwrite
    overwrite = overwrite and images.dtype == np.float32 and images.flags.writeable
    with np.errstate(over="ignore", invalid="ignore"):
        scaled = np.subtract(images, lo, out=images if overwrite else out, dtype=np.float32)
        scaled /= np.where(constant | wide, np.float32(1), span)
    if constant.any():  # a masked pass over every pixel: only where some image is constant
        np.copyto(scaled, np.float32(0), where=constant)
    if big is not None:
        low = big.min(axis=(-2, -1), keepdims=True)
        scaled[at] = ((big - low) / (big.max(axis=(-2, -1), keepdims=True) - low)).astype(np.float32)
    return scaled, constant[..., 0, 0]


#: Largest pixel magnitude resampled in float32 as it is; a cutout beyond it is rescaled first.
_SAFE_MAGNITUDE = 1e30


def _to_float32(arr: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(x, finite, lo, hi)``: the cutouts (n, S, S) as float32, the (n,) mask of cutouts with all pixels
    finite, and each cutout's float32 min and max (meaningful where finite).

    Finiteness is judged in the input's own dtype (a float64 1e300 is finite).
    A finite cutout with pixels beyond ``_SAFE_MAGNITUDE`` is min-max scaled to
    [0, 1] in float64 first: resampling is linear and keeps constants, and the
    final min-max scaling removes any offset and scale, so the network input is
    the same as for unscaled data, but nothing overflows on the way.  For
    float32 input (the store's dtype) one min and one max pass answer all of
    it: both propagate NaN and an infinity shows in one of them.
    """
    arr = np.asarray(arr)
    if arr.dtype == np.float32:
        x = arr
        lo, hi = x.min(axis=(-2, -1)), x.max(axis=(-2, -1))
        finite = np.isfinite(lo) & np.isfinite(hi)
        peak = np.where(finite, np.maximum(np.abs(lo), np.abs(hi)), 0)
    else:
        finite = np.isfinite(arr).all(axis=(-2, -1))
        with np.errstate(over="ignore"):  # an out-of-range float64 cutout is replaced below
            x = np.asarray(arr, dtype=np.float32)
        peak = np.abs(np.where(finite[:, None, None], arr, 0)).max(axis=(-2, -1))
        lo = hi = None
    big = np.flatnonzero(peak > _SAFE_MAGNITUDE)
    if big.size:
        wide = arr[big].astype(np.float64)
        low = wide.min(axis=(-2, -1), keepdims=True)
        span = wide.max(axis=(-2, -1), keepdims=True) - low
        x = x.copy() if x is arr else x
        x[big] = np.where(span > 0, (wide - low) / np.where(span > 0, span, 1.0), 0.0)
        lo = hi = None
    if lo is None:
        lo, hi = x.min(axis=(-2, -1)), x.max(axis=(-2, -1))
    return x, finite, lo, hi


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
            x, finite, lo, hi = _to_float32(arr)
            lo = np.where(finite, lo, 0)
            hi = np.where(finite, hi, 0)
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


#: Cutouts prepared at a time: a larger batch (a GPU run's sub-batch of 256, a user's --batch-size) is prepared in
#: slices of this many into whole-batch arrays.  Each step of the preprocessing passes over its arrays, and 32
#: cutouts' planes stay in the CPU's caches between passes while 256 or 1 024 do not.  Median of 5 interleaved
#: rounds on 2 cores, ms of CPU per cutout, whole / in slices: 256: 0.46 / 0.41; 1 024: 0.77 / 0.47; 32: 0.30;
#: 128: 0.39 / 0.41 (benchmarks/bench_prep.py --sub-batches; docs/performance.md, "The GPU benchmark").
PREP_SLICE = 32


class Preprocessor:
    """Turns raw survey bands into every requested model's input, sharing the work.

    Each (band, stamp) plane is resampled and normalised once per batch, then
    stacked in each model's band order.  A spec is anything with ``name``,
    ``bands`` and ``stamp`` (a :class:`ModelSpec`, or a model entry's
    :meth:`~lensengine.engine.models.ModelEntry.as_spec`): any stamp works.

    With ``buffers`` (a :class:`~lensengine.engine.buffers.BufferPool`; the
    scoring workers pass the process's pool) the resampled planes and the
    stacked inputs are written into arrays that earlier batches let go: the same
    values, without new memory for every batch.

    A plane that only stacked inputs use (OU-200's NISP bands at 200 px, OU-66's
    VIS at 66 px) is resampled and scaled in its place in the first of those
    inputs, not in a plane of its own that stacking then copies: the same values,
    and for the seven networks three fewer copies of a 200-px plane per cutout.
    """

    def __init__(self, specs: list[ModelSpec] | tuple[ModelSpec, ...], buffers: BufferPool | None = None):
        self.specs = tuple(specs)
        self.buffers = buffers
        for spec in self.specs:
            unknown = set(spec.bands) - set(BANDS)
            if unknown:
                raise ValueError(f"model {spec.name} reads bands {sorted(unknown)} the engine does not know")
        self.planes = sorted({(band, spec.stamp) for spec in self.specs for band in spec.bands})
        #: plane -> (model, band index) of the stacked input it is made in: planes no single-band model reads
        alone = {(spec.bands[0], spec.stamp) for spec in self.specs if len(spec.bands) == 1}
        self.homes: dict[tuple[str, int], tuple[str, int]] = {}
        for spec in self.specs:
            for k, band in enumerate(spec.bands):
                if len(spec.bands) > 1 and (band, spec.stamp) not in alone:
                    self.homes.setdefault((band, spec.stamp), (spec.name, k))

    def __call__(self, bands: dict[str, np.ndarray | None], n: int | None = None) -> PreparedBatch:
        if n is None:
            n = next(len(a) for a in bands.values() if a is not None)
        if n > PREP_SLICE:
            return self._in_slices(bands, n)
        clean, band_flags = inspect_bands(bands, n)
        empty = np.empty if self.buffers is None else self.buffers.empty
        inputs = {spec.name: empty((n, len(spec.bands), spec.stamp, spec.stamp), np.float32)
                  for spec in self.specs if len(spec.bands) > 1}
        planes: dict[tuple[str, int], np.ndarray] = {}
        for band, stamp in self.planes:
            home = self.homes.get((band, stamp))
            dest = None if home is None else inputs[home[0]][:, home[1]]
            resized = resize_batch(clean[band], stamp, self.buffers, out=dest)
            if resized is not clean[band]:  # this batch's own array: scale it where it is (no second copy)
                scaled, constant = minmax_batch(resized, overwrite=True)
            else:  # the band itself, at its own size: scaled into its place, or into a plane of its own
                out = dest
                if out is None and self.buffers is not None:
                    out = self.buffers.empty(resized.shape)
                scaled, constant = minmax_batch(resized, out=out)
            if dest is not None and scaled is not dest:  # a band at its own size, made float32 in a copy
                dest[...] = scaled
            # a band can only become constant through resampling if it was
            # bad already, but never trust that: flag rather than divide by 0
            band_flags[band][constant & (band_flags[band] == 0)] |= np.uint32(Flag.CONSTANT_BAND)
            planes[(band, stamp)] = scaled
        usable = {}
        for spec in self.specs:
            if len(spec.bands) == 1:  # a view: (n, S, S) -> (n, 1, S, S) is still contiguous
                inputs[spec.name] = planes[(spec.bands[0], spec.stamp)][:, None]
            else:
                for k, band in enumerate(spec.bands):
                    plane = (band, spec.stamp)
                    if self.homes.get(plane) != (spec.name, k):  # not made in its place here: copy it in
                        inputs[spec.name][:, k] = planes[plane]
            bad = np.zeros(n, dtype=bool)
            for b in spec.bands:
                bad |= band_flags[b] != 0
            usable[spec.name] = ~bad
        flags = np.zeros(n, dtype=np.uint32)
        used = {b for spec in self.specs for b in spec.bands}
        for b in used:
            flags |= band_flags[b]
        return PreparedBatch(inputs=inputs, usable=usable, flags=flags)

    def _in_slices(self, bands: dict[str, np.ndarray | None], n: int) -> PreparedBatch:
        """A large batch prepared :data:`PREP_SLICE` cutouts at a time into whole-batch arrays (the same values:
        every step works cutout by cutout)."""
        inputs: dict[str, np.ndarray] = {}
        usable: dict[str, np.ndarray] = {}
        flags = np.zeros(n, dtype=np.uint32)
        for lo in range(0, n, PREP_SLICE):
            hi = min(n, lo + PREP_SLICE)
            part = self({b: None if a is None else a[lo:hi] for b, a in bands.items()}, hi - lo)
            for name, x in part.inputs.items():
                if name not in inputs:
                    shape = (n, *x.shape[1:])
                    inputs[name] = np.empty(shape, x.dtype) if self.buffers is None else self.buffers.empty(shape)
                    usable[name] = np.empty(n, dtype=bool)
                inputs[name][lo:hi] = x
                usable[name][lo:hi] = part.usable[name]
            flags[lo:hi] = part.flags
        return PreparedBatch(inputs=inputs, usable=usable, flags=flags)

