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
into place atomically); :func:`split_input` makes the input from the usual one.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import numpy as np

__all__ = ["SPLIT_VERSION", "bf16_parts", "split_input", "split_model", "split_graph", "split_problem"]

#: bump when the rewrite changes, so cached copies are remade
SPLIT_VERSION = 2
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


def split_input(x: np.ndarray) -> np.ndarray:
    """The split model's input for the usual input ``x`` (N, C, H, W): ``[x_hi, x_lo, x_hi]`` on the channel axis.

    Written in place into one array (it runs on every batch; one the process's buffer pool has free,
    engine/buffers.py): ``x_hi`` rounded to nearest as in :func:`bf16_parts`, ``x_lo`` truncated, which keeps
    ``x_hi + x_lo`` within 2⁻¹⁵ of ``x``.
    """
    from lensengine.engine.buffers import pool

    x = np.ascontiguousarray(x, dtype=np.float32)
    c = x.shape[1]
    out = pool.empty((x.shape[0], 3 * c, *x.shape[2:]))
    _to_bf16(x, out=out[:, :c])
    lo = out[:, c:2 * c]
    np.subtract(x, out[:, :c], out=lo)
    np.bitwise_and(lo.view(np.uint32), _HIGH, out=lo.view(np.uint32))
    out[:, 2 * c:] = out[:, :c]
    return out


def split_graph(proto) -> None:
    """Rewrite an ONNX ``ModelProto`` in place: its first convolution takes the three-part input.

    Raises ``ValueError`` when the graph input does not feed exactly one ``Conv`` (with ``group`` 1) and
    nothing else: the rewrite would then change what the network computes.
    """
    from onnx import numpy_helper

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
    w_hi, w_lo = bf16_parts(numpy_helper.to_array(initializers[conv.input[1]]))
    initializers[conv.input[1]].CopyFrom(numpy_helper.from_array(np.concatenate([w_hi, w_hi, w_lo], axis=1),
                                                                 conv.input[1]))
    channels = inputs[0].type.tensor_type.shape.dim[1]
    if not channels.HasField("dim_value"):
        raise ValueError("the input's channel axis has no fixed size")
    channels.dim_value *= 3


@lru_cache(maxsize=32)
def split_problem(path: str) -> str | None:
    """Why the ONNX model at ``path`` cannot be split (see :func:`split_graph`), or None when it can."""
    import onnx

    try:
        split_graph(onnx.load(str(path)))
    except ValueError as exc:
        return str(exc)
    return None


def split_model(model, sha256: str, cache: Path) -> Path:
    """The split copy of ``model`` (a :class:`~lensengine.engine.models.ModelEntry` whose file has SHA-256
    ``sha256``), made once into ``cache``."""
    import onnx

    path = Path(cache) / f"{sha256[:20]}-bf16split-v{SPLIT_VERSION}.onnx"
    if path.is_file():
        return path
    proto = onnx.load(str(model.path))
    try:
        split_graph(proto)
    except ValueError as exc:
        raise ValueError(f"model {model.name} ({model.path}): openvino-bf16-split cannot rewrite it: {exc}") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + f".tmp-{os.getpid()}.onnx")
    try:
        onnx.save(proto, str(tmp))
        os.replace(tmp, path)  # atomic: concurrent workers never read half a file
    finally:
        tmp.unlink(missing_ok=True)
    return path
