"""Copies of the networks with their convolutions' channels padded by zero filters (issue 13, item 5).

    python benchmarks/pad_channels.py models models_pad8             # every ONNX model of the folder
    python benchmarks/pad_channels.py models models_pad8 --multiple 8 --check 256

Why: the shipped networks have 50, 30 and 20 channels in their convolutions, and
OU-200's first two convolutions (50 filters out, then 50 in) hold 96 % of its
arithmetic.  GPU tensor-core kernels take channel counts that are multiples of 8
(fp16/bf16) or 4 (TF32); others run slower kernels or none.  On one H200 (stop
38) neither bf16 in torch nor an fp16 graph in ONNX Runtime sped up the 200-px
networks at all, which is what misaligned channels would do.  The padded copy
computes the same function: each added filter has zero weights and a zero bias,
so its channel is zero after ReLU and max-pooling, and the next convolution has
zero weights for it.  The last convolution keeps its own output channels, so the
dense layers are the originals.

The copies go to a folder of their own with the same model metadata (names,
bands, stamp), so `bench_gpu.py --models models_pad8` measures them per model
and end to end exactly as the shipped ones.  On the CPU the copy is checked
against the original (max |ΔP| on ``--check`` random inputs in [0, 1], the range
of the min-max-scaled cutouts) and both are timed side by side on ONNX Runtime fp32 and, where it is
installed, OpenVINO fp32 (docs/performance.md, "Stop 44": the CPU path gains nothing that counts).
Needs the ``onnx`` package (the training extra).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

#: ops that keep each channel apart (a zero channel stays zero through them)
CHANNELWISE = {"Relu", "MaxPool", "Dropout", "Identity"}


def pad_conv_channels(model, multiple: int = 8):
    """A copy of ``model`` (an ``onnx.ModelProto``) whose convolutions have their output channels padded to a
    multiple of ``multiple`` with zero filters, and the next convolution's input channels to match.

    Returns ``(copy, changes)``: ``changes`` lists ``(node name, channels before, after)``.  The last
    convolution keeps its output channels (its output feeds the dense layers).  Raises ``ValueError`` when a
    padded tensor reaches an op that could mix or drop channels (the rewrite would not be exact).
    """
    import onnx
    from onnx import numpy_helper

    if multiple < 1:
        raise ValueError(f"--multiple must be at least 1, not {multiple}")
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    graph = copy.graph
    inits = {t.name: t for t in graph.initializer}
    for node in graph.node:  # torch's exporter shares equal tensors (a zero bias) through Identity nodes
        if node.op_type == "Identity" and node.input[0] in inits:
            inits.setdefault(node.output[0], inits[node.input[0]])
    convs = [n for n in graph.node if n.op_type == "Conv"]
    if not convs:
        raise ValueError("the graph has no convolution")
    last = convs[-1].output[0]
    padded: dict[str, int] = {}  # tensor -> (padded) channel count it now carries
    changes = []
    for i, node in enumerate(graph.node):
        extra_in = [t for t in node.input if t in padded]
        if node.op_type in CHANNELWISE:
            if extra_in:
                for out in node.output:
                    padded[out] = padded[node.input[0]]
            continue
        if node.op_type != "Conv":
            if extra_in:
                raise ValueError(f"{node.op_type} node {node.name or node.output[0]!r} takes a padded tensor: "
                                 "only convolutions and channel-wise ops may follow a padded convolution")
            continue
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        if group != 1 or len(node.input) < 3 or node.input[1] not in inits or node.input[2] not in inits:
            raise ValueError(f"convolution {node.name or node.output[0]!r}: only group 1 with constant "
                             "weights and bias can be padded")
        w = numpy_helper.to_array(inits[node.input[1]])
        b = numpy_helper.to_array(inits[node.input[2]])
        c_out, c_in = w.shape[:2]
        new_in = padded.get(node.input[0], c_in)
        new_out = c_out if node.output[0] == last else -(-c_out // multiple) * multiple
        if (new_in, new_out) == (c_in, c_out):
            continue
        w2 = np.zeros((new_out, new_in, *w.shape[2:]), w.dtype)
        w2[:c_out, :c_in] = w
        b2 = np.zeros(new_out, b.dtype)
        b2[:c_out] = b
        for k, array in ((1, w2), (2, b2)):  # new tensors: the originals may be shared with other nodes
            name = f"{node.input[k]}_pad{multiple}_{i}"
            graph.initializer.append(numpy_helper.from_array(array, name))
            node.input[k] = name
        if new_out != c_out:
            padded[node.output[0]] = new_out
        changes.append((node.name or node.output[0], (c_out, c_in), (new_out, new_in)))
    reached = sorted(o.name for o in graph.output if o.name in padded)
    if reached:
        raise ValueError(f"the graph's output(s) {reached} would carry the padded channels")
    _drop_unused(graph)
    del graph.value_info[:]  # intermediate shapes changed; ONNX Runtime infers them again
    onnx.checker.check_model(copy)
    return copy, changes


def pad_file(source: Path, target: Path, multiple: int = 8):
    """:func:`pad_conv_channels` of the ONNX file ``source``, saved to ``target``: ``(original, copy, changes)``."""
    import onnx

    original = onnx.load(str(source))
    copy, changes = pad_conv_channels(original, multiple)
    onnx.save(copy, str(target))
    return original, copy, changes


def _drop_unused(graph) -> None:
    """Remove the tensors (and the Identity nodes sharing them) that nothing reads any more."""
    while True:
        used = {t for n in graph.node for t in n.input} | {o.name for o in graph.output}
        idle = [n for n in graph.node if n.op_type == "Identity" and not set(n.output) & used]
        for node in idle:
            graph.node.remove(node)
        if not idle:
            break
    keep = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)


def _ort_rate(model_bytes: bytes, x: np.ndarray, threads: int, repeats: int = 3) -> tuple[np.ndarray, float]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    out = sess.run(None, {name: x})[0].reshape(-1)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        sess.run(None, {name: x})
        best = min(best, time.perf_counter() - t0)
    return out, len(x) / best


def _openvino_rate(model_bytes: bytes, x: np.ndarray, threads: int, repeats: int = 3) -> float | None:
    """OpenVINO fp32 img/s on the CPU, or None where OpenVINO is not installed."""
    try:
        import openvino as ov
    except ImportError:
        return None
    core = ov.Core()
    compiled = core.compile_model(core.read_model(model_bytes, b""), "CPU",
                                  {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()
    request.infer({0: x})
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        request.infer({0: x})
        best = min(best, time.perf_counter() - t0)
    return len(x) / best


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 2)[2])
    ap.add_argument("models", type=Path, help="folder of lensengine ONNX models")
    ap.add_argument("out", type=Path, help="folder for the padded copies (made; must not hold .onnx files)")
    ap.add_argument("--multiple", type=int, default=8, help="pad channel counts to a multiple of this [8]")
    ap.add_argument("--check", type=int, default=64, help="random inputs for the CPU check and timing [64]")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None, help="also write the table as JSON")
    args = ap.parse_args(argv)

    from lensengine.engine.models import discover_models

    entries = discover_models(args.models)
    args.out.mkdir(parents=True, exist_ok=True)
    if any(args.out.glob("*.onnx")):
        ap.error(f"{args.out} already holds ONNX models: give an empty folder")
    rng = np.random.default_rng(0)
    rows = []
    for e in entries:
        target = args.out / Path(e.path).name
        original, copy, changes = pad_file(e.path, target, args.multiple)
        x = rng.random((args.check, len(e.bands), e.stamp, e.stamp), dtype=np.float32)
        p0, r0 = _ort_rate(original.SerializeToString(), x, args.threads)
        p1, r1 = _ort_rate(copy.SerializeToString(), x, args.threads)
        v0 = _openvino_rate(original.SerializeToString(), x, args.threads)
        v1 = _openvino_rate(copy.SerializeToString(), x, args.threads)
        row = {"model": e.name, "file": str(target), "convolutions_changed": len(changes),
               "changes": [{"node": n, "before": list(a), "after": list(b)} for n, a, b in changes],
               "max_delta_p": float(np.abs(p1 - p0).max()), "cpu_img_s": r0, "cpu_img_s_padded": r1,
               "openvino_img_s": v0, "openvino_img_s_padded": v1}
        rows.append(row)
        print(f"{e.name:7s} {len(changes)} convolutions padded, max |ΔP| {row['max_delta_p']:.1e}, "
              f"ONNX Runtime CPU fp32 {r0:.0f} -> {r1:.0f} img/s ({r1 / r0:.2f}×)"
              + (f", OpenVINO fp32 {v0:.0f} -> {v1:.0f} ({v1 / v0:.2f}×)" if v0 and v1 else "")
              + f"  {target}", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"multiple": args.multiple, "threads": args.threads, "models": rows},
                                        indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
