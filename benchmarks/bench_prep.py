"""The scoring worker's CPU outside the networks, step by step, old and new way side by side in one run.

    python benchmarks/bench_prep.py --tiles sky4096.zarr --json results_prep.json

1. Reading a store piece by piece as a run does (128 cutouts a read, IDs and images): the direct shard
   reader (``catalogs/_shard_read.py``) against zarr's own read (``LENSENGINE_DIRECT_READ=off``), alone
   and beside two busy threads (what a run's two network lanes are to the read).
2. Resampling a 32-cutout sub-batch, per plane: the banded products of ``resize_batch`` against the dense
   matrix products it replaced (the same matrices; the difference in units of the result's float32 spacing).
3. The whole preprocessing of a sub-batch for the seven networks (``Preprocessor``, the worker's pool);
   with ``--sub-batches`` also at other sizes, in the engine's slices of ``PREP_SLICE`` and whole.

CPU milliseconds per cutout (the process's CPU time, so zarr's own threads count); best of ``--repeat``.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from pathlib import Path

import numpy as np

from lensengine.catalogs._shard_read import SWITCH
from lensengine.catalogs.store import SurveyStore
from lensengine.engine import preprocess
from lensengine.engine.preprocess import PREP_SLICE, _blas, _resize_matrix32, resize_batch
from lensengine.engine.registry import resolve_models
from lensengine.engine.scoring import READ_PIECE, _sub_batches, preprocessor_for

REPO = Path(__file__).resolve().parents[1]


def cpu_per_cutout(fn, n: int, repeat: int, clock=time.process_time) -> float:
    """Best-of-``repeat`` milliseconds per cutout of ``fn()``, which handles ``n`` cutouts, on ``clock`` (the
    process's CPU time; beside busy threads, which it would include, the wall clock)."""
    best = float("inf")
    for _ in range(repeat):
        c0 = clock()
        fn()
        best = min(best, clock() - c0)
    return 1e3 * best / n


class BusyThreads:
    """Two threads multiplying matrices on one BLAS thread each (the GIL released), like two network lanes."""

    def __init__(self, k: int = 2):
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._spin, daemon=True) for _ in range(k)]
        self.cpu = [0.0] * k

    def _spin(self) -> None:
        a = np.random.default_rng(0).random((256, 256), np.float32)
        while not self.stop.is_set():
            a @ a

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join()


def bench_read(path: Path, n: int, repeat: int) -> dict:
    out = {}
    for way, switch in (("direct", "on"), ("zarr", "off")):
        os.environ[SWITCH] = switch
        store = SurveyStore.open(path)
        tile = store.tiles[0]

        def read():
            for a in range(0, n, READ_PIECE):
                store.read(tile, a, min(a + READ_PIECE, n))

        out[way] = {"cpu_ms": cpu_per_cutout(read, n, repeat)}
        with BusyThreads():
            out[way]["wall_ms_beside_two_busy_threads"] = cpu_per_cutout(read, n, repeat, time.perf_counter)
    os.environ.pop(SWITCH, None)
    return out


def bench_resize(repeat: int) -> dict:
    rng = np.random.default_rng(0)
    out = {}
    for n_in, n_out in ((200, 66), (66, 200)):
        x = rng.gamma(2.0, 3.0, (32, n_in, n_in)).astype(np.float32)
        a = _resize_matrix32(n_in, n_out)

        def dense():
            with _blas().limit(limits=1, user_api="blas"):
                return np.matmul(np.matmul(a, x), a.T)

        ref, got = dense(), resize_batch(x, n_out)
        ulps = np.abs(got - ref) / np.spacing(np.abs(ref).astype(np.float32))
        out[f"{n_in}->{n_out}"] = {"banded_ms": cpu_per_cutout(lambda: resize_batch(x, n_out), 32, repeat * 20),
                                   "dense_ms": cpu_per_cutout(dense, 32, repeat * 20),
                                   "max_ulps": float(ulps.max())}
    return out


def bench_preprocess(path: Path, models_dir: Path, n: int, repeat: int, size: int = 32) -> float:
    """Best-of-``repeat`` ms CPU per cutout of preprocessing ``n`` cutouts in sub-batches of ``size``."""
    return preprocess_rounds(path, models_dir, n, repeat, size)[PREP_SLICE][0]


def preprocess_rounds(path: Path, models_dir: Path, n: int, repeat: int, size: int = 32,
                      slices: tuple[int, ...] = (PREP_SLICE,)) -> dict[int, list[float]]:
    """ms CPU per cutout of each of ``repeat`` rounds (sorted), ``n`` cutouts in sub-batches of ``size``, per
    value of ``PREP_SLICE`` in ``slices`` (the rounds of the values interleaved, after one warm-up round each)."""
    store = SurveyStore.open(path)
    batch = store.read(store.tiles[0], 0, n)
    prep = preprocessor_for(tuple(resolve_models(str(models_dir))))
    subs = list(_sub_batches(batch, 0, size))

    def run():
        kept = []
        for lo, hi, bands, _ in subs:
            kept = [*kept[-2:], prep(bands, hi - lo)]  # three alive at a time, as in a run

    rounds: dict[int, list[float]] = {k: [] for k in slices}
    try:
        for r in range(repeat + 1):
            for k in slices:
                preprocess.PREP_SLICE = k
                c0 = time.process_time()
                run()
                if r:
                    rounds[k].append(1e3 * (time.process_time() - c0) / n)
    finally:
        preprocess.PREP_SLICE = PREP_SLICE
    return {k: sorted(v) for k, v in rounds.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiles", type=Path, required=True, help="a survey store (its first tile is read)")
    ap.add_argument("--models", type=Path, default=REPO / "models", help="model directory (default: shipped)")
    ap.add_argument("-n", type=int, default=1024, help="cutouts read and preprocessed (default 1024)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--sub-batches", default="",
                    help="also preprocess in sub-batches of these sizes (comma list, e.g. 32,256,1024): the CPU "
                         "side of --batch-size (a GPU run's sub-batches)")
    args = ap.parse_args()
    n = min(args.n, SurveyStore.open(args.tiles).n_cutouts(SurveyStore.open(args.tiles).tiles[0]))
    res = {"cpu_count": os.cpu_count(), "cutouts": n, "read": bench_read(args.tiles, n, args.repeat),
           "resize": bench_resize(args.repeat), "preprocess_ms": bench_preprocess(args.tiles, args.models, n, args.repeat)}
    r = res["read"]
    print(f"read, {READ_PIECE} cutouts a piece ({n} cutouts), ms per cutout: direct {r['direct']['cpu_ms']:.3f} CPU, "
          f"zarr {r['zarr']['cpu_ms']:.3f} CPU ({r['zarr']['cpu_ms'] / r['direct']['cpu_ms']:.2f}x); beside two busy "
          f"threads, wall: direct {r['direct']['wall_ms_beside_two_busy_threads']:.3f}, zarr "
          f"{r['zarr']['wall_ms_beside_two_busy_threads']:.3f} "
          f"({r['zarr']['wall_ms_beside_two_busy_threads'] / r['direct']['wall_ms_beside_two_busy_threads']:.2f}x)")
    for key, v in res["resize"].items():
        print(f"resample {key} (32 cutouts, one plane), ms CPU per cutout: banded {v['banded_ms']:.4f}, dense "
              f"{v['dense_ms']:.4f} ({v['dense_ms'] / v['banded_ms']:.2f}x); max difference {v['max_ulps']:.0f} ulp")
    print(f"preprocessing for the seven networks: {res['preprocess_ms']:.3f} ms CPU per cutout")
    sizes = [int(v) for v in args.sub_batches.split(",") if v]
    if sizes:
        res["preprocess_by_sub_batch"] = {}
        print(f"preprocessing by sub-batch size, ms CPU per cutout over {args.repeat} rounds (best / median / "
              f"worst), in slices of {PREP_SLICE} (the engine) and whole, rounds interleaved:")
    for size in sizes:
        rounds = preprocess_rounds(args.tiles, args.models, n, args.repeat, size, (PREP_SLICE, 1 << 30))
        res["preprocess_by_sub_batch"][str(size)] = {"sliced": rounds[PREP_SLICE], "whole": rounds[1 << 30]}

        def line(v):
            return f"{v[0]:.3f} / {v[len(v) // 2]:.3f} / {v[-1]:.3f}"

        print(f"  {size:5d}: sliced {line(rounds[PREP_SLICE])}; whole {line(rounds[1 << 30])}")
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
