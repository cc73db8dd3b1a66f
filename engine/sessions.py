"""ONNX Runtime sessions, built once per worker process from file paths.

Sessions do not pickle, so tasks carry model file paths and each Dask worker
process builds its sessions on first use and keeps them in a per-process
cache.  The execution provider is chosen here: CUDA (and TensorRT where its
libraries load) when a GPU is present, the CPU otherwise; the provider that
actually runs is reported, because ONNX Runtime silently falls back to the CPU
when the CUDA libraries are missing.

A plugin may change the providers per model (the ``prepare_session`` hook), so
the model's name is part of the cache key: a session first built without a
name (or for another name) is never handed to a later caller that names its
model, and the hook sees the name of every session the engine runs.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
from functools import lru_cache

log = logging.getLogger(__name__)

__all__ = ["choose_providers", "get_session", "gpu_available", "clear_sessions"]

_SESSIONS: dict[tuple, object] = {}
_LOCK = threading.Lock()


def _loads(*names: str) -> bool:
    for name in names:
        try:
            ctypes.CDLL(name)
            return True
        except OSError:
            continue
    return False


@lru_cache(maxsize=1)
def gpu_available() -> bool:
    """A CUDA GPU and its driver are present (``/dev/nvidia*`` and ``libcuda`` load)."""
    return any(os.path.exists(f"/dev/nvidia{i}") for i in range(8)) and _loads("libcuda.so.1", "libcuda.so")


def choose_providers(device: str = "auto") -> list[str]:
    """Execution providers for ``device`` in ``auto``, ``cpu``, ``cuda``, ``tensorrt``."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device not in ("auto", "cuda", "tensorrt"):
        raise ValueError(f"device must be auto, cpu, cuda or tensorrt, not {device!r}")
    gpu = "CUDAExecutionProvider" in available and gpu_available()
    if device in ("cuda", "tensorrt") and not gpu:
        raise RuntimeError(
            f"--device {device} asked for a GPU but none is usable here (ONNX Runtime providers: {available}; "
            f"GPU present: {gpu_available()}); install onnxruntime-gpu on a machine with an NVIDIA driver"
        )
    if not gpu:
        return ["CPUExecutionProvider"]
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    trt = "TensorrtExecutionProvider" in available and _loads("libnvinfer.so.10", "libnvinfer.so.8", "libnvinfer.so")
    if device == "tensorrt" or (device == "auto" and trt):
        providers.insert(0, "TensorrtExecutionProvider")
    return providers


_ARENA: list[bool] = []  # [registered?], decided once per process


def _shared_cpu_arena(ort) -> bool:
    """Register one CPU memory arena for every session of this process (once); False if ONNX Runtime cannot.

    Each session otherwise keeps its own arena at the high-water mark of its
    largest batch, and the seven networks' arenas add up (1.7 GB at batch 32,
    most of it the 200-px pair's activations); one shared arena holds only the
    largest single need (about 0.5 GB), and keeps it, so no batch pays for
    fresh pages as it would with the arena turned off.  Called with ``_LOCK`` held.
    """
    if not _ARENA:
        try:
            info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
            # every setting ONNX Runtime's default: no limit, power-of-two growth (measured: 0.67 GB peak for the
            # seven at batch 32 against 1.2 GB when it grows by what is asked for, which fragments)
            ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, -1, -1, -1))
            _ARENA.append(True)
        except Exception as exc:  # noqa: BLE001 - an older or GPU-only build: per-session arenas still work
            log.info("no shared ONNX Runtime CPU arena (%s): each session keeps its own", exc)
            _ARENA.append(False)
    return _ARENA[0]


def get_session(path: str, device: str = "auto", threads: int = 0, model_name: str = ""):
    """The cached ONNX Runtime session for ``path`` as model ``model_name`` in this process (built on first use)."""
    key = (str(path), device, threads, model_name)
    with _LOCK:
        sess = _SESSIONS.get(key)
        if sess is not None:
            return sess
        import onnxruntime as ort

        providers = choose_providers(device)
        try:
            from lensengine.plugins.manager import get_plugin_manager

            override = get_plugin_manager().hook.prepare_session(model_name=model_name, providers=list(providers))
            if override:
                providers = list(override)
        except ImportError:  # pragma: no cover - plugins are part of the package
            pass
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if _shared_cpu_arena(ort):
            opts.add_session_config_entry("session.use_env_allocators", "1")
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        # ONNX Runtime's pool threads otherwise spin between operators, holding their cores: the thread that
        # reads and preprocesses the next sub-batch, the Dask worker and the other worker processes then wait
        # for a core (a 1 024-cutout run measured 129 s without spinning against 177 s with it, shared machine)
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        sess = ort.InferenceSession(str(path), opts, providers=providers)
        used = sess.get_providers()
        if providers[0] != "CPUExecutionProvider" and used[0] == "CPUExecutionProvider":
            log.warning("%s: asked for %s but ONNX Runtime fell back to the CPU", model_name or path, providers[0])
        log.info("%s runs on %s", model_name or path, used[0])
        _SESSIONS[key] = sess
        return sess


def session_provider(path: str, device: str = "auto", threads: int = 0, model_name: str = "") -> str:
    """The provider the cached session for ``path`` (as ``model_name``) actually uses."""
    return get_session(path, device, threads, model_name).get_providers()[0]


def clear_sessions() -> None:
    with _LOCK:
        _SESSIONS.clear()
