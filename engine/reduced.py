"""``--precision`` of a run: ``fp32`` in ONNX Runtime, ``bf16`` autocast in torch, or ``auto``.

fp32 ONNX Runtime is the portable reference.  ``bf16`` runs the networks in
torch's bf16 autocast with channels-last memory (the ``torch-bf16`` runner, a
plugin: :mod:`lensengine.plugins.torch_runner`, with the torch weights kept
beside each ONNX model), so the engine never imports the training code.
``auto`` on the CPU is ``--runner auto`` (:func:`lensengine.engine.runners.choose_runners`:
per model the runner a calibration measured correct and faster on this CPU,
else ``ort-fp32``); on a GPU it is fp32 (ONNX Runtime on the device).  An
earlier ``auto`` took bf16 on every CPU with bf16 arithmetic; measured on an
AVX-512-BF16 CPU (docs/performance.md) torch's eager bf16 ran 0.72–1.10× ONNX
Runtime fp32 and beyond 0.01 on all seven networks, so it is no default.
"""

from __future__ import annotations

__all__ = ["torch_available", "resolve_precision"]


def torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_precision(precision: str, device: str) -> str:
    """``fp32`` or ``bf16`` as given (bf16 needs torch); ``auto`` here (a GPU run) is ``fp32``."""
    if precision not in ("auto", "fp32", "bf16"):
        raise ValueError(f"precision must be auto, fp32 or bf16, not {precision!r}")
    if precision == "bf16" and not torch_available():
        raise ValueError("--precision bf16 runs the models in torch: pip install 'lensengine[training]'")
    return "fp32" if precision == "auto" else precision
