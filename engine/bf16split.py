"""bf16 with an exact first layer: the ``openvino-bf16-split`` runner's model and input.

In bf16 a network's input and weights keep 8 significant bits.  On the shipped
networks that rounding *at the first convolution* is what moves P(lens) past
0.01 (measured layer by layer on OU-66: the first convolution alone 0.0123,
every other layer in bf16 with the first in fp32 0.0038; docs/performance.md).
So this runner keeps bf16 everywhere but gives the first convolution two bf16
parts of each operand, whose sum is the fp32 value to 16 bits:

    x = x_hi + x_lo,  W = W_hi + W_lo  (each part exactly representable in bf16)
    conv(x, W) ≈ conv(x_hi, W_hi) + conv(x_lo, W_hi) + conv(x_hi, W_lo)

which is one convolution over three times the input channels: input
``[x_hi, x_lo, x_hi]`` against weights ``[W_hi, W_hi, W_lo]``.  The runtime
converts nothing it could round (every value is already a bf16 number) and
accumulates in fp32 as usual; the dropped ``x_lo·W_lo`` term is 2⁻¹⁶ of the
product.  The cost is the first layer's, tripled in its input channels.

:func:`split_model` writes that model once per model (cached by SHA-256, renamed
into place atomically); :func:`split_input_bits` makes the input from the usual one,
as bf16 bit patterns that the runners hand to OpenVINO as a bf16 tensor.

The ``openvino-bf16-split2`` runner splits only the input, ``[x_hi, x_lo]``
against ``[W_q, W_q]``, two thirds of the first layer's cost.  Rounding ``W`` to
the nearest bf16 alone would leave its error (up to 0.014 in P on these
networks), so ``W_q`` is rounded with error compensation instead
(:func:`compensated_bf16`): the weights of an output channel are rounded one at a
time and each rounding error is spread over the weights not yet rounded, in the
proportions that keep the convolution's output closest in the mean square over
the patches it reads (the optimal-brain-surgeon update that GPTQ applies to
whole networks; Frantar et al. 2023).  Those patch statistics
(:func:`patch_moments`) come from the engine's deterministic synthetic cutouts
(:func:`lensengine.engine.runners.calibration_inputs`), never from the cutouts a
runner is measured on.
"""

from __future__ import annotations

import os
import sys
from functools import lru_cache
from pathlib import Path

import numpy as np

__all__ = ["SPLIT_VERSION", "SPLIT2_VERSION", "bf16_parts", "compensated_bf16", "patch_moments", "split_input",
           "split_input_bits", "split_model", "split_graph", "split_path", "split_problem"]

#: bump when the rewrite changes, so cached copies are remade
SPLIT_VERSION = 2
#: the same for the two-part rewrite (its weights depend on the calibration cutouts too)
SPLIT2_VERSION = 1
_HIGH = np.uint32(0xFFFF0000)


def _to_bf16(a: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``a`` rounded to the nearest bf16 number (ties to even), as float32 (finite values); into ``out`` if given."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
    out = np.empty(u.shape, np.float32) if out is None else out
    r = out.view(np.uint32)
    np.right_shift(u, np.uint32(16), out=r)
    np.bitwise_and(r, np.uint32(1), out=r)
    np.add(r, np.uint32(0x7FFF), out=r)
    np.add(r, u, out=r)
    np.bitwise_and(r, _HIGH, out=r)
    return out


def bf16_parts(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(hi, lo)``, each exactly a bf16 number (fp32, low 16 bits zero); ``hi + lo`` is ``a`` within 2⁻¹⁶."""
    a = np.ascontiguousarray(a, dtype=np.float32)
    hi = _to_bf16(a)
    return hi, _to_bf16(a - hi)


def split_input_bits(x: np.ndarray, parts: int = 3) -> np.ndarray:
    """The split model's input for the usual input ``x`` (N, C, H, W) as bf16 bit patterns (uint16):
    ``[x_hi, x_lo, x_hi]`` on the channel axis (``[x_hi, x_lo]`` with ``parts`` 2).

    ``x_hi`` is ``x`` rounded to nearest (ties to even) as in :func:`bf16_parts`, ``x_lo`` the exact rest
    ``x - x_hi`` truncated to bf16, which keeps ``x_hi + x_lo`` within 2⁻¹⁵ of ``x``.  The runners hand these
    bits to OpenVINO as a bf16 tensor: the same numbers as fp32 parts, but half the bytes to read, and no
    conversion inside the network (the split runners 1.05–1.31× faster on an AMX CPU, the same scores; stop
    40).  It runs on every batch, so it works in place in two arrays the process's buffer pool has free
    (engine/buffers.py).
    """
    from lensengine.engine.buffers import pool

    x = np.ascontiguousarray(x, dtype=np.float32)
    c = x.shape[1]
    out = pool.empty((x.shape[0], parts * c, *x.shape[2:]), np.uint16)
    part = _to_bf16(x, out=pool.empty(x.shape))  # x_hi, a float32 whose low 16 bits are zero
    high = slice(1, None, 2) if sys.byteorder == "little" else slice(0, None, 2)  # a float32's high 16 bits
    out[:, :c] = part.view(np.uint16)[..., high]
    np.subtract(x, part, out=part)  # x - x_hi: exact
    out[:, c:2 * c] = part.view(np.uint16)[..., high]  # truncated to bf16
    if parts == 3:
        out[:, 2 * c:] = out[:, :c]
    return out


def split_input(x: np.ndarray, parts: int = 3) -> np.ndarray:
    """:func:`split_input_bits` as float32 numbers (for a runtime without bf16 input, e.g. ONNX Runtime)."""
    bits = split_input_bits(x, parts)
    return np.left_shift(bits.astype(np.uint32), np.uint32(16)).view(np.float32)


def patch_moments(x: np.ndarray, kernel: tuple[int, int], pads=(0, 0, 0, 0), strides=(1, 1)) -> np.ndarray:
    """``E[p pᵀ]`` (float64, d × d) over every patch ``p`` a convolution with this kernel, padding and stride reads
    from ``x`` (N, C, H, W); ``p`` is ordered as a row of the weights reshaped to (C_out, C·kh·kw)."""
    from numpy.lib.stride_tricks import sliding_window_view

    kh, kw = kernel
    d = x.shape[1] * kh * kw
    total, count = np.zeros((d, d)), 0
    for i in range(len(x)):  # one cutout at a time: a 200-px four-band cutout has 40 000 patches of 100 values
        xp = np.pad(np.asarray(x[i:i + 1], np.float64), ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
        win = sliding_window_view(xp, (kh, kw), axis=(2, 3))[:, :, ::strides[0], ::strides[1]]
        p = win.transpose(0, 2, 3, 1, 4, 5).reshape(-1, d)
        total += p.T @ p
        count += len(p)
    return total / max(count, 1)


def compensated_bf16(w: np.ndarray, moments: np.ndarray, damp: float = 0.01) -> np.ndarray:
    """bf16 weights (as float32) for ``w`` (C_out, d) that keep ``w @ p`` close for patches with second moments
    ``moments`` (d × d): each column is rounded to the nearest bf16 number in turn and its rounding error spread
    over the columns still to come through the inverse moments' Cholesky factor (see the module).  ``damp``
    (a share of the mean diagonal) keeps a singular ``moments`` (a constant pixel, an unused band) invertible.
    """
    d = moments.shape[0]
    h = moments + damp * max(float(np.mean(np.diag(moments))), 1e-12) * np.eye(d)
    factor = np.linalg.cholesky(np.linalg.inv(h)).T  # upper triangular
    rest = np.asarray(w, np.float64).copy()
    out = np.empty(rest.shape, np.float32)
    for j in range(d):
        out[:, j] = _to_bf16(rest[:, j].astype(np.float32))
        err = (rest[:, j] - out[:, j]) / factor[j, j]
        rest[:, j + 1:] -= np.outer(err, factor[j, j + 1:])
    return out


def split_graph(proto, parts: int = 3, calibration: np.ndarray | None = None, check_only: bool = False) -> None:
    """Rewrite an ONNX ``ModelProto`` in place: its first convolution takes the three-part input (``parts`` 3),
    or the two-part input against :func:`compensated_bf16` weights set on ``calibration`` (usual inputs,
    N × C × H × W; ``parts`` 2).

    Raises ``ValueError`` when the graph input does not feed exactly one ``Conv`` (with ``group`` 1; for two
    parts also explicit padding, no dilation) and nothing else: the rewrite would then change what the network
    computes.  ``check_only`` makes those checks and leaves ``proto`` alone.
    """
    from onnx import numpy_helper

    if parts not in (2, 3):
        raise ValueError(f"parts must be 2 or 3, not {parts}")
    graph = proto.graph
    initializers = {t.name: t for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise ValueError(f"expected one graph input, found {len(inputs)}")
    name = inputs[0].name
    users = [node for node in graph.node if name in node.input]
    if len(users) != 1 or users[0].op_type != "Conv" or users[0].input[0] != name:
        raise ValueError(f"the input {name!r} feeds {[u.op_type for u in users]}, not one convolution")
    conv = users[0]
    if any(a.name == "group" and a.i != 1 for a in conv.attribute):
        raise ValueError("the first convolution is grouped")
    if len(conv.input) < 2 or conv.input[1] not in initializers:
        raise ValueError("the first convolution's weights are not a constant")
    channels = inputs[0].type.tensor_type.shape.dim[1]
    if not channels.HasField("dim_value"):
        raise ValueError("the input's channel axis has no fixed size")
    attrs = {a.name: list(a.ints) for a in conv.attribute if a.ints}
    auto_pad = next((a.s for a in conv.attribute if a.name == "auto_pad"), b"NOTSET")
    if parts == 2 and (auto_pad not in (b"", b"NOTSET") or any(v != 1 for v in attrs.get("dilations", [1, 1]))):
        raise ValueError("the first convolution pads automatically or is dilated")
    if check_only:
        return
    w = numpy_helper.to_array(initializers[conv.input[1]])
    if parts == 3:
        w_hi, w_lo = bf16_parts(w)
        split = np.concatenate([w_hi, w_hi, w_lo], axis=1)
    else:
        if calibration is None:
            raise ValueError("the two-part rewrite needs calibration inputs")
        moments = patch_moments(calibration, w.shape[2:], attrs.get("pads", [0, 0, 0, 0]),
                                attrs.get("strides", [1, 1]))
        w_q = compensated_bf16(w.reshape(w.shape[0], -1), moments).reshape(w.shape)
        split = np.concatenate([w_q, w_q], axis=1)
    initializers[conv.input[1]].CopyFrom(numpy_helper.from_array(split, conv.input[1]))
    channels.dim_value *= parts


@lru_cache(maxsize=32)
def split_problem(path: str, parts: int = 3) -> str | None:
    """Why the ONNX model at ``path`` cannot be split in ``parts`` (see :func:`split_graph`), or None when it can."""
    import onnx

    try:
        split_graph(onnx.load(str(path)), parts, check_only=True)
    except ValueError as exc:
        return str(exc)
    return None


def split_path(sha256: str, cache: Path, parts: int = 3) -> Path:
    """Where :func:`split_model` keeps the ``parts``-part copy of the model file whose SHA-256 is ``sha256``."""
    tag = f"bf16split-v{SPLIT_VERSION}" if parts == 3 else f"bf16split2-v{SPLIT2_VERSION}"
    return Path(cache) / f"{sha256[:20]}-{tag}.onnx"


def split_model(model, sha256: str, cache: Path, parts: int = 3, calibration=None) -> Path:
    """The split copy of ``model`` (a :class:`~lensengine.engine.models.ModelEntry` whose file has SHA-256
    ``sha256``), made once into ``cache``: ``parts`` 3 for ``openvino-bf16-split``, 2 for
    ``openvino-bf16-split2``, whose weights are set on the inputs ``calibration()`` returns (called only when
    the copy is made; :func:`lensengine.engine.runners.calibration_inputs`)."""
    path = split_path(sha256, cache, parts)
    if path.is_file():
        return path
    import onnx  # only to make the copy (0.46 s to import on 2 cores)
    proto = onnx.load(str(model.path))
    try:
        split_graph(proto, parts, None if calibration is None else calibration())
    except ValueError as exc:
        raise ValueError(f"model {model.name} ({model.path}): the {parts}-part bf16 split cannot rewrite it: "
                         f"{exc}") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + f".tmp-{os.getpid()}.onnx")
    try:
        onnx.save(proto, str(tmp))
        os.replace(tmp, path)  # atomic: concurrent workers never read half a file
    finally:
        tmp.unlink(missing_ok=True)
    return path
