"""The engine's own ceiling: `lensengine run` with networks that cost nothing (issue 13, items 4 and 5).

    python benchmarks/bench_ceiling.py --tiles sky20k.zarr                 # workers 1 and 2, sub-batches 32 and 256
    python benchmarks/bench_ceiling.py --tiles sky20k.zarr --workers 1,2 --batches 32,256 --repeat 2 --json out.json

Each of the seven networks is replaced by a one-node graph with the same contract (name, bands, stamp, input
and output): the mean of the cutout's pixels.  The run then does everything it does for real (Dask, the store's
reads, the flags, the preprocessing, the session calls, the ensemble, the score table and the catalogue) except
the networks' arithmetic, so its rate is the most cutouts per second this machine's CPUs can push through the
engine, and its CPU time per cutout is what the engine costs besides the networks.

That number matters on a GPU: there the networks are cheap, and the engine's CPU side sets the speed.  Stop 38
measured 2.8 ms of CPU per cutout in one worker of a GPU run, against the 0.4 ms outside the networks in a CPU
run (docs/performance.md, "Stop 38" and "Stop 44"); 20 000 cutouts/s on one GPU host of 16 cores allows 0.8 ms.

CPU time is read from /proc/stat (all cores, the whole command), so run it on a quiet machine.  It prints a
table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path


def free_models(source_dir: Path | None, out: Path) -> Path:
    """Copies of the models' contracts whose graph is the mean of the input pixels (ReduceMean, opset 13)."""
    import onnx
    from onnx import TensorProto, helper

    from lensengine.engine.registry import resolve_models

    out.mkdir(parents=True, exist_ok=True)
    for e in resolve_models(source_dir):
        shipped = onnx.load(str(e.path), load_external_data=False)
        x = helper.make_tensor_value_info("cutout", TensorProto.FLOAT, ["batch", len(e.bands), e.stamp, e.stamp])
        y = helper.make_tensor_value_info("p_lens", TensorProto.FLOAT, ["batch"])
        node = helper.make_node("ReduceMean", ["cutout"], ["p_lens"], axes=[1, 2, 3], keepdims=0)
        model = helper.make_model(helper.make_graph([node], f"free_{e.name}", [x], [y]),
                                  opset_imports=[helper.make_opsetid("", 13)], ir_version=shipped.ir_version)
        for prop in shipped.metadata_props:
            model.metadata_props.add(key=prop.key, value=prop.value)
        onnx.checker.check_model(model)
        onnx.save(model, str(out / Path(e.path).name))
    return out


def busy_jiffies() -> tuple[int, int]:
    """(busy, total) clock ticks of all CPUs since boot, from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def one_run(store: Path, models_dir: Path, workers: int, batch: int, work: Path) -> dict:
    from lensengine.engine.registry import resolve_models
    from lensengine.engine.run import RunOptions, execute_run

    tag = f"w{workers}_b{batch}"
    opts = RunOptions(store=store, out=work / f"{tag}.fits", scores=work / f"{tag}_scores",
                      models=resolve_models(models_dir), models_dir=models_dir, workers=workers, device="cpu",
                      batch_size=batch, progress=False, dashboard=False, precision="fp32", ensemble_path="mean")
    b0, t0 = busy_jiffies()
    w0 = time.perf_counter()
    summary = execute_run(opts)
    wall = time.perf_counter() - w0
    b1, t1 = busy_jiffies()
    cores = os.cpu_count() or 1
    busy_core_s = (b1 - b0) / os.sysconf("SC_CLK_TCK")
    return {"workers": workers, "batch": batch, "cutouts": summary.n_cutouts, "wall_s": wall,
            "cutouts_per_s": summary.n_cutouts / wall, "scoring_rate": summary.rate,
            "cpu_ms_per_cutout": 1e3 * busy_core_s / summary.n_cutouts,
            "busy_share": (b1 - b0) / max(t1 - t0, 1), "cores": cores}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 2)[2])
    ap.add_argument("--tiles", type=Path, required=True, help="a survey store to run on")
    ap.add_argument("--models", type=Path, default=None, help="whose contracts to copy [the shipped models]")
    ap.add_argument("--workers", default="1,2", help="worker counts [1,2]")
    ap.add_argument("--batches", default="32,256", help="sub-batch sizes [32 (a CPU run's), 256 (a GPU run's)]")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each setting, in turn [1]")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-ceiling-"))
    work.mkdir(parents=True, exist_ok=True)
    models = free_models(args.models, work / "free_models")
    store = args.tiles
    rows = []
    settings = [(int(w), int(b)) for w in args.workers.split(",") for b in args.batches.split(",")]
    for r in range(args.repeat):
        for w, b in settings:
            row = one_run(store, models, w, b, work / f"run{r}")
            rows.append(row)
            print(f"workers {w}, sub-batch {b:4d}: {row['cutouts']} cutouts in {row['wall_s']:.1f} s = "
                  f"{row['cutouts_per_s']:.0f}/s; CPU {row['cpu_ms_per_cutout']:.3f} ms per cutout "
                  f"(cores busy {row['busy_share']:.2f})", flush=True)
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_runners import machine  # the CPU, its instruction set and the runtimes' versions

    report = {"machine": machine(), "store": str(store), "runs": rows}
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
