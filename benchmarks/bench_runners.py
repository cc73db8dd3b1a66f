"""Runners side by side (issue 13, item 2): per model, img/s and max |ΔP| against ONNX Runtime fp32.

    python benchmarks/bench_runners.py                         # shipped models, every runner available here
    python benchmarks/bench_runners.py --model OU-J --model OU-66 --runners ort-fp32,ort-int8,openvino-fp32
    python benchmarks/bench_runners.py --save-calibration user # what `--runner auto` then reads
    python benchmarks/bench_runners.py --cutouts val.zarr:1000:1512 --cutouts lenses.zarr:1000:1384 \
        --cutouts sky1.zarr:2500:4500:hard=256                 # a fixed set from simulated stores

The inputs are real simulated cutouts through the engine's own preprocessing,
so |ΔP| is measured where the networks are used, not on noise: by default
``-n`` from the training simulator (fixed seed; cached in the lensengine cache
after the first run), or with ``--cutouts`` a fixed set read from survey
stores.  ``STORE:START:STOP`` takes those rows of the store (its tiles one
after the other); ``:hard=K`` keeps only the K rows that the measured models
in fp32 score highest (the largest P of any of them) and K/2 of the others,
drawn with a fixed seed: non-lenses that look like lenses are where P is near
0.5, where a runner's error matters most.

``--recipes`` also measures candidate int8 recipes (ONNX Runtime static QDQ
variants and NNCF's, on ONNX Runtime and OpenVINO; :data:`RECIPES`) beside
the runners in the same run, calibrated on ``--calibration`` cutouts kept
apart from the measured ones; ``--sensitivity`` adds the max |ΔP| of each
layer quantized alone; ``--fp32-variants`` fp32 as one-thread copies on shares
of the batch.  They are compared, never chosen by ``--runner auto``
(docs/performance.md has what they measured: none within 0.01).

A runner is *eligible* (``--runner auto`` may choose it) only where max |ΔP|
<= 0.01 and it is faster than ort-fp32 in the same run.  Prints one table
and writes benchmarks/results_runners.json (every number, the machine, the
load average before and after: the development machine is shared, so read the
ratios, which share the load, rather than the absolute rates).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).with_name("results_runners.json")
SMALL = ("OU-J", "OU-Y", "OU-H", "OU-JYH", "OU-66")


def simulated_bands(n: int, seed: int) -> dict[str, np.ndarray]:
    """``n`` mixed simulated cutouts (about 70 % lenses) as native-grid bands, cached by seed and simulator version."""
    from lensengine.engine.runners import cache_dir
    from lensengine.training.simulate import SIMULATOR_VERSION, simulate_batch

    path = cache_dir() / "runners" / f"sim-mixed-{seed}-{n}-v{SIMULATOR_VERSION}.npz"
    if path.is_file():
        with np.load(path) as data:
            return {k: data[k] for k in data.files}
    batch = simulate_batch("mixed", n, seed)
    bands = {"VIS": batch.vis, "Y": batch.nisp[:, 0], "J": batch.nisp[:, 1], "H": batch.nisp[:, 2]}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + f".tmp-{os.getpid()}.npz")
    np.savez(tmp, **bands)
    os.replace(tmp, path)
    return bands


def store_bands(spec: str, entries, threads: int) -> tuple[dict[str, np.ndarray], str]:
    """The bands of ``STORE[:START:STOP[:hard=K]]`` (see the module doc) and a description of what was taken."""
    from lensengine.catalogs.store import CutoutBatch, SurveyStore

    path, *rest = spec.split(":")
    hard = None
    if rest and rest[-1].startswith("hard="):
        hard = int(rest.pop()[len("hard="):])
    if len(rest) not in (0, 2):
        raise SystemExit(f"--cutouts {spec!r}: expected STORE[:START:STOP[:hard=K]]")
    store = SurveyStore.open(path)
    batch = CutoutBatch.concatenate([store.read(t, 0, store.n_cutouts(t)) for t in store.tiles])
    start, stop = (int(rest[0]), int(rest[1])) if rest else (0, len(batch))
    if not 0 <= start < stop <= len(batch):
        raise SystemExit(f"--cutouts {spec!r}: rows {start}:{stop} outside the store's {len(batch)} cutouts")
    bands = {k: v[start:stop] for k, v in batch.bands().items() if v is not None}
    if hard is None:
        return bands, f"{path}[{start}:{stop}]"
    scores = _fp32_scores(bands, stop - start, entries, threads)
    order = np.argsort(-scores)
    rest_rows = np.random.default_rng(0).choice(order[hard:], min(hard // 2, len(order) - hard), replace=False)
    keep = np.sort(np.concatenate([order[:hard], rest_rows]))
    return ({k: v[keep] for k, v in bands.items()},
            f"{path}[{start}:{stop}], the {hard} scored highest in fp32 and {len(rest_rows)} others")


def _fp32_scores(bands: dict, n: int, entries, threads: int) -> np.ndarray:
    """The largest fp32 P(lens) of any of ``entries`` per cutout (-1 where no model may score it)."""
    from lensengine.engine.preprocess import Preprocessor
    from lensengine.engine.runners import REFERENCE, build_runner

    prepared = Preprocessor([e.as_spec() for e in entries])(bands, n)
    best = np.full(n, -1.0)
    for e in entries:
        run = build_runner(e, REFERENCE, "cpu", threads)
        x = prepared.inputs[e.name]
        p = np.concatenate([np.asarray(run(np.ascontiguousarray(x[i:i + 64]))).reshape(-1)
                            for i in range(0, n, 64)])
        best = np.where(prepared.usable[e.name], np.maximum(best, p), best)
    return best


def fixed_set(args, entries) -> tuple[dict[str, np.ndarray], int, dict]:
    """The bands every runner is measured on, their number, and what they are (for the results)."""
    if not args.cutouts:
        return (simulated_bands(args.n, args.seed), args.n,
                {"kind": "simulated mixed", "seed": args.seed})
    parts, described = [], []
    for spec in args.cutouts:
        bands, what = store_bands(spec, entries, args.threads)
        parts.append(bands)
        described.append(what)
    names = set.intersection(*(set(p) for p in parts))
    bands = {k: np.concatenate([p[k] for p in parts]) for k in names}
    return bands, len(next(iter(bands.values()))), {"kind": "stores", "parts": described}


# --- candidate int8 recipes (issue 13: is there one within |ΔP| <= 0.01 that is 2x faster?) ----------------

#: ONNX Runtime static QDQ recipes: quantize_static arguments; "ends" keeps the first convolution and the dense
#: head in fp32.  Weights per output channel throughout; activations per tensor (all these back-ends offer).
ORT_RECIPES = {
    "minmax": {},
    "minmax-rr": {"reduce_range": True},
    "minmax-s8-symmetric": {"activation_type": "QInt8", "extra_options": {"ActivationSymmetric": True}},
    "minmax-u8u8": {"weight_type": "QUInt8"},
    "minmax-rr-ends": {"reduce_range": True, "ends": True},
    "entropy-rr-ends": {"reduce_range": True, "ends": True, "calibrate_method": "Entropy"},
    "pct99.999-rr-ends": {"reduce_range": True, "ends": True, "calibrate_method": "Percentile",
                          "extra_options": {"CalibPercentile": 99.999}},
}
#: NNCF post-training quantization of the OpenVINO model (pip install nncf): fast bias correction, the
#: overflow fix of CPUs without VNNI (7-bit weights), optionally the ends ignored, or accuracy control
NNCF_RECIPES = ("nncf", "nncf-ends", "nncf-accuracy")
RECIPES = tuple(ORT_RECIPES) + NNCF_RECIPES


def _dense_ends(path: str) -> list[str]:
    """The first convolution and every Gemm of an ONNX model: the node names kept fp32 by an ``-ends`` recipe."""
    import onnx

    nodes = [n for n in onnx.load(path).graph.node if n.op_type in ("Conv", "Gemm")]
    return [nodes[0].name] + [n.name for n in nodes if n.op_type == "Gemm"]


def quantize_recipe(model, recipe: str, calib: np.ndarray, valid: np.ndarray, workdir: Path) -> str:
    """The path of ``model`` quantized with ``recipe`` (see :data:`RECIPES`), calibrated on ``calib``.

    ``valid`` (other cutouts than the measured set) is what the accuracy-controlled NNCF recipe checks
    its max |ΔP| on while it returns layers to fp32.
    """
    out = workdir / f"{model.name}-{recipe}"
    if recipe in ORT_RECIPES:
        from lensengine.engine.runners import quantize_qdq

        opts = dict(ORT_RECIPES[recipe])
        ends = _dense_ends if opts.pop("ends", False) else ()
        quantize_qdq(model.path, f"{out}.onnx", calib, batch=32, nodes_to_exclude=ends, **opts)
        return f"{out}.onnx"
    import nncf
    import openvino as ov
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix

    core = ov.Core()
    ov_model = core.read_model(str(model.path))
    kw = {"subset_size": len(calib), "fast_bias_correction": True,
          "advanced_parameters": AdvancedQuantizationParameters(overflow_fix=OverflowFix.ENABLE)}
    batches = nncf.Dataset([calib[i:i + 32] for i in range(0, len(calib), 32)])
    if recipe == "nncf-ends":
        ops = [o.get_friendly_name() for o in ov_model.get_ordered_ops()
               if o.get_type_name() in ("Convolution", "MatMul")]
        kw["ignored_scope"] = nncf.IgnoredScope(names=[ops[0]] + [o for o in ops if "fc_layer" in o])
    if recipe == "nncf-accuracy":
        fp32 = core.compile_model(ov_model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        ref = np.concatenate([np.asarray(fp32(valid[i:i + 64])[0]).reshape(-1) for i in range(0, len(valid), 64)])

        def max_delta(compiled, items):  # larger is better: 1 - max |ΔP| (NNCF divides by the fp32 metric)
            p = np.concatenate([np.asarray(compiled(b)[0]).reshape(-1) for b in items])
            return 1.0 - float(np.abs(p - ref).max())

        kw["advanced_quantization_parameters"] = kw.pop("advanced_parameters")
        quantized = nncf.quantize_with_accuracy_control(
            ov_model, batches, nncf.Dataset([valid[i:i + 64] for i in range(0, len(valid), 64)]), max_delta,
            max_drop=0.01, drop_type=nncf.DropType.ABSOLUTE, **kw)
    else:
        quantized = nncf.quantize(ov_model, batches, **kw)
    ov.save_model(quantized, f"{out}.xml", compress_to_fp16=False)
    return f"{out}.xml"


def recipe_runners(model, recipes, calib, valid, workdir: Path, threads: int) -> tuple[dict, dict[str, str]]:
    """``{"int8:RECIPE@ort": build, "int8:RECIPE@ov": build}`` for :func:`measure`'s ``extra``, and the
    recipe -> quantized file map that the builds fill: each quantizes on first call (timed as set-up, not
    as inference); NNCF recipes run on OpenVINO only."""
    from lensengine.engine import runners as rn

    made: dict[str, str] = {}

    def builder(recipe, engine):
        def build():
            if recipe not in made:
                made[recipe] = quantize_recipe(model, recipe, calib, valid, workdir)
            if engine == "ort":
                return rn._ort_runner(made[recipe], model, "cpu", threads)
            return rn._openvino_runner(made[recipe], "f32", threads)
        return build

    out = {}
    for recipe in recipes:
        for engine in (("ov",) if recipe in NNCF_RECIPES else ("ort", "ov")):
            out[f"int8:{recipe}@{engine}"] = builder(recipe, engine)
    return out, made


def quantizers(path: str) -> int:
    """How many quantize operations a quantized copy kept (0: a recipe that gave every layer back to fp32)."""
    if path.endswith(".xml"):
        import openvino as ov

        return sum(op.get_type_name() == "FakeQuantize" for op in ov.Core().read_model(path).get_ops())
    import onnx

    return sum(n.op_type == "QuantizeLinear" for n in onnx.load(path).graph.node)


# --- fp32 set-ups that are not reduced precision (reported apart from the target) ----------------------

def split_runner(make_one, parts: int = 2):
    """A runner that splits each batch into ``parts`` pieces run at once on ``parts`` one-thread runners
    (data parallel across the cores instead of one runner's threads inside each layer)."""
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(parts)
    runs = [make_one() for _ in range(parts)]

    def run(x):
        pieces = np.array_split(x, parts)
        out = list(pool.map(lambda rp: np.asarray(rp[0](np.ascontiguousarray(rp[1]))).reshape(-1),
                            zip(runs, pieces)))
        return np.concatenate(out)

    return run


def fp32_variants(model, threads: int) -> dict:
    """``{name: build}`` of the fp32 set-ups compared for speed: each of ONNX Runtime and OpenVINO as
    ``threads`` one-thread copies, each on its share of the batch."""
    import onnxruntime as ort

    from lensengine.engine import runners as rn

    def ort_one():
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = 1, 1
        sess = ort.InferenceSession(str(model.path), opts, providers=["CPUExecutionProvider"])
        return lambda x: sess.run(None, {"cutout": x})[0]

    out = {f"ort-{threads}x1thread-fp32": lambda: split_runner(ort_one, threads)}
    if not rn.runner_problem("openvino-fp32", model, "cpu"):
        out[f"openvino-{threads}x1thread-fp32"] = lambda: split_runner(
            lambda: rn._openvino_runner(str(model.path), "f32", 1), threads)
    return out


def machine() -> dict:
    from lensengine.engine.runners import cpu_signature

    model = ""
    try:
        with open("/proc/cpuinfo") as fh:
            model = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), "")
    except OSError:
        pass
    versions = {}
    for mod in ("onnxruntime", "openvino", "torch"):
        try:
            versions[mod] = __import__(mod).__version__
        except ImportError:
            versions[mod] = None
    return {"cpu": model, "isa": cpu_signature(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "versions": versions}


def _reduced(name: str, measured: dict) -> bool:
    """A reduced-precision runner or recipe (the issue's target is about these, not the fp32 ones); a recipe
    that gave every layer back to fp32 (NNCF's accuracy control may) is fp32, whatever its name."""
    return not name.endswith("fp32") and measured.get("quantizers") != 0


def _family(results: list[dict], pick) -> tuple[float, float] | None:
    """(ort-fp32 img/s, img/s with ``pick(runners) -> name``) of the 66-px family scored one model after the other
    (time per cutout adds up), or None when none of the five was measured."""
    from lensengine.engine.runners import REFERENCE

    t_ref = t_pick = 0.0
    for r in results:
        if r["model"] in SMALL:
            t_ref += 1 / r["runners"][REFERENCE]["img_s"]
            t_pick += 1 / r["runners"][pick(r["runners"])]["img_s"]
    return (1 / t_ref, 1 / t_pick) if t_ref else None


def summarise(results: list[dict]) -> dict:
    """Per model and over the 66-px family: the best eligible runner, the best eligible reduced-precision one
    (runner or recipe), and the fastest regardless of |ΔP| (what int8 would give were it correct)."""
    from lensengine.engine.runners import REFERENCE, eligible

    def best_of(runners, keep):
        ref = runners[REFERENCE]["img_s"]
        ok = {k: v for k, v in runners.items() if k != REFERENCE and "img_s" in v and keep(k, v, ref)}
        return max(ok, key=lambda k: ok[k]["img_s"]) if ok else REFERENCE

    choices = {
        "best_eligible": lambda k, v, ref: eligible(v, ref),
        "best_eligible_reduced_precision": lambda k, v, ref: _reduced(k, v) and eligible(v, ref),
        "fastest_regardless_of_delta_p": lambda k, v, ref: True,
    }
    out: dict = {}
    for what, keep in choices.items():
        per_model = {}
        for r in results:
            name = best_of(r["runners"], keep)
            v = r["runners"][name]
            per_model[r["model"]] = {"runner": name, "speedup": v["img_s"] / r["runners"][REFERENCE]["img_s"],
                                     "max_delta_p": v.get("max_delta_p")}
        fam = _family(results, lambda runners, keep=keep: best_of(runners, keep))
        out[what] = {"models": per_model}
        if fam:
            out[what]["family_66px"] = {"ort_fp32_img_s": fam[0], "img_s": fam[1], "speedup": fam[1] / fam[0]}
    out["target"] = "fastest reduced-precision runner >= 2x ort-fp32 on the 66-px family at max |dP| <= 0.01"
    return out


def print_table(results: list[dict]) -> None:
    """One line per model and runner: img/s, the ratio to ort-fp32, max |ΔP|, the share of cutouts beyond 0.01."""
    from lensengine.engine.runners import MAX_DELTA_P, REFERENCE

    print(f"{'model':8s} {'runner':34s} {'img/s':>7s} {'x fp32':>7s} {'max|dP|':>9s} {'>0.01':>6s}")
    for r in results:
        ref = r["runners"][REFERENCE]["img_s"]
        for n, v in r["runners"].items():
            if "img_s" not in v:
                print(f"{r['model']:8s} {n:34s} not measured: {v['error']}")
                continue
            dp = v["max_delta_p"]
            mark = "" if n == REFERENCE else ("✔" if dp is not None and dp <= MAX_DELTA_P else "✘")
            dps = "nan" if dp is None else f"{dp:.4f}"
            kept = f"  ({v['quantizers']} quantizers)" if "quantizers" in v else ""
            print(f"{r['model']:8s} {n:34s} {v['img_s']:7.0f} {v['img_s'] / ref:6.2f}× {dps:>8s}{mark:1s} "
                  f"{v['frac_over_bound']:6.3f}{kept}")
        for layer, dp in r.get("sensitivity", {}).items():
            print(f"{r['model']:8s}   only {layer} int8 (minmax-rr): max|dP| {dp:.4f}")
    print("max|dP| against ort-fp32 on the fixed set; ✔ within 0.01, ✘ not; >0.01: share of cutouts beyond it")


def sensitivity(model, calib: np.ndarray, x: np.ndarray, ref: np.ndarray, workdir: Path) -> dict[str, float]:
    """Max |ΔP| with one Conv/Gemm at a time quantized (minmax, reduced range), the rest fp32: a layer whose
    number alone exceeds 0.01 cannot be int8 in any recipe that keeps the bound."""
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    quantize_recipe(model, "minmax-rr", calib[:32], calib[:0], workdir)  # makes the pre-processed copy
    pre = workdir / f"{model.name}.pre.onnx"
    out = {}
    for node in [n.name for n in onnx.load(str(pre)).graph.node if n.op_type in ("Conv", "Gemm")]:
        class _Batches(CalibrationDataReader):
            def __init__(self):
                self._it = iter([{"cutout": calib[i:i + 32]} for i in range(0, len(calib), 32)])

            def get_next(self):
                return next(self._it, None)

        path = workdir / f"{model.name}-one.onnx"
        quantize_static(str(pre), str(path), _Batches(), quant_format=QuantFormat.QDQ, per_channel=True,
                        reduce_range=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        nodes_to_quantize=[node])
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.log_severity_level = 1, 3
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])  # not cached: rewritten
        p = np.concatenate([sess.run(None, {"cutout": np.ascontiguousarray(x[i:i + 64])})[0].reshape(-1)
                            for i in range(0, len(x), 64)])
        out[node] = float(np.abs(p.astype(np.float64) - ref).max())
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=Path, default=None, help="models folder [default: the shipped models]")
    ap.add_argument("--model", action="append", default=None, help="only this model (repeatable)")
    ap.add_argument("--runners", default=None, help="comma-separated runners [default: every one known]")
    ap.add_argument("-n", type=int, default=64, help="simulated cutouts (the fixed set) without --cutouts")
    ap.add_argument("--seed", type=int, default=4242)
    ap.add_argument("--cutouts", action="append", default=None, metavar="STORE[:START:STOP[:hard=K]]",
                    help="measure on rows of a survey store instead of the simulator (repeatable; see above)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--min-seconds", type=float, default=1.0)
    ap.add_argument("--recipes", default=None,
                    help=f"also measure candidate int8 recipes (comma-separated, or all: {', '.join(RECIPES)}); "
                         "they are compared, never chosen by --runner auto")
    ap.add_argument("--calibration", action="append", default=None, metavar="STORE[:START:STOP]",
                    help="the recipes' calibration cutouts (repeatable; keep them apart from --cutouts); the "
                         "first --calib-n calibrate, the rest are the accuracy-controlled recipe's check set")
    ap.add_argument("--calib-n", type=int, default=512)
    ap.add_argument("--sensitivity", action="store_true",
                    help="also the max |ΔP| of each layer quantized alone (needs --calibration)")
    ap.add_argument("--fp32-variants", action="store_true",
                    help="also fp32 as --threads one-thread copies each on a share of the batch (speed only)")
    ap.add_argument("--json", type=Path, default=RESULTS)
    ap.add_argument("--save-calibration", choices=("none", "user", "shipped"), default="none",
                    help="also write the measurements as a runner calibration: user (the cache, what "
                         "--runner auto reads here) or shipped (engine/data/runner_calibration.json)")
    args = ap.parse_args(argv)

    import tempfile

    from lensengine.engine.preprocess import Preprocessor
    from lensengine.engine.registry import resolve_models
    from lensengine.engine.runners import (REFERENCE, RUNNERS, SHIPPED_CALIBRATION, calibration_entries,
                                           inputs_digest, measure, save_calibration)

    entries = resolve_models(args.models, args.model)
    names = args.runners.split(",") if args.runners else list(RUNNERS)
    unknown = [n for n in names if n not in RUNNERS]
    if unknown:
        ap.error(f"unknown runner(s) {unknown}; known: {', '.join(RUNNERS)}")
    recipes = [] if not args.recipes else list(RECIPES) if args.recipes == "all" else args.recipes.split(",")
    if set(recipes) - set(RECIPES):
        ap.error(f"unknown recipe(s) {sorted(set(recipes) - set(RECIPES))}; known: {', '.join(RECIPES)}")
    if (recipes or args.sensitivity) and not args.calibration:
        ap.error("--recipes and --sensitivity need --calibration cutouts (apart from the measured set)")
    bands, n, described = fixed_set(args, entries)
    prepared = Preprocessor([e.as_spec() for e in entries])(bands, n)
    calib = None
    if args.calibration:
        cparts = [store_bands(spec, entries, args.threads)[0] for spec in args.calibration]
        cbands = {k: np.concatenate([p[k] for p in cparts]) for k in set.intersection(*(set(p) for p in cparts))}
        calib = Preprocessor([e.as_spec() for e in entries])(cbands, len(next(iter(cbands.values()))))
    workdir = Path(tempfile.mkdtemp(prefix="bench-runners-"))
    load0 = os.getloadavg()[0]
    if load0 > 0.5 * (os.cpu_count() or 1):
        # the first AVX2 calibration measured rates 5-10x below its CPU class's (a busy machine, most likely)
        # and chose slower runners until stop 44 (docs/performance.md): warn, and keep the load with the numbers
        print(f"warning: load average {load0:.1f} on {os.cpu_count()} CPUs before the measurement: other work "
              "is running, and a calibration measured now may choose slower runners", flush=True)
    t0 = time.perf_counter()
    results = []
    for e in entries:
        x = prepared.inputs[e.name][prepared.usable[e.name]]
        extra, made = {}, {}
        if calib is not None:
            cx = calib.inputs[e.name][calib.usable[e.name]]
            cx = cx[np.random.default_rng(1).permutation(len(cx))]
            extra, made = recipe_runners(e, recipes, cx[:args.calib_n], cx[args.calib_n:], workdir, args.threads)
        if args.fp32_variants and args.threads > 1:
            extra.update(fp32_variants(e, args.threads))
        r = measure(e, x, names, batch=args.batch, threads=args.threads, repeats=args.repeats,
                    min_seconds=args.min_seconds, extra=extra)
        for recipe, path in made.items():
            for k in (f"int8:{recipe}@ort", f"int8:{recipe}@ov"):
                if "img_s" in r["runners"].get(k, {}):
                    r["runners"][k]["quantizers"] = quantizers(path)
        r["inputs"] = {**described, "n": int(len(x)), "digest": inputs_digest(x)}
        if args.sensitivity:
            from lensengine.engine.runners import build_runner

            run = build_runner(e, REFERENCE, "cpu", 1)
            ref = np.concatenate([np.asarray(run(np.ascontiguousarray(x[i:i + 64]))).reshape(-1)
                                  for i in range(0, len(x), 64)]).astype(np.float64)
            r["sensitivity"] = sensitivity(e, cx[:args.calib_n], x, ref, workdir)
        results.append(r)
        print(f"{e.name}: " + ", ".join(f"{k} {v['img_s']:.0f}/s |ΔP| {v['max_delta_p']:.4f}" if "img_s" in v
                                        else f"{k} n/a" for k, v in r["runners"].items()), flush=True)
    report = {"machine": machine(), "load_avg_1min": [load0, os.getloadavg()[0]],
              "seconds": time.perf_counter() - t0, "runners": names, "recipes": recipes,
              "calibration": args.calibration, "results": results, "summary": summarise(results)}
    print()
    print_table(results)
    for what in ("best_eligible", "best_eligible_reduced_precision", "fastest_regardless_of_delta_p"):
        fam = report["summary"][what].get("family_66px")
        if fam:
            print(f"66-px family, {what.replace('_', ' ')}: {fam['img_s']:.0f} img/s against ort-fp32 "
                  f"{fam['ort_fp32_img_s']:.0f} = {fam['speedup']:.2f}× (target: reduced precision within 0.01, 2×)")
    print(f"machine: {report['machine']['cpu']} ({report['machine']['isa']}, {report['machine']['cpus']} CPUs), "
          f"load average {load0:.1f} -> {os.getloadavg()[0]:.1f}")
    args.json.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.json}")
    if args.save_calibration != "none":
        where = SHIPPED_CALIBRATION if args.save_calibration == "shipped" else None
        # the shipped file holds the shipped networks (and what was measured now) alone: entries of
        # networks replaced since they were measured are dropped
        only = [*resolve_models(None), *entries] if args.save_calibration == "shipped" else None
        kept = [{**r, "runners": {k: v for k, v in r["runners"].items() if k in RUNNERS},
                 "load_avg_1min": report["load_avg_1min"]} for r in results]
        print(f"calibration written to {save_calibration(calibration_entries(kept), where, only_models=only)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
