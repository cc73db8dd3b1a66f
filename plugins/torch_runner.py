"""Built-in plugin: runs a model in torch under bf16 autocast (``lensengine run --precision bf16``).

Answers the ``make_runner`` hook for ``"bf16"`` from the torch weights kept
beside each exported ONNX file (``<model>.pt``).  On CPUs with native bf16
(AMX or AVX-512 BF16), channels-last bf16 autocast runs the CNNs several times
faster than fp32 ONNX Runtime with |ΔP(lens)| of a few 1e-3
(benchmarks/bench_engine.py).  torch and the training code are imported only
when a runner is made, so the plugin loads in an engine-only install.
"""

from __future__ import annotations

import logging

from lensengine.plugins import hookimpl

log = logging.getLogger(__name__)


@hookimpl
def make_runner(model, precision, threads):
    if precision != "bf16":
        return None
    import numpy as np
    import torch

    from lensengine.training.export import load_torch_model
    from lensengine.training.networks import p_lens

    if threads:
        torch.set_num_threads(threads)
    net = load_torch_model(model.path, model.name).eval().to(memory_format=torch.channels_last)

    def run(x: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(x).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            logits = net(t)
        return p_lens(logits.float()).numpy().astype(np.float32)

    log.info("%s runs in torch bf16 on the CPU", model.name)
    return run
