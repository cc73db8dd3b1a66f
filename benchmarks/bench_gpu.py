"""GPU benchmark in one call (issue 13, item 5): per model and end to end, time-boxed, JSON out.

    python benchmarks/bench_gpu.py                      # on a CUDA machine: builds its own store, ~7 min at most
    python benchmarks/bench_gpu.py --tiles survey.zarr  # measure on an existing store instead
    python benchmarks/bench_gpu.py --dry-run            # the same code path on the CPU, tiny sizes (the test)

What it measures, in this order, each section inside the time box (what does
not fit is recorded as skipped, never silently dropped):

1. the machine: GPU, driver-visible providers, versions;
2. the zarr read rate of the store (GB/s of pixels, every chunk read once);
3. per model, ONNX Runtime on the CUDA execution provider, then the same
   provider with ``prefer_nhwc`` (cuDNN's channels-last kernels), then that on
   the networks with their convolutions' channels padded to multiples of 8
   (``pad_channels.py``: the same function in the shapes tensor cores take;
   needs the ``onnx`` package), then the TensorRT provider (when its libraries
   load; engines cached in a temporary folder), each with a batch sweep: img/s
   per batch size and max |ΔP| against ONNX Runtime fp32 on the CPU on a fixed
   set of cutouts; ``best_variant`` names, per model, the fastest of them within
   |ΔP| ≤ 0.01 and the bound that choice would give;
4. per model, torch on CUDA in bf16 autocast, channels-last, cuDNN's autotuner on
   (eager; with ``--compile OU-200,...`` also ``torch.compile`` for those models), the same sweep and |ΔP|;
5. the seven networks one after another on 4 096 cutouts in the engine's GPU
   call sizes: the ensemble's model-only rate, measured directly;
6. end to end: ``lensengine run`` (the real engine: Dask, store reads,
   preprocessing, catalogue) on the store with ``--device cuda`` and a GPU
   run's default sub-batch (``--e2e-batch`` to change), for each of ``--workers``; the ratio to
   the model-only bound of the full ensemble (step 3's best rates), and
   the goal (20 000 cutouts/s for the full ensemble on one H200);
7. the engine's ceiling on this host (``bench_ceiling.py``): the same run with networks that cost nothing, on
   the CPU, with one worker and the most workers of step 6: the CPU time per cutout outside the networks.

The JSON is rewritten after each section, so a call cut short keeps what it
measured.  Measured on one H200 in stop 38: docs/performance.md, "The GPU benchmark".

It needs no network: the store is generated here (survey-like noise with a
source; throughput does not depend on content) unless ``--tiles`` names one.
With ``--dry-run`` everything runs on the CPU (CPU provider standing in for
CUDA, torch on the CPU) with a few dozen cutouts, so a CPU-only CI proves the
script runs before anyone spends GPU time on it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).with_name("results_gpu.json")
GOAL_CUTOUTS_PER_S = 20_000


class TimeBox:
    """The wall-clock budget of the whole call; each section asks what is left before it starts work."""

    def __init__(self, seconds: float):
        self.t0, self.seconds = time.perf_counter(), seconds

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.t0)

    def over(self, reserve: float = 0.0) -> bool:
        return self.left() <= reserve


def make_store(path: Path, n: int, chunk: int, seed: int = 0) -> Path:
    """``n`` survey-like noise cutouts with a bright source, written quickly (one noise block reused per chunk)."""
    from lensengine.catalogs.store import CutoutBatch, SurveyStore

    rng = np.random.default_rng(seed)
    store = SurveyStore.create(path, survey="bench-gpu", chunk_size=chunk, overwrite=True)
    vis0 = rng.gamma(2.0, 3.0, (chunk, 200, 200)).astype(np.float32)
    nisp0 = rng.gamma(2.0, 40.0, (chunk, 3, 66, 66)).astype(np.float32)
    vis0[:, 95:105, 95:105] += 200
    nisp0[:, :, 31:35, 31:35] += 2000
    for lo in range(0, n, chunk):
        k = min(chunk, n - lo)
        shift = lo // chunk % chunk  # cheap variety between chunks without new random draws
        vis, nisp = np.roll(vis0[:k], shift, axis=0), np.roll(nisp0[:k], shift, axis=0)
        store.append("T0", CutoutBatch(object_id=np.arange(lo, lo + k), ra=np.full(k, 150.0) + lo * 1e-5,
                                       dec=np.full(k, 2.0), vis=vis, nisp=nisp, flags=np.zeros(k, np.uint32)))
    return path


def machine(dry_run: bool) -> dict:
    info = {"python": platform.python_version(), "cpus": os.cpu_count(), "dry_run": dry_run}
    try:
        import onnxruntime as ort

        info["onnxruntime"] = ort.__version__
        info["ort_providers"] = ort.get_available_providers()
    except ImportError:
        info["onnxruntime"] = None
    try:
        import torch

        info["torch"] = torch.__version__
        info["cuda"] = torch.cuda.is_available()
        if info["cuda"]:
            info["gpu"] = torch.cuda.get_device_name(0)
            info["gpu_memory_gb"] = torch.cuda.get_device_properties(0).total_memory / 2**30
    except ImportError:
        info["torch"] = None
    from lensengine.engine.sessions import gpu_available

    info["gpu_available"] = gpu_available()
    if info["gpu_available"]:
        import subprocess

        query = ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm", "--format=csv,noheader"]
        try:
            info["nvidia_smi"] = subprocess.run(query, capture_output=True, text=True, timeout=20,
                                                check=False).stdout.strip()
        except (OSError, subprocess.SubprocessError) as exc:
            info["nvidia_smi"] = f"not run: {exc}"
    return info


def read_rate(store_path: Path, box: TimeBox, limit_s: float) -> dict:
    """Pixels read per second from the store (every chunk once, in order, until the section's time is up)."""
    from lensengine.catalogs.store import SurveyStore

    store = SurveyStore.open(store_path)
    nbytes, n, t0 = 0, 0, time.perf_counter()
    for tile in store.tiles:
        for index in range(len(store.chunk_slices(tile))):
            if time.perf_counter() - t0 > limit_s or box.over():
                break
            batch = store.read_chunk(tile, index)
            nbytes += sum(a.nbytes for a in (batch.vis, batch.nisp) if a is not None)
            n += len(batch)
    dt = time.perf_counter() - t0
    return {"cutouts": n, "gb": nbytes / 1e9, "seconds": dt, "gb_per_s": nbytes / 1e9 / dt if dt else 0.0,
            "cutouts_per_s": n / dt if dt else 0.0, "complete": n == store.total_cutouts()}


def sweep(run, x: np.ndarray, batches: list[int], box: TimeBox, per_point_s: float, sync=None) -> dict:
    """img/s of ``run`` at each batch size: one warm-up call, then calls for ``per_point_s`` (at least 3)."""
    out = {}
    for b in batches:
        if box.over():
            out[str(b)] = {"skipped": "time box"}
            continue
        xb = np.ascontiguousarray(np.resize(x, (b, *x.shape[1:])))  # repeat the set up to the batch size
        try:
            run(xb)
            if sync:
                sync()
            calls, t0 = 0, time.perf_counter()
            while calls < 3 or time.perf_counter() - t0 < per_point_s:
                run(xb)
                calls += 1
            if sync:
                sync()
            dt = time.perf_counter() - t0
        except Exception as exc:  # noqa: BLE001 - out of memory at a large batch is a result, not a crash
            out[str(b)] = {"error": f"{type(exc).__name__}: {str(exc)[:200]}"}
            continue
        out[str(b)] = {"img_s": calls * b / dt}
    return out


def _print_best(prefix: str, per_model: dict) -> None:
    """One line per model of a section: its best rate, batch and max |ΔP|, or why it has none."""
    for name, r in per_model.items():
        print(f"{prefix} {name:7s} " + (f"best {r['best_img_s']:9.0f} img/s at batch {r['best_batch']}, "
              f"max|dP| {r['max_delta_p']:.1e}" if "best_img_s" in r else str(r)), flush=True)


def _best(points: dict) -> tuple[int, float]:
    rated = [(int(b), p["img_s"]) for b, p in points.items() if "img_s" in p]
    return max(rated, key=lambda t: t[1]) if rated else (0, 0.0)


def ort_section(entries, inputs, reference, providers_list, batches, box, per_point_s, trt_cache: Path,
                paths: dict[str, dict[str, Path]] | None = None) -> dict:
    """ONNX Runtime per model and provider list (CUDA, TensorRT): batch sweep and max |ΔP|.  ``paths`` gives a
    label its own model files (the padded copies), by model name; a label it does not name runs the models."""
    import onnxruntime as ort

    results = {}
    for label, providers in providers_list:
        results[label] = {}
        for e in entries:
            if box.over(reserve=60):
                results[label][e.name] = {"skipped": "time box"}
                continue
            path = (paths or {}).get(label, {}).get(e.name, e.path)
            opts = ort.SessionOptions()
            opts.log_severity_level = 3
            provs = providers
            if providers[0] == "TensorrtExecutionProvider":
                shape = f"cutout:{{}}x{len(e.bands)}x{e.stamp}x{e.stamp}"
                provs = [("TensorrtExecutionProvider", {
                    "trt_engine_cache_enable": True, "trt_engine_cache_path": str(trt_cache),
                    "trt_profile_min_shapes": shape.format(1), "trt_profile_opt_shapes": shape.format(max(batches)),
                    "trt_profile_max_shapes": shape.format(max(batches)), "trt_fp16_enable": True}),
                    *providers[1:]]
            t0 = time.perf_counter()
            try:
                sess = ort.InferenceSession(str(path), opts, providers=provs)
                run = lambda x, s=sess: s.run(["p_lens"], {"cutout": x})[0]  # noqa: E731
                p = np.concatenate([run(inputs[e.name][i:i + 64]) for i in range(0, len(inputs[e.name]), 64)])
            except Exception as exc:  # noqa: BLE001 - a provider that fails is a result
                results[label][e.name] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
                continue
            setup = time.perf_counter() - t0
            points = sweep(run, inputs[e.name], batches, box, per_point_s)
            b, rate = _best(points)
            results[label][e.name] = {"provider_used": sess.get_providers()[0], "setup_s": setup, "file": str(path),
                                      "max_delta_p": float(np.abs(p.reshape(-1) - reference[e.name]).max()),
                                      "sweep": points, "best_batch": b, "best_img_s": rate}
    return results


def best_variants(ort_results: dict, tolerance: float = 0.01) -> dict:
    """Per model, the fastest ONNX Runtime variant (label) within ``tolerance`` in P, and the full ensemble's
    model-only bound with each model on its own best variant (0 when a model has none)."""
    per_model: dict[str, dict] = {}
    for label, models in ort_results.items():
        for name, r in models.items():
            if r.get("best_img_s") and r["max_delta_p"] <= tolerance and (
                    name not in per_model or r["best_img_s"] > per_model[name]["img_s"]):
                per_model[name] = {"variant": label, "img_s": r["best_img_s"], "batch": r["best_batch"]}
    names = {name for models in ort_results.values() for name in models}
    rates = [per_model[n]["img_s"] if n in per_model else 0.0 for n in sorted(names)]
    bound = 1 / sum(1 / r for r in rates) if rates and all(rates) else 0.0
    return {"tolerance": tolerance, "models": per_model, "ensemble_model_only_cutouts_per_s": bound}


def padded_copies(entries, folder: Path) -> dict[str, Path] | str:
    """The networks with channels padded to multiples of 8 (``pad_channels.py``), by model name, or why not."""
    import importlib.util
    import sys

    if importlib.util.find_spec("onnx") is None:
        return "padded copies skipped: the onnx package is not installed (the training extra)"
    sys.path.insert(0, str(Path(__file__).parent))  # as bench_cascade.py reaches bench_engine.py
    import pad_channels

    folder.mkdir(parents=True, exist_ok=True)
    out = {e.name: folder / Path(e.path).name for e in entries}
    for e in entries:
        pad_channels.pad_file(e.path, out[e.name], 8)
    return out


def torch_section(entries, inputs, reference, device: str, batches, box, per_point_s, compile_models=(),
                  compile_batches=(256,)) -> dict:
    """torch bf16 autocast, channels-last, per model: eager, and ``torch.compile`` for ``compile_models`` (each
    batch size compiles anew, so those sweep ``compile_batches`` only)."""
    import torch

    from lensengine.training.export import load_torch_model
    from lensengine.training.networks import p_lens

    modes = ["eager", "compile"] if compile_models else ["eager"]
    sync = torch.cuda.synchronize if device == "cuda" else None
    torch.backends.cudnn.benchmark = True  # fixed shapes per sweep point: let cuDNN time its kernels once
    results = {m: {} for m in modes}
    for mode in modes:
        for e in entries:
            if mode == "compile" and e.name not in compile_models:
                continue
            if box.over(reserve=60):
                results[mode][e.name] = {"skipped": "time box"}
                continue
            if not Path(e.path).with_suffix(".pt").is_file():
                results[mode][e.name] = {"skipped": f"no torch weights beside {e.path}"}
                continue
            t0 = time.perf_counter()
            net = load_torch_model(e.path, e.name).eval().to(device).to(memory_format=torch.channels_last)
            fwd = torch.compile(net) if mode == "compile" else net

            def run(x, fwd=fwd):
                t = torch.from_numpy(x).to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
                with torch.inference_mode(), torch.autocast(device, dtype=torch.bfloat16):
                    return p_lens(fwd(t).float()).cpu().numpy()

            try:
                p = np.concatenate([run(inputs[e.name][i:i + 64]) for i in range(0, len(inputs[e.name]), 64)])
            except Exception as exc:  # noqa: BLE001
                results[mode][e.name] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
                continue
            setup = time.perf_counter() - t0
            points = sweep(run, inputs[e.name], list(compile_batches) if mode == "compile" else batches, box,
                           per_point_s, sync)
            b, rate = _best(points)
            results[mode][e.name] = {"setup_s": setup, "max_delta_p": float(np.abs(p - reference[e.name]).max()),
                                     "sweep": points, "best_batch": b, "best_img_s": rate}
            del net, fwd
            if device == "cuda":
                torch.cuda.empty_cache()
    return results


def ensemble_chain(entries, inputs, device: str, batch: int, box: TimeBox, seconds: float) -> dict:
    """The networks one after another on the same ``batch`` cutouts, each in calls of the engine's GPU size
    (:data:`~lensengine.engine.scoring.GPU_CALL_PIXELS`): cutouts/s.

    This is the model-only bound of the full ensemble measured directly (the sweeps give it per model).
    """
    import onnxruntime as ort

    from lensengine.engine.scoring import GPU_CALL_PIXELS, call_size
    from lensengine.engine.sessions import choose_providers

    if box.over(reserve=60):
        return {"skipped": "time box"}
    sessions = {e.name: ort.InferenceSession(str(e.path), providers=choose_providers(device)) for e in entries}
    xs = {e.name: np.ascontiguousarray(np.resize(inputs[e.name], (batch, *inputs[e.name].shape[1:])))
          for e in entries}
    from lensengine.engine.run_cli import GPU_BATCH_SIZE

    # as a GPU run calls them: sub-batches of the default --batch-size, each network capped at GPU_CALL_PIXELS
    calls_of = {e.name: call_size(xs[e.name].shape, min(batch, GPU_BATCH_SIZE), call_pixels=GPU_CALL_PIXELS)
                for e in entries}

    def once():
        for e in entries:
            x, size = xs[e.name], calls_of[e.name]
            for lo in range(0, batch, size):
                sessions[e.name].run(["p_lens"], {"cutout": x[lo:lo + size]})

    once()
    calls, t0 = 0, time.perf_counter()
    while calls < 3 or time.perf_counter() - t0 < seconds:
        once()
        calls += 1
    dt = time.perf_counter() - t0
    return {"batch": batch, "call_sizes": calls_of, "calls": calls, "seconds": dt,
            "cutouts_per_s": calls * batch / dt}


def end_to_end(store: Path, entries, models_dir, device: str, batch: int, workers: list[int], box: TimeBox,
               tmp: Path) -> dict:
    """``lensengine run`` on the store: cutouts/s with each worker count (the real engine path)."""
    from lensengine.engine.run import RunOptions, execute_run

    out = {}
    for w in workers:
        if box.over(reserve=20):
            out[str(w)] = {"skipped": "time box"}
            continue
        cat = tmp / f"e2e_w{w}.fits"
        opts = RunOptions(store=store, out=cat, scores=tmp / f"e2e_w{w}_scores.parquet", models=entries,
                          models_dir=models_dir, workers=w, device=device, batch_size=batch, progress=False,
                          dashboard=False, precision="fp32")
        t0 = time.perf_counter()
        try:
            summary = execute_run(opts)
        except Exception as exc:  # noqa: BLE001
            out[str(w)] = {"error": f"{type(exc).__name__}: {str(exc)[:3000]}"}  # whole: a cut one hid a cause
            print(f"end to end, {w} worker(s): failed: {out[str(w)]['error']}", flush=True)
            continue
        wall = time.perf_counter() - t0
        out[str(w)] = {"cutouts": summary.n_cutouts, "wall_s": wall, "cutouts_per_s": summary.n_cutouts / wall,
                       "scoring_s": summary.seconds, "scoring_rate": summary.rate, "providers": summary.providers}
        print(f"end to end, {w} worker(s): {summary.n_cutouts} cutouts in {wall:.1f} s = "
              f"{summary.n_cutouts / wall:.0f}/s (scoring {summary.rate:.0f}/s)", flush=True)
    return out


def ceiling(store: Path, models_dir, batch: int, workers: list[int], box: TimeBox, tmp: Path) -> dict:
    """``benchmarks/bench_ceiling.py`` on this host: the engine with networks that cost nothing (on the CPU),
    one worker and the most workers of the end-to-end runs, at the GPU run's sub-batch.  What this host's CPUs
    spend per cutout besides the networks, to set beside the GPU runs' rate (docs/performance.md, stop 44)."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))  # as bench_cascade.py reaches bench_engine.py
    import bench_ceiling as bench

    try:
        free = bench.free_models(models_dir, tmp / "free_models")
    except Exception as exc:  # noqa: BLE001 - e.g. no onnx package on the lent machine: a result, not a crash
        return {"skipped": f"{type(exc).__name__}: {str(exc)[:300]}"}
    out = {}
    for w in sorted({1, max(workers)}):
        if box.over(reserve=15):
            out[str(w)] = {"skipped": "time box"}
            continue
        out[str(w)] = bench.one_run(store, free, w, batch, tmp / "ceiling")
        print(f"ceiling (networks that cost nothing), {w} worker(s): {out[str(w)]['cutouts_per_s']:.0f} cutouts/s, "
              f"{out[str(w)]['cpu_ms_per_cutout']:.3f} ms of CPU per cutout", flush=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="the same path on the CPU with tiny sizes")
    ap.add_argument("--tiles", type=Path, default=None, help="an existing store [default: generate one]")
    ap.add_argument("-n", type=int, default=None, help="cutouts of the generated store [8192; dry-run 48]")
    ap.add_argument("--chunk", type=int, default=None, help="chunk size of the generated store [1024; dry-run 16]")
    ap.add_argument("--models", type=Path, default=None, help="models folder [default: the shipped models]")
    ap.add_argument("--model", action="append", default=None, help="only this model (repeatable)")
    ap.add_argument("--batches", default=None, help="batch sweep [64,256,1024,4096; dry-run 4,8]")
    ap.add_argument("--workers", default=None, help="end-to-end worker counts [1,4,8; dry-run 1]")
    ap.add_argument("--e2e-batch", type=int, default=None,
                    help="the end-to-end runs' --batch-size [a GPU run's default, run_cli.GPU_BATCH_SIZE]")
    ap.add_argument("--compile", default="", help="also torch.compile these models (comma list, e.g. OU-200)")
    ap.add_argument("--compile-batches", default="256", help="batch sizes of the compiled runs [256]")
    ap.add_argument("--time-box", type=float, default=None, help="seconds for everything [420; dry-run 120]")
    ap.add_argument("--per-point", type=float, default=None, help="seconds per sweep point [1.0; dry-run 0.05]")
    ap.add_argument("--json", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    dry = args.dry_run
    n = args.n or (48 if dry else 8192)
    chunk = args.chunk or (16 if dry else 1024)
    batches = [int(b) for b in (args.batches or ("4,8" if dry else "64,256,1024,4096")).split(",")]
    workers = [int(w) for w in (args.workers or ("1" if dry else "1,4,8")).split(",")]
    box = TimeBox(args.time_box or (120 if dry else 420))
    per_point = args.per_point if args.per_point is not None else (0.05 if dry else 1.0)

    from lensengine.engine.preprocess import Preprocessor
    from lensengine.engine.registry import resolve_models
    from lensengine.engine.sessions import choose_providers

    report: dict = {"machine": machine(dry), "settings": {"n": n, "chunk": chunk, "batches": batches,
                                                          "workers": workers, "time_box_s": box.seconds}}
    ort_cuda = report["machine"]["gpu_available"] and "CUDAExecutionProvider" in report["machine"].get(
        "ort_providers", [])
    torch_cuda = bool(report["machine"].get("cuda"))
    if not dry and not (ort_cuda or torch_cuda):
        ap.error("no usable CUDA GPU here (neither ONNX Runtime's CUDA provider nor torch sees one); "
                 "use --dry-run on a CPU")
    device = "cpu" if dry else "cuda"

    def save():
        report["seconds"] = time.perf_counter() - box.t0
        args.json.write_text(json.dumps(report, indent=1, default=str) + "\n")

    entries = resolve_models(args.models, args.model)
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp_name:
        tmp = Path(tmp_name)
        t0 = time.perf_counter()
        store = args.tiles or make_store(tmp / "bench.zarr", n, chunk)
        report["store"] = {"path": str(store), "generated": args.tiles is None, "seconds": time.perf_counter() - t0}
        print(f"store ready in {report['store']['seconds']:.1f} s", flush=True)

        report["read"] = read_rate(store, box, limit_s=10 if not dry else 5)
        print(f"zarr read: {report['read']['gb_per_s']:.2f} GB/s ({report['read']['cutouts_per_s']:.0f} cutouts/s)",
              flush=True)

        # a fixed set of cutouts, preprocessed once; the reference is ONNX Runtime fp32 on the CPU
        from lensengine.catalogs.store import SurveyStore

        first = SurveyStore.open(store).read_chunk(SurveyStore.open(store).tiles[0], 0)
        k = min(len(first), 256)
        bands = {"VIS": first.vis[:k], "Y": first.nisp[:k, 0], "J": first.nisp[:k, 1], "H": first.nisp[:k, 2]}
        inputs = Preprocessor([e.as_spec() for e in entries])(bands, k).inputs
        reference = {}
        for e in entries:
            import onnxruntime as ort

            sess = ort.InferenceSession(str(e.path), providers=["CPUExecutionProvider"])
            reference[e.name] = sess.run(["p_lens"], {"cutout": inputs[e.name]})[0].reshape(-1)

        save()
        padded = padded_copies(entries, tmp / "pad8")
        paths: dict[str, dict[str, Path]] = {}  # a label's own model files
        if isinstance(padded, str):
            report["padded"] = padded
        if dry:
            providers_list = [("cpu-standing-in-for-cuda", ["CPUExecutionProvider"])]
            if not isinstance(padded, str):
                providers_list.append(("cpu-standing-in-for-cuda-pad8", [("CPUExecutionProvider", {})]))
                paths = {"cpu-standing-in-for-cuda-pad8": padded}
        elif not ort_cuda:
            providers_list = []
            report["ort_cuda"] = (f"ONNX Runtime's CUDA provider is not usable here (providers "
                                  f"{report['machine'].get('ort_providers')}): its sections and the end-to-end "
                                  "runs skipped; install onnxruntime-gpu built for this CUDA")
        else:
            cuda = choose_providers("cuda")
            nhwc = [("CUDAExecutionProvider", {"prefer_nhwc": "1"}), *cuda[1:]]
            providers_list = [("cuda", cuda), ("cuda-nhwc", nhwc)]
            if not isinstance(padded, str):
                providers_list.append(("cuda-nhwc-pad8", nhwc))
                paths = {"cuda-nhwc-pad8": padded}
            trt = choose_providers("auto")
            if trt[0] == "TensorrtExecutionProvider":
                providers_list.append(("tensorrt", trt))
            else:
                report["tensorrt"] = "TensorRT libraries not loadable here: skipped"
        report["ort"] = ort_section(entries, inputs, reference, providers_list, batches, box, per_point,
                                    tmp / "trt-cache", paths)
        for label, per_model in report["ort"].items():
            _print_best(f"ort {label:30s}", per_model)
        if report["ort"]:
            report["best_variant"] = best_variants(report["ort"])
            print("best ONNX Runtime variant within |ΔP| ≤ 0.01: " + ", ".join(
                f"{n} {v['variant']} {v['img_s']:.0f} img/s" for n, v in report["best_variant"]["models"].items())
                + f"; ensemble bound {report['best_variant']['ensemble_model_only_cutouts_per_s']:.0f} cutouts/s",
                flush=True)
        save()

        try:
            report["torch_bf16"] = torch_section(
                entries, inputs, reference, device, batches, box, per_point,
                [m for m in args.compile.split(",") if m], [int(b) for b in args.compile_batches.split(",")])
        except ImportError as exc:
            report["torch_bf16"] = {"skipped": f"torch not installed ({exc})"}
        for mode, per_model in report["torch_bf16"].items():
            if isinstance(per_model, dict):
                _print_best(f"torch bf16 {mode:18s}", per_model)
        save()
        if not providers_list:
            save()
            print(f"no ONNX Runtime CUDA provider: torch only; {report['seconds']:.0f} s; wrote {args.json}")
            return 0

        # the model-only bound of the full ensemble: each model at its best batch, one after another
        best = report["ort"][providers_list[0][0]]
        rates = [r.get("best_img_s", 0.0) for r in best.values()]
        bound = 1 / sum(1 / r for r in rates) if rates and all(rates) else 0.0
        from lensengine.engine.run_cli import GPU_BATCH_SIZE

        batch = args.e2e_batch or GPU_BATCH_SIZE  # the sub-batch of a GPU run without --batch-size
        report["ensemble_model_only_cutouts_per_s"] = bound
        report["ensemble_chain"] = ensemble_chain(entries, inputs, device, 16 if dry else 4096, box,
                                                  per_point * 3)
        chain = report["ensemble_chain"]
        print(f"ensemble: bound from the sweeps {bound:.0f} cutouts/s; the seven one after another on "
              f"{chain.get('batch')} cutouts in the engine's GPU calls ({chain.get('call_sizes')}): "
              f"{chain.get('cutouts_per_s', float('nan')):.0f} cutouts/s", flush=True)
        save()
        report["end_to_end"] = end_to_end(store, entries, args.models, device, batch, workers, box, tmp)
        for r in report["end_to_end"].values():
            if "cutouts_per_s" in r:
                r["of_model_only_bound"] = r["cutouts_per_s"] / bound if bound else None
        save()
        report["ceiling"] = ceiling(store, args.models, batch, workers, box, tmp)
        report["goal_cutouts_per_s"] = GOAL_CUTOUTS_PER_S
    save()
    print(f"full ensemble model-only bound {bound:.0f} cutouts/s; end to end "
          + ", ".join(f"{w} worker(s) {r.get('cutouts_per_s', float('nan')):.0f}/s"
                      for w, r in report["end_to_end"].items())
          + f"; goal {GOAL_CUTOUTS_PER_S}/s; {report['seconds']:.0f} s in all; wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
