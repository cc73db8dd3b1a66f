"""Throughput of the simulator: four-band systems per second, per kind and worker count.

    python benchmarks/bench_simulate.py [-n 200] [--workers 1,2] [--kinds mixed,compound-arcs] [--json out.json]

Prints one row per (kind, workers) with systems/s and the 1-minute load
average before and after (the development machine is shared: read the load
with the rate).  The store writing is included (a temporary zarr store).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=200)
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--kinds", default="mixed")
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    from lensengine.training._sim_physics import sed_table
    from lensengine.training.simulate import simulate_batch, simulate_store

    sed_table()
    simulate_batch("mixed", 2, 0)  # warm up imports and caches
    rows = []
    print(f"{'kind':14s} {'workers':>7s} {'n':>6s} {'seconds':>8s} {'systems/s':>9s}  load(1 min) before/after")
    for kind in args.kinds.split(","):
        for w in (int(x) for x in args.workers.split(",")):
            load0 = os.getloadavg()[0]
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                simulate_store(Path(tmp) / "bench.zarr", kind, args.n, args.seed, workers=w, progress=False)
                dt = time.perf_counter() - t0
            load1 = os.getloadavg()[0]
            row = {"kind": kind, "workers": w, "n": args.n, "seconds": dt, "systems_per_s": args.n / dt,
                   "load_before": load0, "load_after": load1, "cpus": os.cpu_count()}
            rows.append(row)
            print(f"{kind:14s} {w:7d} {args.n:6d} {dt:8.1f} {args.n / dt:9.1f}  {load0:.1f}/{load1:.1f}"
                  f" on {os.cpu_count()} CPUs")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
