"""Runners: the ways one model can be run, which of them are correct and faster here, and the choice.

A *runner* turns a model's prepared input into P(lens).  ONNX Runtime in fp32
(``ort-fp32``) is the portable reference every other runner is measured
against; the others trade exactness for speed on some hardware:

============================  ==============================================================
``ort-fp32``                  ONNX Runtime, fp32, the reference (and the CUDA/TensorRT path)
``ort-int8``                  ONNX Runtime on a statically quantized copy (int8 weights and
                              activations, QDQ), made once and cached by model SHA-256
``openvino-fp32``             OpenVINO on the CPU, fp32
``openvino-bf16``             OpenVINO, bf16 inference hint (only where the CPU has bf16)
``openvino-bf16-split``       the same, the first convolution's operands each split in two bf16
                              parts (:mod:`lensengine.engine.bf16split`): bf16's speed, fp32's
                              first layer, where bf16's error on these networks comes from
``openvino-bf16-split2``      only the input split in two parts, against bf16 weights rounded
                              with error compensation: two thirds of the split's first layer
``openvino-int8``             OpenVINO on the same quantized copy as ``ort-int8``
``torch-bf16``                torch bf16 autocast, channels-last, eager (``--precision bf16``)
``torch-compile-fp32``        ``torch.compile``d fp32, persistent compile cache
``torch-compile-bf16``        ``torch.compile``d bf16 autocast, persistent compile cache
============================  ==============================================================

The torch runners are plugins (the ``make_runner`` hook, answered by
:mod:`lensengine.plugins.torch_runner`); the engine never imports torch.

**Correct and faster, or not used.**  A runner other than the reference is
eligible for a model only where its largest |ΔP| against ``ort-fp32`` on a
fixed set of simulated cutouts is at most :data:`MAX_DELTA_P` *and* it scored
at least :data:`MIN_SPEEDUP` times faster than ``ort-fp32`` in the same
measurement.  Each runner also states the bound it is held to in the tests
(:attr:`RunnerKind.bound`: 1e-4 for the fp32 ones, 0.01 for bf16); the int8
ones claim none, because whether int8 keeps a network within 0.01 depends on
the network (on the shipped models it does not: docs/performance.md).  The measurements are a
*calibration*: per model SHA-256 and CPU instruction set
(:func:`cpu_signature`), each runner's img/s and max |ΔP|.
``benchmarks/bench_runners.py --save-calibration`` measures and writes one to
the user cache (:func:`user_calibration_path`); one measured on the
development machine ships in ``engine/data/runner_calibration.json``.
``--runner auto`` reads them (no start-up measurement, so choosing costs
milliseconds) and falls back to ``ort-fp32`` for a model or CPU nobody has
measured.

A run's choice is a string in :attr:`ChunkTask.precision`: one runner name
when every model uses the same, else ``per-model:NAME=RUNNER;...``
(:func:`encode_plan`).  :func:`runner_cards` turns it into the catalogue's
provenance (``PRECISN`` and one ``RUNNER<i>`` per model).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import importlib.util
import json
import logging
import os
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

__all__ = ["RunnerKind", "RUNNERS", "REFERENCE", "MAX_DELTA_P", "cpu_flags", "cpu_signature", "runner_problem",
           "available_runners", "build_runner", "choose_runners", "encode_plan", "decode_plan", "runner_for",
           "runner_cards", "uses_torch_weights", "measure", "load_calibration", "save_calibration",
           "user_calibration_path", "SHIPPED_CALIBRATION", "MIN_SPEEDUP", "cache_dir", "quantized_model", "eligible",
           "calibration_entries", "inputs_digest"]

# numpy is imported where it is used: the command line imports this module for --runner's choices
Runner = Callable[["np.ndarray"], "np.ndarray"]

REFERENCE = "ort-fp32"
#: the largest |ΔP(lens)| against ort-fp32 that a runner may show on the calibration cutouts to be used
MAX_DELTA_P = 0.01
#: how much faster than the reference a runner must have measured to be chosen
MIN_SPEEDUP = 1.1
#: legacy ``--precision`` spellings and the runner each one means
LEGACY = {"fp32": "ort-fp32", "bf16": "torch-bf16"}
PLAN_PREFIX = "per-model:"
SHIPPED_CALIBRATION = Path(__file__).with_name("data") / "runner_calibration.json"
#: bumped whenever the quantization recipe changes, so cached int8 files are remade
QUANT_VERSION = 1
#: instruction-set flags that decide which reduced-precision kernels a CPU has (the calibration key)
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile",
             "amx_int8", "amx_bf16", "avx512_fp16")


@dataclass(frozen=True)
class RunnerKind:
    """One way of running a model: its name, what it needs, and whether the torch weights run."""

    name: str
    summary: str
    modules: tuple[str, ...]     # Python modules it imports (checked without importing them)
    bound: float | None          # the max |ΔP| against ort-fp32 it is held to (tests); None: no claim, int8
    torch_weights: bool = False  # runs ``<model>.pt`` beside the ONNX file (through the make_runner hook)
    cpu_only: bool = False


RUNNERS: dict[str, RunnerKind] = {k.name: k for k in (
    RunnerKind("ort-fp32", "ONNX Runtime fp32 (reference)", ("onnxruntime",), 0.0),
    RunnerKind("ort-int8", "ONNX Runtime, static int8 QDQ copy", ("onnxruntime", "onnx"), None, cpu_only=True),
    RunnerKind("openvino-fp32", "OpenVINO CPU fp32", ("openvino",), 1e-4, cpu_only=True),
    RunnerKind("openvino-bf16", "OpenVINO CPU, bf16 hint", ("openvino",), MAX_DELTA_P, cpu_only=True),
    RunnerKind("openvino-bf16-split", "OpenVINO CPU, bf16 hint, first convolution split in two bf16 parts",
               ("openvino", "onnx"), MAX_DELTA_P, cpu_only=True),
    RunnerKind("openvino-bf16-split2", "OpenVINO CPU, bf16 hint, first convolution's input in two bf16 parts "
               "against error-compensated bf16 weights", ("openvino", "onnx"), MAX_DELTA_P, cpu_only=True),
    RunnerKind("openvino-int8", "OpenVINO CPU on the int8 QDQ copy", ("openvino", "onnx"), None, cpu_only=True),
    RunnerKind("torch-bf16", "torch bf16 autocast, channels-last, eager", ("torch",), MAX_DELTA_P, True, True),
    RunnerKind("torch-compile-fp32", "torch.compile fp32, channels-last", ("torch",), 1e-4, True, True),
    RunnerKind("torch-compile-bf16", "torch.compile bf16 autocast, channels-last", ("torch",), MAX_DELTA_P, True,
               True),
)}


#: the runners that run a split copy (engine/bf16split.py) and the parts of its first convolution's input
SPLIT_PARTS = {"openvino-bf16-split": 3, "openvino-bf16-split2": 2}


# --- the machine ------------------------------------------------------------------------

@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where it cannot be read, e.g. not Linux)."""
    try:
        with open("/proc/cpuinfo") as fh:
            line = next((ln for ln in fh if ln.startswith("flags")), "")
    except OSError:
        return frozenset()
    return frozenset(line.partition(":")[2].split())


def cpu_signature(flags: frozenset[str] | None = None) -> str:
    """The instruction-set part of the CPU that decides reduced-precision speed, e.g. ``avx2+fma``.

    Two machines with the same signature run the same kernels, so a calibration
    measured on one holds for the other (the ratios, not the absolute speed).
    """
    flags = cpu_flags() if flags is None else flags
    present = [f for f in ISA_FLAGS if f in flags]
    return "+".join(present) if present else "unknown"


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


@lru_cache(maxsize=1)
def _openvino_capabilities() -> tuple[str, ...]:
    import openvino as ov

    return tuple(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def runner_problem(name: str, model=None, device: str = "cpu") -> str | None:
    """Why runner ``name`` cannot run here (for ``model`` on ``device``), or None when it can."""
    kind = RUNNERS.get(LEGACY.get(name, name))
    if kind is None:
        return f"unknown runner {name!r} (known: {', '.join(RUNNERS)})"
    if kind.cpu_only and device not in ("cpu", "auto"):
        return f"{kind.name} runs on the CPU only, not --device {device}"
    missing = [m for m in kind.modules if not _importable(m)]
    if missing:
        return f"{kind.name} needs the Python package(s) {', '.join(missing)}"
    if kind.name.startswith("openvino-bf16") and "BF16" not in _openvino_capabilities():
        return f"{kind.name}: this CPU has no bf16 arithmetic (OpenVINO reports " \
               f"{', '.join(_openvino_capabilities())})"
    if kind.name in SPLIT_PARTS and model is not None:
        from lensengine.engine.bf16split import split_path, split_problem

        parts = SPLIT_PARTS[kind.name]
        # a split copy of this very file in the cache was rewritten once, so it can be: no need to load onnx
        # (0.46 s of a run's start-up on 2 cores) and the model to check again
        cached = split_path(_model_sha(model), cache_dir() / "runners", parts).is_file()
        problem = None if cached else split_problem(str(model.path), parts)
        if problem:
            return f"{kind.name} cannot rewrite {Path(model.path).name}: {problem}"
    if kind.torch_weights and model is not None and not Path(model.path).with_suffix(".pt").is_file():
        return f"{kind.name} runs the torch weights {Path(model.path).with_suffix('.pt')}, which are missing"
    return None


def available_runners(model=None, device: str = "cpu") -> list[str]:
    """The runners that can run here (packages installed, CPU capable), reference first."""
    return [name for name in RUNNERS if runner_problem(name, model, device) is None]


# --- the cache ----------------------------------------------------------------------------

def cache_dir() -> Path:
    """``$LENSENGINE_CACHE`` or ``$XDG_CACHE_HOME/lensengine`` (``~/.cache/lensengine``): quantized copies, calibration."""
    root = os.environ.get("LENSENGINE_CACHE")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lensengine"


def user_calibration_path() -> Path:
    return cache_dir() / "runners" / "calibration.json"


def _model_sha(model) -> str:
    if model.sha256:
        return model.sha256
    from lensengine.engine.models import file_sha256

    return file_sha256(model.path)


# --- building runners -----------------------------------------------------------------------

def _synthetic_calibration_bands(n: int = 32, seed: int = 20261201) -> dict:
    """A deterministic set of survey-like cutouts for int8 calibration (no simulator needed).

    Each cutout: sky noise, an elliptical galaxy of random size, position
    angle and brightness, and in half of them a partial ring (an arc).  Only
    the activation ranges are taken from it; whether the quantized model is
    correct is measured separately, on cutouts from the real simulator.
    """
    import numpy as np

    from lensengine.catalogs.vocabulary import BANDS

    rng = np.random.default_rng(seed)
    out = {}
    params = rng.uniform(size=(n, 6))
    for band in BANDS:
        size = 200 if band == "VIS" else 66
        scale = 0.1 if band == "VIS" else 0.3
        yy, xx = (np.mgrid[:size, :size] - (size - 1) / 2) * scale
        sky = rng.gamma(2.0, 3.0 if band == "VIS" else 40.0, (n, size, size)).astype(np.float32)
        imgs = np.empty((n, size, size), np.float32)
        for i, (a, q, pa, amp, ring, arc) in enumerate(params):
            c, s = np.cos(pa * np.pi), np.sin(pa * np.pi)
            u, v = c * xx + s * yy, (-s * xx + c * yy) / (0.4 + 0.6 * q)
            r = np.hypot(u, v)
            galaxy = (50 + 950 * amp) * np.exp(-r / (0.2 + 0.8 * a))
            lensed = 0.0
            if ring > 0.5:
                radius = 0.8 + 1.5 * arc
                lensed = 300 * amp * np.exp(-0.5 * ((np.hypot(xx, yy) - radius) / 0.12) ** 2) \
                    * (np.cos(np.arctan2(yy, xx) - 6.283 * arc) > -0.2)
            imgs[i] = sky[i] + galaxy + lensed
        out[band] = imgs
    return out


def calibration_inputs(model, n: int = 32) -> "np.ndarray":
    """``model``'s inputs (N, C, H, W) for ``n`` of :func:`_synthetic_calibration_bands` through the engine's
    preprocessing: what the int8 copies' activation ranges and the two-part split's weight rounding are set on."""
    from lensengine.engine.preprocess import Preprocessor

    bands = _synthetic_calibration_bands(n)
    return Preprocessor([model.as_spec()])({b: bands[b] for b in model.bands}, n).inputs[model.name]


def quantized_model(model) -> Path:
    """The statically quantized (int8 QDQ) copy of ``model``, made on first use and cached.

    Cached under :func:`cache_dir` by the model's SHA-256, the recipe version
    and the ONNX Runtime version, so the same model always gets the same copy.
    Calibration inputs: :func:`_synthetic_calibration_bands` through the
    engine's own preprocessing.  Weights per output channel (int8, symmetric),
    activations per tensor (uint8).
    """
    import onnxruntime as ort

    sha = _model_sha(model)
    path = cache_dir() / "runners" / f"{sha[:20]}-int8-q{QUANT_VERSION}-ort{ort.__version__}.onnx"
    if path.is_file():
        return path
    x = calibration_inputs(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + f".tmp-{os.getpid()}.onnx")
    try:
        quantize_qdq(model.path, tmp, x, batch=8)
        os.replace(tmp, path)  # atomic: concurrent workers never see half a file
    finally:
        tmp.unlink(missing_ok=True)
    log.info("%s: int8 copy made at %s", model.name, path)
    return path


def quantize_qdq(src, dst, calibration, *, batch: int = 8, nodes_to_exclude=(), activation_type: str = "QUInt8",
                 weight_type: str = "QInt8", calibrate_method: str = "MinMax", **options) -> None:
    """Write ``src`` (ONNX) statically quantized to ``dst``: QDQ format, weights per output channel.

    ``calibration`` is the prepared network input the activation ranges are taken from, ``batch`` rows at
    a time; the type and method names are ONNX Runtime's (``QuantType``, ``CalibrationMethod``), and
    ``options`` go to ``quantize_static`` as they are (``reduce_range``, ``extra_options``).  The engine's
    int8 copy uses the defaults; ``benchmarks/bench_runners.py`` compares other recipes through the same call.
    """
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class _Batches(CalibrationDataReader):
        def __init__(self):
            self._it = iter([{"cutout": calibration[i:i + batch]} for i in range(0, len(calibration), batch)])

        def get_next(self):
            return next(self._it, None)

    dst = Path(dst)
    pre = dst.with_name(dst.stem + f".pre-{os.getpid()}.onnx")
    try:
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        excluded = list(nodes_to_exclude(str(pre))) if callable(nodes_to_exclude) else list(nodes_to_exclude)
        quantize_static(str(pre), str(dst), _Batches(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=getattr(QuantType, activation_type),
                        weight_type=getattr(QuantType, weight_type),
                        calibrate_method=getattr(CalibrationMethod, calibrate_method),
                        nodes_to_exclude=excluded, **options)
    finally:
        pre.unlink(missing_ok=True)


def _ort_runner(path: str, model, device: str, threads: int) -> Runner:
    from lensengine.engine.models import INPUT_NAME, OUTPUT_NAME
    from lensengine.engine.sessions import get_session

    sess = get_session(path, device, threads, model.name)
    return lambda x: sess.run([OUTPUT_NAME], {INPUT_NAME: x})[0]


def _openvino_runner(path: str, hint: str, threads: int, bf16_input: bool = False) -> Runner:
    """An OpenVINO CPU model; one infer request per thread (requests are not thread-safe).

    Threads are not pinned to cores: with pinning, the two one-thread lanes of a worker
    (:func:`lensengine.engine.scoring.split_lanes`) landed on the same core and the seven networks scored
    62 cutouts/s against 117 in one lane; unpinned, two lanes score 119–120 (stop 33, 2 cores).

    ``bf16_input``: the model's first input is declared a bf16 tensor, and ``run`` takes its bit patterns
    (uint16, as :func:`lensengine.engine.bf16split.split_input_bits` makes them).
    """
    import numpy as np
    import openvino as ov

    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": hint, "ENABLE_CPU_PINNING": False}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    core = ov.Core()
    model = path
    if bf16_input:
        prep = ov.preprocess.PrePostProcessor(core.read_model(path))
        prep.input(0).tensor().set_element_type(ov.Type.bf16)
        model = prep.build()
    compiled = core.compile_model(model, "CPU", config)
    _first_inference(compiled, bf16_input)
    local = threading.local()

    def run(x):
        req = getattr(local, "req", None)
        if req is None:
            req = local.req = compiled.create_infer_request()
        return np.array(req.infer({0: _bf16_tensor(x) if bf16_input else x})[0], dtype=np.float32, copy=True)

    return run


def _first_inference(compiled, bf16_input: bool = False) -> None:
    """Run ``compiled`` once on one zero input, in the thread that built it, before any lane calls it.

    OpenVINO's Python binding initialises C++ function-local statics on its first inference, and one
    of those initialisers waits for the GIL while holding the static's guard.  Two lanes making their
    first calls at once could then deadlock: one holds the guard and waits for the GIL, the other
    holds the GIL and waits for the guard.  A worker stopped that way uses no CPU until Dask's
    ``worker-ttl`` replaces it (a run took 620 s instead of 15, stop 35; a stalled worker caught with
    ``py-spy dump --native`` in stop 37 showed exactly that).  With a 1-µs GIL switch interval and a busy
    Python thread, 11 of 12 fresh processes making three first calls at once hung; after one call in one
    thread the statics exist, and none of 12 did (``tests/engine/test_runners.py``).
    """
    import numpy as np

    port = compiled.input(0)
    shape = [1 if dim.is_dynamic else dim.get_length() for dim in port.get_partial_shape()]
    zeros = np.zeros(shape, np.uint16 if bf16_input else port.get_element_type().to_dtype())
    compiled.create_infer_request().infer({0: _bf16_tensor(zeros) if bf16_input else zeros})


def _bf16_tensor(bits):
    """bf16 bit patterns (uint16) as an OpenVINO bf16 tensor over the same memory (NumPy has no bf16 type)."""
    import numpy as np
    import openvino as ov

    bits = np.ascontiguousarray(bits, np.uint16)
    return ov.Tensor(bits, bits.shape, ov.Type.bf16)


def build_runner(model, runner: str, device: str = "auto", threads: int = 0) -> Runner:
    """``run(x) -> p`` for ``model`` with runner ``runner`` (a name of :data:`RUNNERS` or a legacy precision).

    Raises ``ValueError`` naming the model and the runner when it cannot run here.
    """
    name = LEGACY.get(runner, runner)
    if name == REFERENCE:
        return _ort_runner(str(model.path), model, device, threads)
    problem = runner_problem(name, model, device)
    if problem:
        raise ValueError(f"model {model.name} ({model.path}): runner {name} cannot run here: {problem}")
    if name == "ort-int8":
        return _ort_runner(str(quantized_model(model)), model, "cpu", threads)
    if name in SPLIT_PARTS:
        from lensengine.engine.bf16split import split_input_bits, split_model

        parts = SPLIT_PARTS[name]
        path = split_model(model, _model_sha(model), cache_dir() / "runners", parts, lambda: calibration_inputs(model))
        run = _openvino_runner(str(path), "bf16", threads, bf16_input=True)
        return lambda x: run(split_input_bits(x, parts))
    if name.startswith("openvino-"):
        precision = name.split("-", 1)[1]
        path = quantized_model(model) if precision == "int8" else model.path
        return _openvino_runner(str(path), "bf16" if precision == "bf16" else "f32", threads)
    from lensengine.plugins.manager import get_plugin_manager

    made = get_plugin_manager().hook.make_runner(model=model, precision=name, threads=threads)
    if made is None:
        raise ValueError(f"no plugin runs model {model.name} ({model.path}) with runner {name!r} (the "
                         "make_runner hook); the torch runners need the training extra: "
                         "pip install 'lensengine[training]'")
    return made


# --- plans: one runner per model, as one string ------------------------------------------------

def encode_plan(choice: dict[str, str]) -> str:
    """One string for a choice of runner per model name: the runner when all agree, else ``per-model:...``."""
    runners = set(choice.values())
    if len(runners) == 1:
        return runners.pop()
    return PLAN_PREFIX + ";".join(f"{m}={r}" for m, r in choice.items())


def decode_plan(plan: str) -> dict[str, str] | str:
    """The inverse of :func:`encode_plan`: a dict for a per-model plan, else the one runner name."""
    if not plan.startswith(PLAN_PREFIX):
        return plan
    out = {}
    for item in plan[len(PLAN_PREFIX):].split(";"):
        model, sep, runner = item.partition("=")
        if not sep or not model or not runner:
            raise ValueError(f"malformed runner plan {plan!r}: item {item!r} is not MODEL=RUNNER")
        out[model] = runner
    return out


def runner_for(plan: str, model_name: str) -> str:
    """The runner ``plan`` gives model ``model_name`` (legacy ``fp32``/``bf16`` mapped to runner names)."""
    decoded = decode_plan(plan)
    if isinstance(decoded, str):
        return LEGACY.get(decoded, decoded)
    if model_name not in decoded:
        raise ValueError(f"runner plan {plan!r} names no runner for model {model_name}")
    return LEGACY.get(decoded[model_name], decoded[model_name])


def uses_torch_weights(plan: str, model_name: str) -> bool:
    """Whether ``plan`` runs ``model_name`` from its torch weights (so they belong in the fingerprint)."""
    kind = RUNNERS.get(runner_for(plan, model_name))
    return bool(kind and kind.torch_weights)


def runner_cards(plan: str, models) -> dict[str, tuple[object, str]]:
    """Provenance cards of a run's runners: ``PRECISN`` (the plan, or ``per-model``) and ``RUNNER<i>`` per model."""
    short = plan if len(plan) <= 40 else "per-model"
    cards: dict[str, tuple[object, str]] = {"PRECISN": (short, "runner(s): see RUNNER<i>")}
    for i, m in enumerate(models, start=1):
        cards[f"RUNNER{i}"] = (runner_for(plan, m.name), f"runner of model {i}")
    return cards


# --- calibration and the choice ---------------------------------------------------------------

def _calibration_key(sha: str, signature: str) -> str:
    return f"{sha}|{signature}"


def load_calibration(paths=None) -> dict[str, dict]:
    """Calibration entries from the shipped file, then the user's (the user's win where both measured).

    An unreadable file is logged and skipped: the choice then falls back to
    the reference, it never fails a run.
    """
    entries: dict[str, dict] = {}
    for path in paths if paths is not None else (SHIPPED_CALIBRATION, user_calibration_path()):
        path = Path(path)
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text())
            if data.get("kind") != "lensengine-runner-calibration":
                raise ValueError("not a lensengine runner calibration")
            entries.update(data["entries"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("runner calibration %s ignored: %s", path, exc)
    return entries


def save_calibration(results: dict[str, dict], path: Path | None = None, *, only_models=None) -> Path:
    """Merge ``results`` (key -> entry, as :func:`measure` makes) into the calibration file at ``path``.

    With ``only_models`` (model files or entries) the file keeps the entries of those models alone: the
    shipped calibration is rewritten this way, so that a network no longer shipped leaves no entry behind.
    """
    path = Path(path) if path is not None else user_calibration_path()
    data = {"kind": "lensengine-runner-calibration", "max_delta_p": MAX_DELTA_P, "entries": {}}
    if path.is_file():
        old = json.loads(path.read_text())
        if old.get("kind") == "lensengine-runner-calibration":
            data["entries"] = old.get("entries", {})
    data["entries"].update(results)
    if only_models is not None:
        keep = {_model_sha(m) for m in only_models}
        dropped = [k for k in data["entries"] if k.split("|", 1)[0] not in keep]
        for key in dropped:
            del data["entries"][key]
        if dropped:
            log.info("calibration %s: %d entries of models not listed dropped", path, len(dropped))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path


def eligible(entry: dict, reference_rate: float) -> bool:
    """A measured runner counts: correct (max |ΔP| within :data:`MAX_DELTA_P`) and faster than the reference
    by at least :data:`MIN_SPEEDUP` (a smaller gain is within the noise of a shared machine)."""
    return (entry.get("max_delta_p") is not None and entry["max_delta_p"] <= MAX_DELTA_P
            and entry.get("img_s", 0) > reference_rate * MIN_SPEEDUP)


def _auto_runner(model, device: str, calibration: dict[str, dict]) -> str:
    if device not in ("cpu", "auto"):
        return REFERENCE
    entry = calibration.get(_calibration_key(_model_sha(model), cpu_signature()))
    if not entry:
        log.info("%s: no runner calibration for this CPU (%s): ort-fp32 (measure one with "
                 "benchmarks/bench_runners.py --save-calibration)", model.name, cpu_signature())
        return REFERENCE
    runners = entry.get("runners", {})
    ref = runners.get(REFERENCE, {}).get("img_s", 0.0)
    best, best_rate = REFERENCE, ref
    missed = None  # the fastest correct runner that a missing package keeps out
    for name, measured in runners.items():
        if name == REFERENCE or name not in RUNNERS or not eligible(measured, ref):
            continue
        if measured["img_s"] <= best_rate:
            continue  # asked only of a faster runner: a split runner's check may load onnx
        if runner_problem(name, model, device) is None:
            best, best_rate = name, measured["img_s"]
            continue
        missing = [m for m in RUNNERS[name].modules if not _importable(m)]
        if missing and measured["img_s"] > (missed or ("", 0))[1]:
            missed = (name, measured["img_s"], ", ".join(missing))
    if missed and missed[1] > best_rate:
        packages = missed[2]
        how = "pip install 'lensengine[fast]'" if packages == "openvino" else f"pip install {packages}"
        _hint_once(f"{model.name}: {missed[0]} was measured {missed[1] / ref:.2f}x ONNX Runtime fp32 and as "
                   f"correct on this CPU, but the Python package(s) {packages} are not installed ({how}); "
                   f"running {best}")
    return best


_HINTED: set[str] = set()


def _hint_once(message: str) -> None:
    """Log ``message`` at warning level once per process (a run asks for each model's runner more than once)."""
    if message not in _HINTED:
        _HINTED.add(message)
        log.warning("%s", message)


def choose_runners(models, requested: str = "auto", device: str = "auto", calibration=None) -> dict[str, str]:
    """The runner of each model: ``requested`` for all, or with ``auto`` the fastest correct one measured here.

    Raises ``ValueError`` when a forced runner cannot run a model here (the message says why).
    """
    requested = LEGACY.get(requested, requested)
    if requested != "auto":
        for m in models:
            problem = runner_problem(requested, m, device)
            if problem:
                raise ValueError(f"--runner {requested} cannot run model {m.name}: {problem}")
        return {m.name: requested for m in models}
    calibration = load_calibration() if calibration is None else calibration
    return {m.name: _auto_runner(m, device, calibration) for m in models}


def measure(model, inputs, runners=None, *, batch: int = 32, threads: int = 0, repeats: int = 2,
            min_seconds: float = 1.0, extra: dict[str, Callable[[], Runner]] | None = None) -> dict:
    """Measure each runner on ``inputs`` (a model's prepared input): img/s and max |ΔP| against ort-fp32.

    Returns a calibration entry ``{"model", "sha256", "cpu", "n", "date", "runners": {name: {...}}}``.
    A runner that cannot run or fails is recorded with its reason (``error``)
    and no rate, so it is never chosen.  Timing: one warm-up call each, then
    ``repeats`` rounds in which the runners take turns, each timing passes over
    ``inputs`` for at least ``min_seconds`` (a machine whose speed drifts then
    slows them all alike); a runner's rate is its best round.
    ``extra`` maps more names to functions that build a runner (candidate
    recipes a benchmark compares in the same run; :func:`_auto_runner` ignores
    names that are not runners, so they are never chosen).
    """
    import time

    import numpy as np

    names = list(runners) if runners is not None else list(RUNNERS)
    if REFERENCE in names:
        names.remove(REFERENCE)
    names.insert(0, REFERENCE)
    extra = dict(extra or {})
    names += [n for n in extra if n not in names]
    results: dict[str, dict] = {}
    built: dict[str, tuple[Runner, float]] = {}
    for name in names:
        problem = None if name in extra else runner_problem(name, model, "cpu")
        if problem:
            results[name] = {"error": problem}
            continue
        try:
            t0 = time.perf_counter()
            run = extra[name]() if name in extra else build_runner(model, name, "cpu", threads)
            run(np.ascontiguousarray(inputs[:batch]))  # warm-up (and compilation)
            built[name] = (run, time.perf_counter() - t0)
        except Exception as exc:  # noqa: BLE001 - a failing runner is recorded, not fatal
            results[name] = {"error": f"{type(exc).__name__}: {exc}"}

    def one_pass(run):
        return np.concatenate([np.asarray(run(np.ascontiguousarray(inputs[i:i + batch]))).reshape(-1)
                               for i in range(0, len(inputs), batch)])

    # the runners take turns, pass by pass, so that a machine whose speed drifts slows them all alike
    best = dict.fromkeys(built, float("inf"))
    scores: dict[str, np.ndarray] = {}
    for _ in range(max(1, repeats)):
        for name, (run, _setup) in list(built.items()):
            try:
                t0, passes = time.perf_counter(), 0
                while True:
                    scores[name] = one_pass(run)
                    passes += 1
                    if time.perf_counter() - t0 >= min_seconds:
                        break
                best[name] = min(best[name], (time.perf_counter() - t0) / passes)
            except Exception as exc:  # noqa: BLE001 - a failing runner is recorded, not fatal
                results[name] = {"error": f"{type(exc).__name__}: {exc}"}
                del built[name]
    reference = scores.get(REFERENCE)
    for name in names:
        if name not in built:
            continue
        p = scores[name]
        if reference is None:
            reference = p
        dp = np.abs(p.astype(np.float64) - reference)
        results[name] = {"img_s": len(inputs) / best[name], "max_delta_p": float(np.nanmax(dp)),
                         "frac_over_bound": float(np.mean(dp > MAX_DELTA_P)), "setup_s": built[name][1],
                         "nonfinite": int((~np.isfinite(p)).sum())}
        if results[name]["nonfinite"]:
            results[name]["max_delta_p"] = None  # not a probability: never eligible
    return {"model": model.name, "sha256": _model_sha(model), "cpu": cpu_signature(), "n": int(len(inputs)),
            "batch": batch, "threads": threads,
            "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"),
            "runners": {name: results[name] for name in names}}


def calibration_entries(measured: list[dict]) -> dict[str, dict]:
    """Key :func:`measure`'s results for :func:`save_calibration` (model SHA-256 and CPU signature)."""
    return {_calibration_key(e["sha256"], e["cpu"]): e for e in measured}


def inputs_digest(x) -> str:
    """A short digest of a calibration input set (recorded so a calibration names what it measured)."""
    import numpy as np

    return hashlib.sha256(np.ascontiguousarray(x).tobytes()).hexdigest()[:16]
