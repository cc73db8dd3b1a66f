"""The reduced-precision CPU path: bf16 autocast in torch on the weights kept beside each ONNX model.

fp32 ONNX Runtime is the portable default.  On CPUs with native bf16 (Intel
AMX or AVX-512 BF16) torch's bf16 autocast with channels-last memory runs the
CNNs several times faster with |ΔP(lens)| of a few 1e-3 (benchmarks/bench_engine.py
measures both side by side).  This path needs torch (the ``training`` extra);
the engine imports it only when ``--precision bf16`` is asked for or chosen by
``--precision auto``.
"""

from __future__ import annotations

import logging
import threading
from functools import lru_cache

log = logging.getLogger(__name__)

__all__ = ["cpu_has_bf16", "torch_available", "resolve_precision", "bf16_runner"]

_LOCK = threading.Lock()


@lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """The CPU computes bf16 natively (AMX tiles or AVX-512 BF16), from /proc/cpuinfo."""
    try:
        with open("/proc/cpuinfo") as fh:
            flags = next((line for line in fh if line.startswith("flags")), "")
    except OSError:
        return False
    return any(f in flags.split() for f in ("amx_bf16", "avx512_bf16"))


def torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_precision(precision: str, device: str) -> str:
    """``auto`` -> ``bf16`` on a bf16-capable CPU with torch installed (CPU runs only), else ``fp32``."""
    if precision not in ("auto", "fp32", "bf16"):
        raise ValueError(f"precision must be auto, fp32 or bf16, not {precision!r}")
    if precision == "bf16" and not torch_available():
        raise ValueError("--precision bf16 runs the models in torch: pip install 'lensengine[training]'")
    if precision != "auto":
        return precision
    return "bf16" if device == "cpu" and cpu_has_bf16() and torch_available() else "fp32"


_RUNNERS: dict[tuple, object] = {}


def bf16_runner(onnx_path: str, name: str, threads: int = 0):
    """x (N, C, S, S) float32 -> P(lens) float32, computed under bf16 autocast (cached per process)."""
    key = (onnx_path, threads)
    with _LOCK:
        if key in _RUNNERS:
            return _RUNNERS[key]
        import numpy as np
        import torch

        from lensengine.training.export import load_torch_model
        from lensengine.training.networks import p_lens

        if threads:
            torch.set_num_threads(threads)
        net = load_torch_model(onnx_path, name).eval().to(memory_format=torch.channels_last)

        def run(x: np.ndarray) -> np.ndarray:
            t = torch.from_numpy(x).contiguous(memory_format=torch.channels_last)
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
                logits = net(t)
            return p_lens(logits.float()).numpy().astype(np.float32)

        log.info("%s runs in torch bf16 on the CPU", name)
        _RUNNERS[key] = run
        return run
