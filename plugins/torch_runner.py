"""Built-in plugin: the torch runners (``--runner torch-bf16|torch-compile-fp32|torch-compile-bf16``).

Answers the ``make_runner`` hook from the torch weights kept beside each
exported ONNX file (``<model>.pt``):

* ``torch-bf16`` (also the legacy ``--precision bf16``): bf16 autocast,
  channels-last, eager.  On CPUs with native bf16 (AMX or AVX-512 BF16) it
  runs the CNNs faster than fp32 ONNX Runtime with |ΔP(lens)| of a few 1e-3;
  on an AVX2-only CPU bf16 is emulated and several times slower.
* ``torch-compile-fp32`` / ``torch-compile-bf16``: the same network through
  ``torch.compile`` (inductor).  Compiling costs tens of seconds, so the
  compiled kernels are kept in a persistent cache
  (``<lensengine cache>/torch-inductor``, see :func:`lensengine.engine.runners.cache_dir`)
  and a later process with the same model and batch size starts in seconds.
  Inputs are padded to one fixed batch size so that one compiled graph serves
  every call (a new shape would recompile).

torch and the training code are imported only when a runner is made, so the
plugin loads in an engine-only install.
"""

from __future__ import annotations

import logging
import os
import warnings

from lensengine.plugins import hookimpl

log = logging.getLogger(__name__)

#: runner names this plugin answers (``bf16`` is the legacy ``--precision`` spelling of torch-bf16)
TORCH_RUNNERS = {"bf16": ("eager", True), "torch-bf16": ("eager", True),
                 "torch-compile-fp32": ("compile", False), "torch-compile-bf16": ("compile", True)}


def _use_persistent_cache() -> None:
    """Point inductor's on-disk cache into the lensengine cache (unless the user chose a place)."""
    from lensengine.engine.runners import cache_dir

    if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
        path = cache_dir() / "torch-inductor"
        path.mkdir(parents=True, exist_ok=True)
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(path)


@hookimpl
def make_runner(model, precision, threads):
    if precision not in TORCH_RUNNERS:
        return None
    mode, bf16 = TORCH_RUNNERS[precision]
    if mode == "compile":
        _use_persistent_cache()  # before torch's inductor reads it
    import numpy as np
    import torch

    from lensengine.training.export import load_torch_model
    from lensengine.training.networks import p_lens

    if threads:
        torch.set_num_threads(threads)
    net = load_torch_model(model.path, model.name).eval().to(memory_format=torch.channels_last)
    tta = "tta" in (getattr(model, "metadata", None) or {})  # `lensengine models tta`: the .pt is the bare network
    if tta:
        from lensengine.training.export import DihedralMean

        net = DihedralMean(net).eval()
    forward = net
    if mode == "compile":
        with warnings.catch_warnings():
            # torch 2.13's inductor import trips over torch's own deprecated torch.jit.script_method: not ours
            warnings.filterwarnings("ignore", message=r".*torch\.jit\.script_method", category=DeprecationWarning)
            import torch._inductor.compile_fx  # noqa: F401
        forward = torch.compile(net, dynamic=False)
    fixed: list[int] = []  # the batch size the compiled graph was made for (the first call's)

    def scores(t):
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = forward(t).float()
            return out if tta else p_lens(out)

    def run(x: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(x).contiguous(memory_format=torch.channels_last)
        if mode != "compile":
            return scores(t).numpy().astype(np.float32)
        if not fixed:
            fixed.append(len(x))
        size, out = fixed[0], []
        for lo in range(0, len(x), size):
            part = t[lo:lo + size]
            n = len(part)
            if n < size:  # pad to the compiled shape; the padding's scores are dropped
                part = torch.cat([part, part.new_zeros((size - n, *part.shape[1:]))])
                part = part.contiguous(memory_format=torch.channels_last)
            out.append(scores(part)[:n])
        return torch.cat(out).numpy().astype(np.float32)

    log.info("%s runs in torch (%s, %s) on the CPU", model.name, mode, "bf16" if bf16 else "fp32")
    return run
