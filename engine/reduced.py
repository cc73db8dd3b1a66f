"""Choosing the precision of a run: fp32 in ONNX Runtime, or bf16 autocast in torch on a capable CPU.

fp32 ONNX Runtime is the portable default.  On CPUs with native bf16 (Intel
AMX or AVX-512 BF16) torch's bf16 autocast with channels-last memory runs the
CNNs several times faster with |ΔP(lens)| of a few 1e-3 (benchmarks/bench_engine.py
measures both side by side).  The bf16 runner itself is a plugin (the
``make_runner`` hook, answered by :mod:`lensengine.plugins.torch_runner`
with the torch weights kept beside each ONNX model), so the engine never
imports the training code; this module only decides which precision a run
uses (asking whether torch is installed, without using it).
"""

from __future__ import annotations

from functools import lru_cache

__all__ = ["cpu_has_bf16", "torch_available", "resolve_precision"]


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
