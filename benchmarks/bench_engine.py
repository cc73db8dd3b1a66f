"""Engine throughput, side by side in one run (issue 4).

Measures on one generated store (default 5 000 cutouts):
  (1) end-to-end `lensengine run` (all models + ensemble, zarr -> catalogue), 1 and 2 workers, each in its
      own process as a user runs it, and the scoring core alone in this process (warm sessions);
  (2) model-only ONNX Runtime throughput of the same models on in-memory arrays, before and after (1)
      (the bound is their mean: on a shared machine the load moves);
  (3) a naive baseline written like the paper's code: per image and per model torch calls,
      float64 scikit-image resize per band (timed on a subset);
  (4) peak memory (RSS of the `lensengine run` process plus its Dask workers and scheduler) for two store
      sizes 10x apart (n and n / 10);
  (5) the reduced-precision path (torch bf16 autocast) end to end and model-only, with max |dP|.

    python benchmarks/bench_engine.py --models models/published --n 5000 --json bench_engine.json

``--overlap`` measures only issue 13's item 4, end to end against the bound with 1 and 2 workers and the
cascade, on real stores (the cascade's pass rate depends on the cutouts):

    python benchmarks/bench_engine.py --models models --overlap --source sky1.zarr --subset 1024 --subset 4096 \
        --json results_overlap.json

The bound scores the store's own first 512 cutouts (preprocessed as the run does), before and after the runs;
each run also reports its CPU split (``cpu_split``): the share of the cores' time its network threads held over
the whole command, which does not move with a machine whose speed drifts between measurements.

Prints a table and writes JSON.  Use a quiet machine: the ratios are what count.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil

from lensengine.catalogs.store import CutoutBatch, SurveyStore
from lensengine.engine.models import discover_models
from lensengine.engine.preprocess import Preprocessor


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
    """Samples the summed RSS of a process tree: ``pid`` (default this process) and all its children.

    Also keeps each process's last-seen CPU time (user + system): ``cpu_s`` is the tree's CPU seconds, which
    on a shared machine say more than wall time about what the run itself costs.
    """

    def __init__(self, interval: float = 0.2, pid: int | None = None):
        self.interval, self.pid, self.peak, self._stop = interval, pid, 0, threading.Event()
        self._cpu: dict[int, float] = {}
        self._thread_cpu: dict[tuple[int, int], float] = {}

    def busiest_threads(self, k: int = 8) -> list[float]:
        """CPU seconds of the tree's ``k`` busiest threads, most first (a run's network threads lead)."""
        return sorted(self._thread_cpu.values(), reverse=True)[:k]

    @property
    def cpu_s(self) -> float:
        return sum(self._cpu.values())

    def _sample(self) -> None:
        root = psutil.Process(self.pid)
        while not self._stop.is_set():
            total = 0
            try:
                tree = [root, *root.children(recursive=True)]
            except psutil.Error:
                tree = []
            for p in tree:
                try:
                    total += p.memory_info().rss
                    t = p.cpu_times()
                    self._cpu[p.pid] = t.user + t.system
                    for th in p.threads():
                        self._thread_cpu[(p.pid, th.id)] = th.user_time + th.system_time
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


def end_to_end(store: Path, models_dir: Path, workers: int, tmp: Path, precision: str = "fp32",
               cascade: bool = False, threshold: float | None = None, code: Path | None = None,
               ensemble: str | None = None) -> dict:
    """``lensengine run`` as a user runs it, in its own process: rate and the peak RSS of it and its workers.

    ``rate`` is over the whole command (interpreter start, cluster start, scoring, merge); ``scoring_rate``
    over the run's scoring stage (cluster start included, final merge not), from its ``--json`` summary.
    ``cascade`` adds ``--cascade``; ``pass_fraction`` is then the share of cutouts sent on past its gate.
    ``code`` runs another version of lensengine: a folder holding its ``lensengine`` package, put first on
    ``PYTHONPATH`` (for the command and its workers).  ``ensemble`` is passed as ``--ensemble``.
    """
    out = tmp / f"cands_w{workers}_{precision}{'_cascade' if cascade else ''}{'_base' if code else ''}_{store.stem}.fits"
    env = None
    if code is not None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(code), *filter(None, [os.environ.get("PYTHONPATH")])])}
    as_json = "--json" in run_options(code)  # an older version may lack it: then its rate is n / wall
    cmd = [sys.executable, "-m", "lensengine.engine", "-q", "run", "--tiles", str(store), "--models", str(models_dir),
           "--out", str(out), "--scores", str(out.with_suffix("")) + "_scores", "--workers", str(workers),
           "--precision", precision, "--no-dashboard", "--restart"] + (["--json"] if as_json else [])
    cmd += ["--cascade"] if cascade else []
    cmd += ["--threshold", str(threshold)] if threshold is not None else []
    cmd += ["--ensemble", ensemble] if ensemble is not None else []
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    with PeakRSS(pid=proc.pid) as mem:
        stdout, stderr = proc.communicate()
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {stderr[-2000:]}")
    if not as_json:
        n = SurveyStore.open(store).total_cutouts()
        return {"cutouts": n, "wall_s": wall, "rate": n / wall, "peak_rss_mb": mem.peak / 2**20,
                "cpu_ms_per_cutout": 1e3 * mem.cpu_s / n, "pass_fraction": 1.0}
    summary = json.loads(stdout)
    n = summary["n_cutouts"]
    skipped = summary.get("flag_counts", {}).get("CASCADE_SKIPPED", 0)
    return {"cutouts": n, "wall_s": wall, "rate": n / wall, "scoring_s": summary["seconds"],
            "scoring_rate": n / summary["seconds"], "peak_rss_mb": mem.peak / 2**20,
            "cpu_ms_per_cutout": 1e3 * mem.cpu_s / n, "cpu_s": mem.cpu_s, "busiest_threads_cpu_s": mem.busiest_threads(),
            "candidates": summary["n_candidates"], "pass_fraction": 1 - skipped / n}


_OPTIONS: dict = {}


def run_options(code: Path | None) -> str:
    """``lensengine run --help`` of this version, or of the one in ``code`` (what options it has)."""
    if code not in _OPTIONS:
        env = None if code is None else {**os.environ, "PYTHONPATH": str(code)}
        _OPTIONS[code] = subprocess.run([sys.executable, "-m", "lensengine.engine", "run", "--help"], env=env,
                                        capture_output=True, text=True).stdout
    return _OPTIONS[code]


def first_pieces(src: SurveyStore, n: int):
    """``(tile, batch)`` pieces, one per chunk, holding the first ``n`` cutouts of ``src`` (its first tiles);
    fewer when the store holds fewer."""
    for tile in src.tiles:
        for start, stop in src.chunk_slices(tile):
            if n <= 0:
                return
            stop = min(stop, start + n)
            yield tile, src.read(tile, start, stop)
            n -= stop - start


def first_cutouts(store: Path, n: int) -> dict[str, np.ndarray]:
    """The bands of the first ``n`` cutouts of ``store`` (across its tiles), in memory."""
    batch = CutoutBatch.concatenate([piece for _, piece in first_pieces(SurveyStore.open(store), n)])
    return {b: a for b, a in batch.bands().items() if a is not None}


def model_only(models_dir: Path, n: int, precision: str = "fp32", threads: int = 2, lanes: int = 1,
               store: Path | None = None) -> dict:
    """Seven models on preprocessed in-memory arrays (sub-batches of 32, in the engine's calls), no I/O, no
    preprocessing.

    ``lanes`` 1: one model at a time on ``threads`` threads (``per_model`` rates); more: the run's lanes (the
    engine's own launcher, networks side by side on ``threads // lanes`` threads each; no per-model rates).
    ``store``: the inputs are its first ``n`` cutouts, preprocessed (the pixels a run of it scores); without
    it, random gamma-distributed bands.
    """
    from lensengine.engine.preprocess import PreparedBatch
    from lensengine.engine.scoring import _launch, call_size, make_runner

    entries = discover_models(models_dir)
    n = min(n, 512)
    if store is not None:
        bands = first_cutouts(store, n)
        n = len(next(iter(bands.values())))
    else:
        rng = np.random.default_rng(1)
        bands = {"VIS": rng.gamma(2.0, 3.0, (n, 200, 200)).astype(np.float32)}
        bands.update({b: rng.gamma(2.0, 40.0, (n, 66, 66)).astype(np.float32) for b in "YJH"})
    prepared = Preprocessor([e.as_spec() for e in entries])(bands, n)
    runners = {e.name: make_runner(e, precision, "cpu", max(1, threads // lanes)) for e in entries}
    for e in entries:
        runners[e.name](prepared.inputs[e.name][:16])
    if lanes > 1:
        t0, c0 = time.perf_counter(), time.process_time()
        waiting: list = []
        for i in range(0, n, 32):
            piece = PreparedBatch({k: v[i:i + 32] for k, v in prepared.inputs.items()},
                                  {k: v[i:i + 32] for k, v in prepared.usable.items()}, prepared.flags[i:i + 32])
            jobs = _launch(entries, runners, piece, lanes)
            for _, job in waiting:
                job.result()
            waiting = jobs
        for _, job in waiting:
            job.result()
        dt = time.perf_counter() - t0
        return {"rate": n / dt, "lanes": lanes, "cpu_ms_per_cutout": 1e3 * (time.process_time() - c0) / n}
    per_model, outputs = {}, {}
    total = cpu = 0.0
    for e in entries:
        run, x = runners[e.name], prepared.inputs[e.name]
        t0, c0 = time.perf_counter(), time.process_time()
        step = call_size(x.shape, 32)  # the engine's calls: sub-batches of 32, the 200-px networks' split in two
        outputs[e.name] = np.concatenate([run(x[i:i + step]) for i in range(0, n, step)])
        dt = time.perf_counter() - t0
        cpu += time.process_time() - c0
        per_model[e.name] = n / dt
        total += dt
    return {"rate": n / total, "per_model": per_model, "outputs": outputs, "cpu_ms_per_cutout": 1e3 * cpu / n}


def core_in_process(store: Path, models_dir: Path, threads: int = 2) -> dict:
    """The scoring core alone (``score_store``: read, preprocess, networks, ensemble) in this process, its
    sessions already warm: the steady state of one worker, without cluster start-up or the merge."""
    from lensengine.engine.scoring import score_store

    entries = discover_models(models_dir)
    t0, c0 = time.perf_counter(), time.process_time()
    n = sum(len(rows["ROW"]) for rows in score_store(store, entries, None, device="cpu", threads=threads))
    return {"cutouts": n, "rate": n / (time.perf_counter() - t0),
            "cpu_ms_per_cutout": 1e3 * (time.process_time() - c0) / n}


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


def subset_store(source: Path, dest: Path, n: int, chunk_size: int | None = None) -> Path:
    """The first ``n`` cutouts of ``source`` (its first tiles, truth columns kept) as a new store at ``dest``,
    in chunks of ``chunk_size`` (default: the source's)."""
    src = SurveyStore.open(source)
    out = SurveyStore.create(dest, survey=str(src.attrs.get("survey", "subset")), bands=src.bands,
                             chunk_size=chunk_size or src.chunk_size, truth_columns=src.truth_columns,
                             overwrite=True)
    copied = 0
    for tile, piece in first_pieces(src, n):
        out.append(tile, piece)
        copied += len(piece)
    if copied < n:
        raise ValueError(f"store {source} holds fewer than {n} cutouts")
    return dest


def cpu_split(run: dict, cores: int | None = None, network_threads: int | None = None) -> dict:
    """Where a whole ``lensengine run``'s CPU went: its ``network_threads`` busiest threads (default: one per
    core: the two lanes of one worker, or one network thread in each of two workers, on 2 cores) against the
    rest (reading, preprocessing, Dask, start-up, the merge) and the cores' idle time.

    ``network_share`` is the share of the cores' time the networks held over the whole command: the run's
    rate against a model-only bound measured at the networks' speed *during* the run, which on a machine whose
    speed drifts (a shared VM) is steadier than the ratio of two rates measured minutes apart.  Since stop 42
    the lanes of a one-worker run on the CPU also read and preprocess (engine/scoring.py: ``_on_lanes``), so
    there these threads' time holds that work too and ``rest_ms`` is Dask, start-up and the merge only.
    """
    cores = cores or os.cpu_count() or 1
    k = network_threads or cores
    net = sum(run["busiest_threads_cpu_s"][:k])
    available = cores * run["wall_s"]
    return {"network_share": net / available, "network_ms": 1e3 * net / run["cutouts"],
            "rest_ms": 1e3 * (run["cpu_s"] - net) / run["cutouts"],
            "idle_share": max(0.0, available - run["cpu_s"]) / available}


def cascade_bound(models_dir: Path, per_model: dict[str, float], threshold: float, pass_fraction: float) -> float:
    """The cascade's model-only bound (cutouts/s): its cheap networks on every cutout, the others on the share
    ``pass_fraction`` that the run sent on (the split of ``cascade.json``, as the run makes it)."""
    from lensengine.engine.cascade import plan_cascade
    from lensengine.engine.ensemble import MeanEnsemble

    entries = discover_models(models_dir)
    cascade = plan_cascade(entries, MeanEnsemble(), threshold, models_dir)
    seconds = sum(1 / per_model[m] for m in cascade.cheap) + pass_fraction * sum(1 / per_model[m]
                                                                                 for m in cascade.expensive)
    return 1 / seconds


def overlap(args, tmp: Path) -> dict:
    """Issue 13 item 4: ``lensengine run`` end to end against the model-only bound, side by side in one run.

    Per store: the seven networks' model-only bound (before and after the runs: the load moves), then
    ``lensengine run`` with 1 and 2 workers and with ``--cascade`` (1 worker) at ``--threshold``, each
    ``--repeat`` times in turn; the cascade against its own bound (cheap networks on every cutout, the
    expensive pair on the share it sent on) and against the full run.
    """
    stores = list(args.tiles)
    for n in args.subset:
        dest = tmp / f"subset_{n}.zarr"
        if not dest.exists():
            subset_store(args.source, dest, n)
        stores.append(dest)
    # --precision auto: the runs take the runners calibrated for this CPU, and so does the bound
    plan = args.precision
    if plan == "auto":
        from lensengine.engine.runners import choose_runners, encode_plan

        plan = encode_plan(choose_runners(discover_models(args.models), "auto", "cpu"))
    res: dict = {"cpu_count": os.cpu_count(), "threshold": args.threshold, "load_avg_start": os.getloadavg(),
                 "precision": args.precision, "runner_plan": plan, "stores": {}}
    for store in stores:
        # the bound scores the store's own first cutouts (the run's pixels), before and after the runs
        before = model_only(args.models, 512, plan, store=store)
        before_lanes = model_only(args.models, 512, plan, lanes=2, store=store)
        runs: dict[str, list] = {"w1": [], "w2": [], "cascade_w1": []}
        if args.baseline:
            runs.update(baseline_w1=[], baseline_cascade_w1=[])
        prec, ens = args.precision, args.ensemble
        # the baseline runs with the same --precision and --ensemble where it has them (else its own defaults)
        base_options = run_options(args.baseline) if args.baseline else ""
        base = {"precision": prec if prec == "fp32" or "[auto|" in base_options else "fp32",
                "ensemble": ens if "--ensemble" in base_options else None,
                "threshold": args.threshold, "code": args.baseline}
        for _ in range(args.repeat):
            if args.baseline:
                runs["baseline_w1"].append(end_to_end(store, args.models, 1, tmp, **base))
                if "--cascade" in base_options:  # a version from before the cascade has none
                    runs["baseline_cascade_w1"].append(end_to_end(store, args.models, 1, tmp, cascade=True, **base))
            runs["w1"].append(end_to_end(store, args.models, 1, tmp, prec, threshold=args.threshold, ensemble=ens))
            runs["w2"].append(end_to_end(store, args.models, 2, tmp, prec, threshold=args.threshold, ensemble=ens))
            runs["cascade_w1"].append(end_to_end(store, args.models, 1, tmp, prec, cascade=True,
                                                 threshold=args.threshold, ensemble=ens))
        after = model_only(args.models, 512, plan, store=store)
        after_lanes = model_only(args.models, 512, plan, lanes=2, store=store)
        one_lane = (before["rate"] + after["rate"]) / 2
        two_lanes = (before_lanes["rate"] + after_lanes["rate"]) / 2
        per_model = {m: (before["per_model"][m] + after["per_model"][m]) / 2 for m in before["per_model"]}
        # the bound is the faster way of running the networks alone: one at a time on two threads, or two lanes
        entry: dict = {"bound": max(one_lane, two_lanes), "bound_one_lane": one_lane, "bound_two_lanes": two_lanes,
                       "bound_before": before["rate"], "bound_after": after["rate"],
                       "bound_two_lanes_before": before_lanes["rate"], "bound_two_lanes_after": after_lanes["rate"],
                       "per_model": per_model}
        for key, results in runs.items():
            if not results:  # the baseline's cascade, for a version without one
                continue
            rate = float(np.mean([r["rate"] for r in results]))
            entry[key] = {"rate": rate, "rates": [r["rate"] for r in results], "runs": results}
            if key in ("w1", "w2"):
                entry[key]["cpu_split"] = cpu_split(results[0])
        pass_fraction = float(np.mean([r["pass_fraction"] for r in runs["cascade_w1"]]))
        entry["cascade_bound"] = cascade_bound(args.models, per_model, args.threshold, pass_fraction)
        entry["cascade_pass_fraction"] = pass_fraction
        res["stores"][str(store)] = entry
    res["load_avg_end"] = os.getloadavg()

    print(f"\nlensengine run end to end against the model-only bound: {os.cpu_count()} cores, threshold "
          f"{args.threshold}, load {res['load_avg_start'][0]:.1f} -> {res['load_avg_end'][0]:.1f}, "
          f"{args.repeat} run(s) each")
    print(f"{'store':28s} {'cutouts':>7s} {'bound':>7s} {'1 worker':>15s} {'2 workers':>15s} "
          f"{'cascade':>15s} {'cascade bound':>14s} {'cascade x full':>14s}")
    for store, e in res["stores"].items():
        n = e["w1"]["runs"][0]["cutouts"]
        print(f"{Path(store).name:28s} {n:7d} {e['bound']:7.1f} "
              f"{e['w1']['rate']:7.1f} ({e['w1']['rate'] / e['bound']:.2f}) "
              f"{e['w2']['rate']:7.1f} ({e['w2']['rate'] / e['bound']:.2f}) "
              f"{e['cascade_w1']['rate']:7.1f} ({e['cascade_w1']['rate'] / e['cascade_bound']:.2f}) "
              f"{e['cascade_bound']:7.1f} ({100 * e['cascade_pass_fraction']:.1f} %) "
              f"{e['cascade_w1']['rate'] / e['w1']['rate']:14.2f}")
    print("(rates in cutouts/s over the whole command; in brackets: x its model-only bound; the bound is the "
          "faster of one network at a time on 2 threads and two lanes of 1 thread, each the mean of the measurements "
          "before and after the runs; the cascade's bound is from the one-at-a-time per-model rates)")
    for store, e in res["stores"].items():
        print(f"{Path(store).name}: model-only bound, one lane {e['bound_one_lane']:.1f}, two lanes "
              f"{e['bound_two_lanes']:.1f} cutouts/s")
        for key in ("w1", "w2"):
            split = e[key]["cpu_split"]
            print(f"  {key}: the network threads (1 worker: with the reading and preprocessing) held "
                  f"{split['network_share']:.3f} of the cores' time over the "
                  f"whole command ({split['network_ms']:.1f} ms of CPU per cutout), everything else "
                  f"{split['rest_ms']:.1f} ms per cutout, idle {split['idle_share']:.3f}")
    if args.baseline:
        for store, e in res["stores"].items():
            base_cascade = e.get("baseline_cascade_w1")
            print(f"{Path(store).name}: baseline ({args.baseline}) 1 worker {e['baseline_w1']['rate']:.1f} "
                  f"({e['baseline_w1']['rate'] / e['bound']:.2f} of the bound)"
                  + (f", --cascade {base_cascade['rate']:.1f}" if base_cascade else ", no --cascade")
                  + f"; now x baseline: 1 worker {e['w1']['rate'] / e['baseline_w1']['rate']:.2f}"
                  + (f", cascade {e['cascade_w1']['rate'] / base_cascade['rate']:.2f}" if base_cascade else "")
                  + f", cascade x baseline full run {e['cascade_w1']['rate'] / e['baseline_w1']['rate']:.2f}")
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=Path, required=True, help="model directory (the seven ONNX models)")
    ap.add_argument("--n", type=int, default=5000, help="cutouts in the benchmark store")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--skip-bf16", action="store_true")
    ap.add_argument("--overlap", action="store_true",
                    help="only the end-to-end runs against the bound (issue 13 item 4): 1 and 2 workers and "
                         "--cascade, per store given by --tiles or --subset")
    ap.add_argument("--tiles", type=Path, action="append", default=[], help="(--overlap) a store to run on")
    ap.add_argument("--subset", type=int, action="append", default=[],
                    help="(--overlap) run on the first N cutouts of --source (repeatable: several sizes)")
    ap.add_argument("--source", type=Path, default=None, help="(--overlap) the store --subset takes cutouts from")
    ap.add_argument("--threshold", type=float, default=0.770,
                    help="(--overlap) the runs' --threshold (default: the sky FPR-1 %% threshold of the mean)")
    ap.add_argument("--repeat", type=int, default=1, help="(--overlap) runs of each kind, in turn")
    ap.add_argument("--precision", choices=("fp32", "auto"), default="fp32",
                    help="(--overlap) the runs' --precision; auto: the runners calibrated for this CPU, the bound "
                         "measured with the same runners")
    ap.add_argument("--ensemble", default=None,
                    help="(--overlap) the runs' --ensemble, e.g. mean: the cascade's lossless bound needs the mean "
                         "(and the baseline, where it has the option)")
    ap.add_argument("--baseline", type=Path, default=None,
                    help="(--overlap) also run another version (1 worker, full and --cascade) in turn with these: "
                         "a folder holding its lensengine package, e.g. made from `git archive REV` by copying "
                         "src/lensengine and linking engine, catalogs, plugins, training, models into it")
    args = ap.parse_args()
    tmp = args.workdir or Path(tempfile.mkdtemp(prefix="bench-engine-"))
    tmp.mkdir(parents=True, exist_ok=True)
    if args.overlap:
        if args.subset and args.source is None:
            ap.error("--subset needs --source")
        if not args.tiles and not args.subset:
            ap.error("--overlap needs --tiles or --subset")
        res = overlap(args, tmp)
        if args.json:
            args.json.write_text(json.dumps(res, indent=1, default=float))
        return
    big = tmp / f"bench_{args.n}.zarr"
    small = tmp / f"bench_{args.n // 10}.zarr"
    if not big.exists():
        make_store(big, args.n)
    if not small.exists():
        make_store(small, args.n // 10)

    res: dict = {"n": args.n, "cpu_count": os.cpu_count(), "load_avg_start": os.getloadavg()}
    res["model_only_fp32"] = model_only(args.models, args.n, "fp32")
    res["core_fp32"] = core_in_process(big, args.models)
    res["e2e_fp32_w1"] = end_to_end(big, args.models, 1, tmp)
    res["e2e_fp32_w2"] = end_to_end(big, args.models, 2, tmp)
    res["e2e_fp32_w1_tenth"] = end_to_end(small, args.models, 1, tmp)
    # the bound again after the end-to-end runs: on a shared machine the load moves, so (2) is their mean
    after = model_only(args.models, args.n, "fp32")
    res["model_only_fp32"]["rate_before"] = res["model_only_fp32"]["rate"]
    res["model_only_fp32"]["rate_after"] = after["rate"]
    res["model_only_fp32"]["rate"] = (res["model_only_fp32"]["rate"] + after["rate"]) / 2
    res["model_only_fp32"]["cpu_ms_per_cutout"] = (res["model_only_fp32"]["cpu_ms_per_cutout"]
                                                   + after["cpu_ms_per_cutout"]) / 2
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
        ("(2) model-only ONNX Runtime fp32, 7 models", res["model_only_fp32"]["rate"], 1.0,
         f"mean of {res['model_only_fp32']['rate_before']:.1f} before and {res['model_only_fp32']['rate_after']:.1f} "
         f"after the end-to-end runs"),
        ("(1) scoring core in this process, warm sessions", res["core_fp32"]["rate"], res["core_fp32"]["rate"] / mo,
         "one worker's steady state: no cluster start, no merge"),
        ("(1) end-to-end run fp32, 1 worker", res["e2e_fp32_w1"]["rate"], res["e2e_fp32_w1"]["rate"] / mo,
         f"{res['e2e_fp32_w1']['peak_rss_mb']:.0f} MB peak ({args.n} cutouts)"),
        ("(1) end-to-end run fp32, 2 workers", res["e2e_fp32_w2"]["rate"], res["e2e_fp32_w2"]["rate"] / mo,
         f"{res['e2e_fp32_w2']['peak_rss_mb']:.0f} MB peak"),
        ("(1) the same runs by their scoring clock, 1 worker", res["e2e_fp32_w1"]["scoring_rate"],
         res["e2e_fp32_w1"]["scoring_rate"] / mo, "the run's scoring stage: cluster start included, final merge not"),
        ("(1) the same runs by their scoring clock, 2 workers", res["e2e_fp32_w2"]["scoring_rate"],
         res["e2e_fp32_w2"]["scoring_rate"] / mo, ""),
        ("(4) end-to-end fp32, 1 worker, a tenth of the store", res["e2e_fp32_w1_tenth"]["rate"],
         res["e2e_fp32_w1_tenth"]["rate"] / mo, f"{res['e2e_fp32_w1_tenth']['peak_rss_mb']:.0f} MB peak "
                                                f"({args.n // 10} cutouts)"),
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
    cpu = res["model_only_fp32"]["cpu_ms_per_cutout"]
    print(f"CPU ms per cutout (all processes of the run; the share of it that is the networks): model-only {cpu:.1f}; "
          + "; ".join(f"{k} {res[k]['cpu_ms_per_cutout']:.1f} ({cpu / res[k]['cpu_ms_per_cutout']:.2f})"
                      for k in ("core_fp32", "e2e_fp32_w1", "e2e_fp32_w2")))
    print("per-model fp32 img/s: " + ", ".join(f"{k} {v:.0f}" for k, v in res["model_only_fp32"]["per_model"].items()))
    if "model_only_bf16" in res:
        print("per-model bf16 img/s: " + ", ".join(f"{k} {v:.0f}" for k, v in
                                                   res["model_only_bf16"]["per_model"].items()))
    if args.json:
        args.json.write_text(json.dumps(res, indent=1, default=float))


if __name__ == "__main__":
    main()
