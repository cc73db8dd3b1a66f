"""Runners side by side (issue 13, item 2): per model, img/s and max |ΔP| against ONNX Runtime fp32.

    python benchmarks/bench_runners.py                         # shipped models, every runner available here
    python benchmarks/bench_runners.py --model OU-J --model OU-66 --runners ort-fp32,ort-int8,openvino-fp32
    python benchmarks/bench_runners.py --save-calibration user # what `--runner auto` then reads

The inputs are real simulated cutouts (the training simulator, fixed seed;
cached in the lensengine cache after the first run) through the engine's own
preprocessing, so |ΔP| is measured where the networks are used, not on noise.
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


def summarise(results: list[dict]) -> dict:
    """The best eligible reduced-precision runner per model, and over the 66-px family as a whole.

    Family rate: the five 66-px models scored one after the other, each with
    its runner (time per cutout adds up), against all five in ort-fp32.
    """
    from lensengine.engine.runners import REFERENCE, eligible

    best, t_ref, t_best, t_fastest, fastest_any = {}, 0.0, 0.0, 0.0, {}
    for r in results:
        runners = r["runners"]
        ref = runners[REFERENCE]["img_s"]
        ok = {k: v for k, v in runners.items() if k != REFERENCE and "img_s" in v and eligible(v, ref)}
        name = max(ok, key=lambda k: ok[k]["img_s"]) if ok else REFERENCE
        best[r["model"]] = {"runner": name, "speedup": runners[name]["img_s"] / ref}
        rated = {k: v for k, v in runners.items() if k != REFERENCE and "img_s" in v}
        if rated:
            k = max(rated, key=lambda k: rated[k]["img_s"])
            fastest_any[r["model"]] = {"runner": k, "speedup": rated[k]["img_s"] / ref,
                                       "max_delta_p": rated[k]["max_delta_p"]}
        if r["model"] in SMALL:
            t_ref += 1 / ref
            t_best += 1 / runners[name]["img_s"]
            t_fastest += 1 / (rated[k]["img_s"] if rated else ref)
    out = {"best_eligible": best, "fastest_regardless_of_delta_p": fastest_any}
    if t_ref:
        out["family_66px"] = {"ort_fp32_img_s": 1 / t_ref, "best_eligible_img_s": 1 / t_best,
                              "speedup": t_ref / t_best, "fastest_any_speedup": t_ref / t_fastest,
                              "target_speedup": 2.0}
    return out


def print_table(results: list[dict], names: list[str]) -> None:
    from lensengine.engine.runners import MAX_DELTA_P, REFERENCE

    print(f"{'model':8s} " + " ".join(f"{n:>24s}" for n in names))
    for r in results:
        cells = []
        ref = r["runners"][REFERENCE]["img_s"]
        for n in names:
            v = r["runners"].get(n, {})
            if "img_s" not in v:
                cells.append(f"{'n/a':>24s}")
                continue
            dp = v["max_delta_p"]
            mark = "" if n == REFERENCE else ("✔" if dp is not None and dp <= MAX_DELTA_P else "✘")
            dps = "nan" if dp is None else f"{dp:.4f}"
            cells.append(f"{v['img_s']:7.0f} ({v['img_s'] / ref:4.2f}×) {dps}{mark:1s}".rjust(24))
        print(f"{r['model']:8s} " + " ".join(cells))
    print("cells: img/s (ratio to ort-fp32) max|ΔP|; ✔ within 0.01, ✘ not")
    for r in results:
        for n, v in r["runners"].items():
            if "error" in v:
                print(f"  {r['model']} {n}: not measured ({v['error']})")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=Path, default=None, help="models folder [default: the shipped models]")
    ap.add_argument("--model", action="append", default=None, help="only this model (repeatable)")
    ap.add_argument("--runners", default=None, help="comma-separated runners [default: every one known]")
    ap.add_argument("-n", type=int, default=64, help="simulated cutouts (the fixed set)")
    ap.add_argument("--seed", type=int, default=4242)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--min-seconds", type=float, default=1.0)
    ap.add_argument("--json", type=Path, default=RESULTS)
    ap.add_argument("--save-calibration", choices=("none", "user", "shipped"), default="none",
                    help="also write the measurements as a runner calibration: user (the cache, what "
                         "--runner auto reads here) or shipped (engine/data/runner_calibration.json)")
    args = ap.parse_args(argv)

    from lensengine.engine.preprocess import Preprocessor
    from lensengine.engine.registry import resolve_models
    from lensengine.engine.runners import (RUNNERS, SHIPPED_CALIBRATION, calibration_entries, inputs_digest,
                                           measure, save_calibration)

    entries = resolve_models(args.models, args.model)
    names = args.runners.split(",") if args.runners else list(RUNNERS)
    unknown = [n for n in names if n not in RUNNERS]
    if unknown:
        ap.error(f"unknown runner(s) {unknown}; known: {', '.join(RUNNERS)}")
    bands = simulated_bands(args.n, args.seed)
    prepared = Preprocessor([e.as_spec() for e in entries])(bands, args.n)
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    results = []
    for e in entries:
        x = prepared.inputs[e.name][prepared.usable[e.name]]
        r = measure(e, x, names, batch=args.batch, threads=args.threads, repeats=args.repeats,
                    min_seconds=args.min_seconds)
        r["inputs"] = {"kind": "simulated mixed", "seed": args.seed, "n": int(len(x)), "digest": inputs_digest(x)}
        results.append(r)
        print(f"{e.name}: " + ", ".join(f"{k} {v['img_s']:.0f}/s |ΔP| {v['max_delta_p']}" if "img_s" in v
                                        else f"{k} n/a" for k, v in r["runners"].items()), flush=True)
    report = {"machine": machine(), "load_avg_1min": [load0, os.getloadavg()[0]],
              "seconds": time.perf_counter() - t0, "runners": names, "results": results,
              "summary": summarise(results)}
    print()
    print_table(results, names)
    fam = report["summary"].get("family_66px")
    if fam:
        print(f"66-px family: ort-fp32 {fam['ort_fp32_img_s']:.0f} img/s, best eligible {fam['best_eligible_img_s']:.0f}"
              f" img/s = {fam['speedup']:.2f}× (target 2×; fastest regardless of |ΔP|: "
              f"{fam['fastest_any_speedup']:.2f}×)")
    print(f"machine: {report['machine']['cpu']} ({report['machine']['isa']}, {report['machine']['cpus']} CPUs), "
          f"load average {load0:.1f} -> {os.getloadavg()[0]:.1f}")
    args.json.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.json}")
    if args.save_calibration != "none":
        where = SHIPPED_CALIBRATION if args.save_calibration == "shipped" else None
        print(f"calibration written to {save_calibration(calibration_entries(results), where)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
