"""Scale simulation of a Euclid-wide sweep (issue 14, item 5).

Measures what grows with the number of tasks, with a null scorer (``len`` of the task: no store, no
model) so that only the run's own machinery is timed: the task generator (``_Plan.tasks``), the
sliding window (``run_tasks``) and Dask.  The scheduler and one worker are separate processes
(``dask scheduler``, ``dask worker``), so the client (this process) and the scheduler are measured
apart:

  (1) per-task overhead (wall / tasks), client peak RSS and scheduler peak RSS at 10^3, 10^4, 10^5
      tasks, bounded (the run's window) and, with ``--unbounded``, every task submitted at once (the
      run before issue 14) for contrast;
  (2) the client's cost per row of writing a part (Arrow conversion + zstd Parquet) and of checking
      it at the merge, and the bytes per row of the score table and per candidate of the catalogue,
      on a realistic 1 024-row part (seven models, the OU-T-SNE columns, truth);

then projects a 1.5e9-cutout sweep on 1, 10 and 100 GPU workers at 20 000 cutouts/s each: the task
size that keeps the scheduler's task rate low, task count, scheduler load, wall time (scoring, each
worker writing its own parts, then the merge's checks, on the workers too; and the same when the
client must write and check every part) and output size.  ``--from-json`` recomputes the projection
and the table from an earlier run's measurements.

    python benchmarks/bench_scale.py --sizes 1000,10000,100000 --json benchmarks/results_scale.json \
        --table scale_table.md

Prints a table (markdown) and writes JSON.  Per-task overhead depends on the machine's load: say
what else was running.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

from lensengine.engine.models import ModelEntry
from lensengine.engine.run import CHECK_ROWS, IN_FLIGHT_PER_WORKER, _Plan, run_tasks
from lensengine.engine.scoring import ChunkTask

SWEEP = 1.5e9              # cutouts in a Euclid-wide sweep
GPU_RATE = 20_000.0        # cutouts/s per GPU worker
CHUNK = 1024               # the store's chunk (cutouts)
SCHEDULER_BUSY = 0.25      # keep the scheduler's task handling under this fraction of its time
CANDIDATE_FRACTION = 1e-3  # for the catalogue's size: candidates per cutout at the run's threshold


def null_plan(n_tasks: int, per_tile: int = 1000) -> _Plan:
    """A plan of ``n_tasks`` one-cutout chunks in tiles of ``per_tile``, with seven realistic model entries."""
    models = tuple(ModelEntry(f"OU-{i}", Path(f"/models/published/OU_{i}.onnx"), ("VIS", "Y", "J", "H"), 200,
                              sha256=f"{i:064x}") for i in range(7))
    template = ChunkTask("/surveys/euclid.zarr", "", 0, 0, 0, models)
    tiles = [(f"T{t:05d}", min(per_tile, n_tasks - t * per_tile)) for t in range(-(-n_tasks // per_tile))]
    return _Plan(None, None, template, tiles, chunk_size=1, task_size=1)


class Cluster:
    """``dask scheduler`` and ``dask worker`` as separate processes on 127.0.0.1."""

    def __init__(self, workers: int, folder: Path):
        self.file = folder / "scheduler.json"
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
        self.scheduler = subprocess.Popen(["dask", "scheduler", "--host", "127.0.0.1", "--port", "0",
                                           "--no-dashboard", "--scheduler-file", str(self.file)], **quiet)
        deadline = time.time() + 120
        while not self.file.is_file() and time.time() < deadline:
            time.sleep(0.2)
        self.workers = [subprocess.Popen(["dask", "worker", "--scheduler-file", str(self.file), "--nthreads", "1",
                                          "--no-dashboard", "--local-directory", str(folder)], **quiet)
                        for _ in range(workers)]

    def client(self):
        from distributed import Client

        client = Client(scheduler_file=str(self.file), timeout="60s")
        client.wait_for_workers(len(self.workers), timeout=120)
        return client

    def close(self) -> None:
        for proc in [*self.workers, self.scheduler]:
            proc.terminate()
        for proc in [*self.workers, self.scheduler]:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def measure_tasks(client, scheduler_pid: int, n: int, per_worker: int) -> dict:
    """Run ``n`` null tasks through ``run_tasks``; wall time and peak RSS of client and scheduler."""
    me, sched = psutil.Process(), psutil.Process(scheduler_pid)
    peak = {"client": me.memory_info().rss, "scheduler": sched.memory_info().rss, "seen": 0}

    def on_result(task, result) -> None:
        peak["seen"] += 1
        if peak["seen"] % 100 == 0:
            peak["client"] = max(peak["client"], me.memory_info().rss)
            peak["scheduler"] = max(peak["scheduler"], sched.memory_info().rss)

    plan = null_plan(n)
    t0 = time.perf_counter()
    done = run_tasks(client, plan.tasks(), len, on_result, key=lambda t: f"null-{n}-{t.tile}-{t.start}",
                     in_flight_per_worker=per_worker)
    wall = time.perf_counter() - t0
    assert done == n
    return {"tasks": n, "window": "bounded" if per_worker <= IN_FLIGHT_PER_WORKER else "unbounded",
            "wall_s": wall, "per_task_ms": 1e3 * wall / n,
            "client_rss_mib": max(peak["client"], me.memory_info().rss) / 2**20,
            "scheduler_rss_mib": max(peak["scheduler"], sched.memory_info().rss) / 2**20}


def realistic_rows(n: int = CHUNK, seed: int = 0) -> dict[str, np.ndarray]:
    """One task's score-table rows as ``score_chunk`` returns them (seven models, OU-T-SNE, truth)."""
    rng = np.random.default_rng(seed)
    p = rng.beta(0.3, 3.0, (n, 8)).astype(np.float32)
    rows = {"OBJECT_ID": np.arange(n, dtype=np.int64) + 10**12, "TILE": np.full(n, "TILE102018211", object),
            "CHUNK": np.zeros(n, np.int32), "ROW": np.arange(n, dtype=np.int64),
            "RA": rng.uniform(0, 360, n), "DEC": rng.uniform(-60, 60, n)}
    for j, name in enumerate(["OU_66", "OU_200", "OU_VIS", "OU_J", "OU_Y", "OU_H", "OU_JYH"]):
        rows[f"P_{name}"] = p[:, j]
    rows.update(P_ENSEMBLE=p[:, 7], P_OU_TSNE=p[:, 7], TSNE_CELL=rng.integers(0, 10_000, n).astype(np.int32),
                TSNE_X=rng.normal(0, 30, n).astype(np.float32), TSNE_Y=rng.normal(0, 30, n).astype(np.float32),
                FLAGS=np.where(rng.random(n) < 0.02, 1 << 16, 0).astype(np.uint32))
    rows["FLAG_TEXT"] = np.where(rows["FLAGS"] != 0, "BAND_DUPLICATED", "OK").astype(object)
    rows["ERROR"] = np.full(n, "", object)
    return rows


def measure_parts(folder: Path, repeats: int = 20) -> dict:
    """Client cost per row of writing and of checking a part; bytes per score-table row and per candidate."""
    import pyarrow as pa

    from lensengine.catalogs.catalog import write_candidates
    from lensengine.engine.run import _to_arrow
    from lensengine.engine.run_state import PartsFolder, ids_sha256

    rows = realistic_rows()
    schema = pa.schema([pa.field(k, pa.string() if v.dtype == object else pa.from_numpy_dtype(v.dtype))
                        for k, v in rows.items()])
    parts = PartsFolder(folder / "bench.parts")
    parts.scores_path.mkdir(parents=True, exist_ok=True)
    identity = {"tile": "TILE102018211", "start": 0, "stop": CHUNK, "run": "bench"}
    parts.write_part(parts.part_path("TILE102018211", 0), _to_arrow(rows, schema), identity)  # warm up
    t0 = time.perf_counter()
    for i in range(repeats):
        parts.write_part(parts.part_path("TILE102018211", 0), _to_arrow(rows, schema),
                         {**identity, "ids": ids_sha256(rows["OBJECT_ID"])})
    write_s = (time.perf_counter() - t0) / repeats
    path = parts.part_path("TILE102018211", 0)
    t0 = time.perf_counter()
    for _ in range(repeats):
        problem, _ = parts.check_part(path, identity, columns=("FLAGS", "P_ENSEMBLE"))
        assert problem is None, problem
    check_s = (time.perf_counter() - t0) / repeats
    from astropy.table import Table

    cat = folder / "cands.fits"
    write_candidates(Table(rows), cat, threshold=0.0, provenance={})
    return {"part_rows": CHUNK, "write_rows_per_s": CHUNK / write_s, "check_rows_per_s": CHUNK / check_s,
            "score_bytes_per_row": path.stat().st_size / CHUNK, "fits_bytes_per_candidate": cat.stat().st_size / CHUNK}


def project(per_task_s: float, parts: dict, rss: dict) -> list[dict]:
    """A 1.5e9 sweep on 1, 10, 100 GPU workers at GPU_RATE each (see the module docstring)."""
    out = []
    # a worker writes its own parts (shared file system) after scoring each task: its effective rate
    worker_rate = 1.0 / (1.0 / GPU_RATE + 1.0 / parts["write_rows_per_s"])
    for workers in (1, 10, 100):
        rate = workers * worker_rate
        # the task rate the scheduler can take at SCHEDULER_BUSY, from the measured per-task overhead
        min_size = rate * per_task_s / SCHEDULER_BUSY
        size = max(CHUNK, int(-(-min_size // CHUNK)) * CHUNK)
        tasks = SWEEP / size
        task_rate = rate / size
        score_s = SWEEP / rate                        # workers score and write their parts
        # the merge's checks run on the workers too, CHECK_ROWS of parts per task, at the scheduler's task rate
        check_tasks = SWEEP / (max(1, CHECK_ROWS // size) * size)
        merge_s = max(SWEEP / (workers * parts["check_rows_per_s"]), check_tasks * per_task_s)
        wall = score_s + merge_s
        # without a shared file system the client writes and checks every part itself
        client_write_s = SWEEP / parts["write_rows_per_s"]
        client_merge_s = SWEEP / parts["check_rows_per_s"]
        out.append({"gpu_workers": workers, "task_size": size, "tasks": tasks, "tasks_per_s": task_rate,
                    "scheduler_busy": task_rate * per_task_s, "worker_rate": worker_rate,
                    "score_h": score_s / 3600, "merge_h": merge_s / 3600, "wall_h": wall / 3600,
                    "wall_client_writes_h": (max(score_s, client_write_s) + client_merge_s) / 3600,
                    "bottleneck": "GPUs" if score_s >= merge_s else "merge",
                    "score_table_tb": SWEEP * parts["score_bytes_per_row"] / 1e12,
                    "catalogue_gb": SWEEP * CANDIDATE_FRACTION * parts["fits_bytes_per_candidate"] / 1e9,
                    "client_rss_mib": rss["client"], "scheduler_rss_mib": rss["scheduler"]})
    return out


def markdown(measured: list[dict], parts: dict, projection: list[dict], machine: str) -> str:
    lines = [f"Measured on {machine}.", "",
             "| tasks | window | wall (s) | per-task overhead (ms) | client peak RSS (MiB) "
             "| scheduler peak RSS (MiB) |",
             "|---:|---|---:|---:|---:|---:|"]
    lines += [f"| {m['tasks']:,} | {m['window']} | {m['wall_s']:.1f} | {m['per_task_ms']:.2f} | "
              f"{m['client_rss_mib']:.1f} | {m['scheduler_rss_mib']:.1f} |" for m in measured]
    lines += ["", f"Client, per {parts['part_rows']}-row part: writes {parts['write_rows_per_s']:,.0f} rows/s, "
                  f"checks (merge) {parts['check_rows_per_s']:,.0f} rows/s; score table "
                  f"{parts['score_bytes_per_row']:.0f} B/row (zstd Parquet), catalogue "
                  f"{parts['fits_bytes_per_candidate']:.0f} B/candidate (FITS).", "",
              f"Projection: {SWEEP:.1e} cutouts at {GPU_RATE:,.0f} cutouts/s per GPU worker; task size chosen so "
              f"the scheduler is at most {SCHEDULER_BUSY:.0%} busy; catalogue at {CANDIDATE_FRACTION:g} "
              f"candidates per cutout.", "",
              "| GPU workers | task size | tasks | tasks/s | scheduler busy | scoring (h) | merge (h) | wall (h) "
              "| wall, client writes parts (h) | larger part | score table (TB) | catalogue (GB) |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|"]
    lines += [f"| {p['gpu_workers']} | {p['task_size']:,} | {p['tasks']:,.0f} | {p['tasks_per_s']:.1f} | "
              f"{p['scheduler_busy']:.1%} | {p['score_h']:.2f} | {p['merge_h']:.2f} | {p['wall_h']:.2f} | "
              f"{p['wall_client_writes_h']:.2f} | {p['bottleneck']} | {p['score_table_tb']:.2f} | "
              f"{p['catalogue_gb']:.2f} |" for p in projection]
    lines += ["", f"Scoring: each worker scores at {GPU_RATE:,.0f}/s and then writes its part, "
                  f"{projection[0]['worker_rate']:,.0f} cutouts/s together. Merge: the parts are checked on the "
                  f"workers, {CHECK_ROWS:,} rows of parts per task. \"wall, client writes parts\": the fallback when workers do not "
                  f"share the parts folder's file system (the client writes and checks every part)."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,10000,100000", help="task counts to measure (comma-separated)")
    parser.add_argument("--workers", type=int, default=1, help="dask worker processes")
    parser.add_argument("--unbounded", action="store_true", help="also submit every task at once (sizes <= 10^4)")
    parser.add_argument("--json", type=Path, default=Path(__file__).with_name("results_scale.json"))
    parser.add_argument("--table", type=Path, default=None, help="also write the markdown table here")
    parser.add_argument("--note", default="", help="what else ran on the machine (goes into the output)")
    parser.add_argument("--from-json", type=Path, default=None, help="reuse the measurements of an earlier run")
    args = parser.parse_args()
    if args.from_json:
        earlier = json.loads(args.from_json.read_text())
        report(earlier["measured"], earlier["parts"], earlier["machine"], args)
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores" + \
              (f"; {args.note}" if args.note else "")
    measured = []
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        cluster = Cluster(args.workers, Path(tmp))
        try:
            client = cluster.client()
            measure_tasks(client, cluster.scheduler.pid, 200, IN_FLIGHT_PER_WORKER)  # warm up
            # Every bounded size first: RSS is sampled from live processes, and memory an unbounded run
            # took is not given back to the OS, so a bounded run after one would inherit its peak.
            runs = [(n, IN_FLIGHT_PER_WORKER) for n in sizes]
            runs += [(n, n) for n in sizes if args.unbounded and n <= 10_000]
            for n, per_worker in runs:
                measured.append(measure_tasks(client, cluster.scheduler.pid, n, per_worker))
                print(json.dumps(measured[-1]), file=sys.stderr, flush=True)
            client.close()
        finally:
            cluster.close()
        parts = measure_parts(Path(tmp))
    report(measured, parts, machine, args)


def report(measured: list[dict], parts: dict, machine: str, args) -> None:
    """Project, print the table and write the JSON (and the markdown table when asked)."""
    bounded = [m for m in measured if m["window"] == "bounded"]
    largest = max(bounded, key=lambda m: m["tasks"])
    projection = project(largest["per_task_ms"] / 1e3, parts,
                         {"client": largest["client_rss_mib"], "scheduler": largest["scheduler_rss_mib"]})
    table = markdown(measured, parts, projection, machine)
    print(table)
    args.json.write_text(json.dumps({"machine": machine, "measured": measured, "parts": parts,
                                     "projection": projection, "sweep": SWEEP, "gpu_rate": GPU_RATE,
                                     "in_flight_per_worker": IN_FLIGHT_PER_WORKER}, indent=1))
    if args.table:
        args.table.write_text(table + "\n")


if __name__ == "__main__":
    main()
