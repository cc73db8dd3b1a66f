"""Engine throughput, side by side in one run (issue 4).

Measures on one generated store (default 5 000 cutouts):
  (1) end-to-end `lensengine run` (all models + ensemble, zarr -> catalogue), 1 and 2 workers;
  (2) model-only ONNX Runtime throughput of the same models on in-memory arrays;
  (3) a naive baseline written like the paper's code: per image and per model torch calls,
      float64 scikit-image resize per band (timed on a subset);
  (4) peak memory (RSS of the client plus its workers) for two store sizes;
  (5) the reduced-precision path (torch bf16 autocast) end to end and model-only, with max |dP|.

    python benchmarks/bench_engine.py --models models/published --n 5000 --json bench_engine.json

Prints a table and writes JSON.  Use a quiet machine: the ratios are what count.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil

from lensengine.catalogs.store import CutoutBatch, SurveyStore
from lensengine.engine.models import discover_models
from lensengine.engine.preprocess import Preprocessor
from lensengine.engine.run import RunOptions, execute_run


def make_store(path: Path, n: int, chunk: int = 512, seed: int = 0) -> Path:
    """Survey-like noise with a bright source per cutout (throughput does not depend on content)."""
    rng = np.random.default_rng(seed)
    store = SurveyStore.create(path, survey="benchmark", chunk_size=chunk, overwrite=True)
    for lo in range(0, n, chunk):
        k = min(chunk, n - lo)
        vis = rng.gamma(2.0, 3.0, (k, 200, 200)).astype(np.float32)
        nisp = rng.gamma(2.0, 40.0, (k, 3, 66, 66)).astype(np.float32)
        vis[:, 95:105, 95:105] += 200
        nisp[:, :, 31:35, 31:35] += 2000
        store.append("T0", CutoutBatch(object_id=np.arange(lo, lo + k), ra=rng.uniform(150, 151, k),
                                       dec=rng.uniform(2, 3, k), vis=vis, nisp=nisp, flags=np.zeros(k, np.uint32)))
    return path


class PeakRSS:
    """Samples the RSS of this process and all its children (the Dask workers)."""

    def __init__(self, interval: float = 0.2):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()

    def _sample(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for p in [me, *me.children(recursive=True)]:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            time.sleep(self.interval)

    def __enter__(self):
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def end_to_end(store: Path, models_dir: Path, workers: int, tmp: Path, precision: str = "fp32") -> dict:
    entries = discover_models(models_dir)
    out = tmp / f"cands_w{workers}_{precision}_{store.stem}.fits"
    opts = RunOptions(store=store, out=out, scores=out.with_suffix(".parquet"), models=entries,
                      models_dir=models_dir, workers=workers, progress=False, precision=precision, dashboard=False)
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        summary = execute_run(opts)
        wall = time.perf_counter() - t0
    return {"cutouts": summary.n_cutouts, "wall_s": wall, "rate": summary.n_cutouts / wall,
            "peak_rss_mb": mem.peak / 2**20}


def model_only(models_dir: Path, n: int, precision: str = "fp32", threads: int = 2) -> dict:
    """Seven models on preprocessed in-memory arrays (batch 32), no I/O, no preprocessing."""
    from lensengine.engine.scoring import ChunkTask, _runner

    entries = discover_models(models_dir)
    rng = np.random.default_rng(1)
    n = min(n, 512)
    bands = {"VIS": rng.gamma(2.0, 3.0, (n, 200, 200)).astype(np.float32)}
    bands.update({b: rng.gamma(2.0, 40.0, (n, 66, 66)).astype(np.float32) for b in "YJH"})
    prepared = Preprocessor([e.as_spec() for e in entries])(bands)
    task = ChunkTask("", "", 0, 0, 0, (), "cpu", threads, 32, None, precision)
    per_model, outputs = {}, {}
    total = 0.0
    for e in entries:
        run = _runner(e, task)
        x = prepared.inputs[e.name]
        run(x[:16])
        t0 = time.perf_counter()
        outputs[e.name] = np.concatenate([run(x[i:i + 32]) for i in range(0, n, 32)])
        dt = time.perf_counter() - t0
        per_model[e.name] = n / dt
        total += dt
    return {"rate": n / total, "per_model": per_model, "outputs": outputs}


def naive_baseline(models_dir: Path, n: int = 40) -> dict:
    """Like the paper's code: one image and one model at a time, float64 skimage resize per band."""
    import torch
    from skimage.transform import resize

    from lensengine.training.export import load_torch_model

    torch.set_num_threads(2)
    entries = discover_models(models_dir)
    nets = {e.name: load_torch_model(e.path, e.name) for e in entries}
    rng = np.random.default_rng(2)
    t0 = time.perf_counter()
    for _ in range(n):
        raw = {"VIS": rng.gamma(2.0, 3.0, (200, 200)), **{b: rng.gamma(2.0, 40.0, (66, 66)) for b in "YJH"}}
        for e in entries:
            planes = []
            for b in e.bands:
                img = raw[b] if raw[b].shape[0] == e.stamp else resize(raw[b], (e.stamp, e.stamp))
                planes.append((img - img.min()) / (img.max() - img.min()))
            x = torch.from_numpy(np.stack(planes)[None].astype(np.float32))
            with torch.no_grad():
                torch.softmax(nets[e.name](x), 1)[0, 1].item()
    return {"rate": n / (time.perf_counter() - t0), "cutouts_timed": n}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=Path, required=True, help="model directory (the seven ONNX models)")
    ap.add_argument("--n", type=int, default=5000, help="cutouts in the benchmark store")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--skip-bf16", action="store_true")
    args = ap.parse_args()
    tmp = args.workdir or Path(tempfile.mkdtemp(prefix="bench-engine-"))
    tmp.mkdir(parents=True, exist_ok=True)
    big = tmp / f"bench_{args.n}.zarr"
    half = tmp / f"bench_{args.n // 2}.zarr"
    if not big.exists():
        make_store(big, args.n)
    if not half.exists():
        make_store(half, args.n // 2)

    res: dict = {"n": args.n, "cpu_count": os.cpu_count(), "load_avg_start": os.getloadavg()}
    res["model_only_fp32"] = model_only(args.models, args.n, "fp32")
    res["e2e_fp32_w1"] = end_to_end(big, args.models, 1, tmp)
    res["e2e_fp32_w2"] = end_to_end(big, args.models, 2, tmp)
    res["e2e_fp32_w1_half"] = end_to_end(half, args.models, 1, tmp)
    res["naive"] = naive_baseline(args.models)
    if not args.skip_bf16:
        res["model_only_bf16"] = model_only(args.models, args.n, "bf16")
        dp = max(float(np.nanmax(np.abs(res["model_only_bf16"]["outputs"][k] - res["model_only_fp32"]["outputs"][k])))
                 for k in res["model_only_fp32"]["outputs"])
        res["bf16_max_abs_dp"] = dp
        res["e2e_bf16_w1"] = end_to_end(big, args.models, 1, tmp, "bf16")
    res["load_avg_end"] = os.getloadavg()
    for key in ("model_only_fp32", "model_only_bf16"):
        if key in res:
            res[key].pop("outputs")

    mo = res["model_only_fp32"]["rate"]
    rows = [
        ("(2) model-only ONNX Runtime fp32, 7 models", res["model_only_fp32"]["rate"], 1.0, ""),
        ("(1) end-to-end run fp32, 1 worker", res["e2e_fp32_w1"]["rate"], res["e2e_fp32_w1"]["rate"] / mo,
         f"{res['e2e_fp32_w1']['peak_rss_mb']:.0f} MB peak ({args.n} cutouts)"),
        ("(1) end-to-end run fp32, 2 workers", res["e2e_fp32_w2"]["rate"], res["e2e_fp32_w2"]["rate"] / mo,
         f"{res['e2e_fp32_w2']['peak_rss_mb']:.0f} MB peak"),
        ("(4) end-to-end fp32, 1 worker, half the store", res["e2e_fp32_w1_half"]["rate"],
         res["e2e_fp32_w1_half"]["rate"] / mo, f"{res['e2e_fp32_w1_half']['peak_rss_mb']:.0f} MB peak "
                                               f"({args.n // 2} cutouts)"),
        ("(3) naive per-image torch + skimage float64", res["naive"]["rate"], res["naive"]["rate"] / mo,
         f"timed on {res['naive']['cutouts_timed']} cutouts"),
    ]
    if "e2e_bf16_w1" in res:
        rows += [("(5) model-only torch bf16, 7 models", res["model_only_bf16"]["rate"],
                  res["model_only_bf16"]["rate"] / mo, f"max |dP| vs fp32 {res['bf16_max_abs_dp']:.4f}"),
                 ("(5) end-to-end run bf16, 1 worker", res["e2e_bf16_w1"]["rate"], res["e2e_bf16_w1"]["rate"] / mo,
                  f"{res['e2e_bf16_w1']['peak_rss_mb']:.0f} MB peak")]
    print(f"\nlensengine engine benchmark: {args.n} cutouts, {os.cpu_count()} cores, "
          f"load {res['load_avg_start'][0]:.1f} -> {res['load_avg_end'][0]:.1f}")
    print(f"{'measurement':48s} {'cutouts/s':>10s} {'vs (2)':>7s}  notes")
    for name, rate, ratio, note in rows:
        print(f"{name:48s} {rate:10.1f} {ratio:7.2f}  {note}")
    print(f"end-to-end vs naive baseline: {res['e2e_fp32_w1']['rate'] / res['naive']['rate']:.1f}x; "
          f"2 workers vs 1: {res['e2e_fp32_w2']['rate'] / res['e2e_fp32_w1']['rate']:.2f}x")
    print("per-model fp32 img/s: " + ", ".join(f"{k} {v:.0f}" for k, v in res["model_only_fp32"]["per_model"].items()))
    if "model_only_bf16" in res:
        print("per-model bf16 img/s: " + ", ".join(f"{k} {v:.0f}" for k, v in
                                                   res["model_only_bf16"]["per_model"].items()))
    if args.json:
        args.json.write_text(json.dumps(res, indent=1, default=float))


if __name__ == "__main__":
    main()
