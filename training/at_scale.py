"""Train the networks that carry the ensemble at scale inside a fixed time: simulate, train, export.

Made for a short lease of a GPU machine (issue 11): one command of at most ten minutes on a machine that
cannot download anything.  ``pack`` (run here, with the package registries) gathers what that machine lacks
into one folder; ``run`` (run there) does the whole job against a clock and leaves one archive to bring back:

    python -m lensengine.training.at_scale pack --into .lease          # here: wheels, real galaxies, run.sh
    bash .lease/run.sh                                                  # there: $OUT/at_scale.tar.gz

``run`` in order:

1. the validation store, the same as the v4 validation store of the model card (``--kind training-mix
   --lens-fraction 0.5 -n 3000 --seed 113``), so the kept epoch is chosen as on the CPU;
2. a training store of the same kind and simulator from its own seed, as large as its share of the time
   allows (``simulate_store(max_seconds=...)``: cutouts 0 … k-1 of that seed, whatever k turns out to be);
3. each network (default OU-VIS and OU-66, the two that carry the stacked ensemble) trained at the same
   time in its own process from the shipped weights, with the sky recipe of stops 26–28 (``RECIPE``), a
   constant rate and as many epochs as the rest of the time holds; the kept epoch is the one with the
   best validation TPR at FPR 1 %;
   With ``--stack-weight W`` each trains stack-aware (``lensengine train --stack-scores``, models/README.md
   "Stop 46"): first the shipped networks score the training store on the CPU (``lensengine run``), in
   training's share of the time;
4. ``summary.json`` (machine, stores, rates, every epoch's validation figures) and ``at_scale.tar.gz``
   (per network its ONNX file, kept checkpoint and ``log.csv``) in ``--out``.

Judging the result is the CPU's job afterwards (``benchmarks/sky_check.py``, the model card's rule); nothing
here changes a shipped file.  ``--dry-run`` runs the same code on the CPU with tiny sizes (the test).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

log = logging.getLogger("lensengine.at_scale")

#: the networks that carry the shipped stack (weights +0.90 and +0.85; model card)
DEFAULT_MODELS = ("OU-VIS", "OU-66")
#: the v4 validation store of the model card (``val4.zarr``)
VAL_KIND, VAL_N, VAL_SEED = "training-mix", 3000, 113
#: a training seed no store of the model card uses (103: train4, 104: train5)
TRAIN_SEED = 105
LENS_FRACTION = 0.5
#: the sky recipe of stops 26-28 (`lensengine train` options), constant rate; epochs and time are added per run
RECIPE = ("--augment", "full", "--hard-negatives", "0.1", "--hard-boost", "2", "--l2sp", "0.01", "--lr", "3e-4",
          "--min-arc-snr", "15", "--batch-size", "64", "--select-by", "tpr_fpr1", "--lr-schedule", "constant")
#: the packages `run` imports that the GPU machine's image lacks (KINDS.md lists what it has): the simulator
#: (lenstronomy, SkyPy, speclite and what they import), the store (zarr) and Dask for parallel simulation
LEASE_PACKAGES = ("astropy", "astropy-iers-data", "pyerfa", "lenstronomy", "configparser", "dill", "pyxdg", "skypy",
                  "speclite", "zarr", "numcodecs", "google-crc32c", "donfig", "dask", "distributed", "tornado",
                  "tblib", "zict", "partd", "locket")


def load_allowance(n_train: int) -> float:
    """Seconds a training process may take to load its stores before its first epoch (not in its --max-time).

    Measured here (Zen 5, one thread): OU-66 reads 861 store cutouts/s (four bands), OU-VIS 1 698.
    """
    return 10.0 + n_train / 800.0


#: what one device call may carry, all told (the working tree included)
CARRY_LIMIT = 64 * 2**20


def plan(minutes: float, sim_share: float, n_models: int) -> dict[str, float]:
    """Split ``minutes`` into seconds for the training store and for training (the rest keeps a margin)."""
    total = 60.0 * minutes
    stop_training = total - 20.0 - 10.0 * n_models  # then export what was stopped, archive, write the summary
    usable = max(stop_training - 25.0 - 5.0 * n_models, 60.0)  # less the validation store and the processes' start
    return {"total": total, "simulate": sim_share * usable, "train": (1 - sim_share) * usable,
            "stop_training": stop_training}


def machine() -> dict:
    info = {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()}
    try:
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:  # pragma: no cover - training needs torch anyway
        pass
    return info


def init_dir(models_dir: Path, names, into: Path) -> Path:
    """The shipped torch weights under the names ``--init-from`` expects (``OU_66_Weights.pt`` ...)."""
    from lensengine.engine.specs import get_spec

    into.mkdir(parents=True, exist_ok=True)
    for name in names:
        stem = get_spec(name).file_stem
        shutil.copyfile(models_dir / f"{stem}.pt", into / f"{stem}_Weights.pt")
    return into


def make_stores(work: Path, *, n_val: int, n_train_max: int, train_seconds: float, workers: int,
                train_seed: int = TRAIN_SEED) -> dict:
    """The validation store (whole) and the training store (as far as ``train_seconds`` allows)."""
    from lensengine.catalogs.store import SurveyStore
    from lensengine.training.simulate import TILE, simulate_store

    out = {}
    for name, n, seed, budget in (("val", n_val, VAL_SEED, None), ("train", n_train_max, train_seed, train_seconds)):
        t0 = time.perf_counter()
        path = simulate_store(work / f"{name}.zarr", VAL_KIND, n, seed, lens_fraction=LENS_FRACTION, workers=workers,
                              progress=False, overwrite=True, max_seconds=budget)
        seconds = time.perf_counter() - t0
        written = SurveyStore.open(path).n_cutouts(TILE)
        out[name] = {"store": str(path), "kind": VAL_KIND, "seed": seed, "n": written, "n_asked": n,
                     "seconds": round(seconds, 1), "rate": round(written / seconds, 1)}
        log.info("%s store: %d cutouts in %.0f s (%.0f/s, %d workers)", name, written, seconds, written / seconds,
                 workers)
    return out


def train_commands(models, *, stores: dict, init: Path, runs: Path, minutes: float | None, epochs: int,
                   device: str, loader_workers: int, threads: int,
                   stack: tuple[str, float] | None = None, stack_val: str | None = None) -> dict[str, list[str]]:
    """One `lensengine train` command per network (run side by side); ``stack`` = (the other members' score
    table of the training store, weight) trains each stack-aware, ``stack_val`` (that of the validation store)
    ranks its epochs by the stack's figure."""
    cmds = {}
    for name in models:
        cmd = [sys.executable, "-m", "lensengine.engine", "-q", "train", "--model", name,
               "--tiles", stores["train"]["store"], "--val", stores["val"]["store"], "--out", str(runs / name),
               "--init-from", str(init), *RECIPE, "--epochs", str(epochs), "--device", device,
               "--loader-workers", str(loader_workers), "--threads", str(threads), "--json"]
        if minutes is not None:
            cmd += ["--max-time", f"{minutes:.2f}"]
        if stack is not None:
            cmd += ["--stack-scores", stack[0], "--stack-weight", f"{stack[1]:g}"]
        if stack_val is not None:
            cmd += ["--stack-val-scores", stack_val]
        cmds[name] = cmd
    return cmds


def partner_scores(stores: dict, work: Path, *, models_dir: Path, workers: int, timeout_s: float | None = None) -> dict:
    """The shipped networks' score tables of the training store (the fixed members of stack-aware training) and
    of the validation store (the stack that ranks its epochs), made by `lensengine run` on the CPU and timed.
    ``{"error": ...}`` if the training store's failed or ran past ``timeout_s`` (training goes on without the
    stack); ``val_error`` if only the validation store's did (epochs ranked by the network's own figure)."""
    out: dict = {}
    t0 = time.perf_counter()
    for key in ("train", "val"):
        left = None if timeout_s is None else max(timeout_s - (time.perf_counter() - t0), 0.01)
        got = _score_store(stores[key], work / f"{key}_scores", work / f"{key}_partners.fits", key,
                           models_dir=models_dir, workers=workers, timeout_s=left)
        if "error" in got:
            if key == "train":
                return got
            out["val_error"] = got["error"]
            break
        out.update(got if key == "train" else {f"val_{k}": v for k, v in got.items()})
    return out


def _score_store(store: dict, table: Path, fits: Path, key: str, *, models_dir: Path, workers: int,
                 timeout_s: float | None) -> dict:
    cmd = [sys.executable, "-m", "lensengine.engine", "-q", "run", "--tiles", store["store"], "--out", str(fits),
           "--scores", str(table), "--models", str(models_dir), "--workers", str(workers)]
    then = "training without the stack" if key == "train" else "epochs ranked by each network's own figure"
    t0 = time.perf_counter()
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        log.error("scoring the %s store ran past %.0f s; %s", key, timeout_s, then)
        return {"error": f"timed out after {timeout_s:.0f} s", "seconds": round(time.perf_counter() - t0, 1)}
    seconds = time.perf_counter() - t0
    if done.returncode:
        log.error("scoring the %s store failed (exit %d); %s: %s", key, done.returncode, then, done.stderr[-1000:])
        return {"error": done.stderr[-4000:], "seconds": round(seconds, 1)}
    n = store["n"]
    log.info("%s store scored by the shipped networks: %d cutouts in %.0f s (%.0f/s)", key, n, seconds, n / seconds)
    return {"table": str(table), "seconds": round(seconds, 1), "rate": round(n / seconds, 1)}


def export_kept(run_dir: Path) -> str | None:
    """Export ``best.pt`` of a run that was stopped before it could (None: no epoch finished)."""
    from lensengine.engine.specs import get_spec
    from lensengine.training.checkpoint import export_checkpoint

    best = run_dir / "best.pt"
    if not best.is_file():
        return None
    return str(export_checkpoint(best, run_dir / f"{get_spec(run_dir.name).file_stem}.onnx"))


def read_log(path: Path) -> list[dict]:
    import csv

    if not path.is_file():
        return []
    with path.open() as fh:
        return [dict(row) for row in csv.DictReader(fh)]


def run(out: Path, *, minutes: float = 8.0, models=DEFAULT_MODELS, sim_share: float = 0.45,
        workers: int | None = None, device: str = "auto", max_epochs: int = 60, n_train_max: int = 400_000,
        train_seed: int = TRAIN_SEED, models_dir: Path | None = None, work: Path | None = None,
        dry_run: bool = False, stack_weight: float = 0.0) -> dict:
    """The whole job; returns (and writes to ``out/summary.json``) what it did."""
    from lensengine.engine.models import default_models_dir

    t_start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(work) if work else out / "work"
    cores = os.cpu_count() or 2
    workers = workers or (2 if dry_run else cores)
    if dry_run:
        device, max_epochs, n_val, n_train_max = "cpu", 1, 64, min(n_train_max, 192)
        budget = {"total": 0.0, "simulate": 0.0, "train": 0.0, "stop_training": 0.0}
    else:
        n_val = VAL_N
        budget = plan(minutes, sim_share, len(models))
    summary = {"what": "lensengine.training.at_scale run", "machine": machine(), "dry_run": dry_run,
               "models": list(models), "budget_s": {k: round(v, 1) for k, v in budget.items()},
               "recipe": list(RECIPE), "workers": workers}
    stores = make_stores(work, n_val=n_val, n_train_max=n_train_max, train_seconds=budget["simulate"],
                         workers=workers, train_seed=train_seed)
    summary["stores"] = stores
    models_dir = Path(models_dir or default_models_dir())
    init = init_dir(models_dir, models, work / "init")
    # the training processes are stopped at the deadline whatever they are doing (the kept epoch is on disk);
    # their own --max-time ends them between epochs before it, less the time their data take to load
    deadline = None if dry_run else t_start + budget["stop_training"]
    stack = stack_val = None
    if stack_weight > 0:  # its time comes out of training's (the deadline stays), half of it at most
        summary["partner_scores"] = partner_scores(
            stores, work, models_dir=models_dir, workers=workers,
            timeout_s=None if deadline is None else max(0.5 * (deadline - time.perf_counter()), 10.0))
        if "table" in summary["partner_scores"]:
            stack = (summary["partner_scores"]["table"], stack_weight)
            stack_val = summary["partner_scores"].get("val_table")
    summary["stack_weight"] = stack_weight if stack else 0.0
    runs = work / "runs"
    train_minutes = None if dry_run else max(
        (deadline - time.perf_counter() - load_allowance(stores["train"]["n"])) / 60.0, 0.5)
    # each network's share of the cores: all but one assemble batches (the GPU's bottleneck), torch takes up to 4
    per_model_cores = max(1, cores // len(models))
    cmds = train_commands(models, stores=stores, init=init, runs=runs, minutes=train_minutes, epochs=max_epochs,
                          device=device, loader_workers=max(1, per_model_cores - 1),
                          threads=1 if dry_run else min(per_model_cores, 4), stack=stack,
                          stack_val=stack_val)
    summary["train_minutes"] = train_minutes
    t0 = time.perf_counter()
    # output to files, not pipes: a process whose pipe nobody reads yet would block when it fills
    runs.mkdir(parents=True, exist_ok=True)
    procs = {}
    for name, cmd in cmds.items():
        with open(runs / f"{name}.out", "w") as fo, open(runs / f"{name}.err", "w") as fe:
            procs[name] = subprocess.Popen(cmd, stdout=fo, stderr=fe)
    results = {}
    for name, proc in procs.items():
        stopped = False
        try:
            proc.wait(timeout=None if deadline is None else max(deadline - time.perf_counter(), 1.0))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            stopped = True
        stdout, stderr = (runs / f"{name}.out").read_text(), (runs / f"{name}.err").read_text()
        entry = {"returncode": proc.returncode, "seconds": round(time.perf_counter() - t0, 1),
                 "command": " ".join(cmds[name][2:]), "epochs": read_log(runs / name / "log.csv")}
        if stopped:
            entry["stopped"] = "at the deadline, inside an epoch; the kept epoch is exported here"
            entry["onnx"] = export_kept(runs / name)
            log.warning("%s: stopped at the deadline; kept epoch exported: %s", name, entry["onnx"])
        elif proc.returncode == 0:
            try:
                entry["result"] = json.loads(stdout)
            except json.JSONDecodeError:
                entry["stdout"] = stdout[-2000:]
        else:
            entry["stderr"] = stderr[-4000:]
            log.error("%s: training failed (exit %d): %s", name, proc.returncode, stderr[-1000:])
        results[name] = entry
    summary["training"] = results
    archive = out / "at_scale.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name in models:
            for f in sorted((runs / name).glob("*.onnx")) + [runs / name / "best.pt", runs / name / "log.csv"]:
                if f.is_file():
                    tar.add(f, arcname=f"{name}/{f.name}")
    summary["archive"] = archive.name
    summary["seconds"] = round(time.perf_counter() - t_start, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


# --- pack: here, before the lease ----------------------------------------------------------------------

RUN_SH = """#!/bin/bash
# On the GPU machine, from the repository root (made by `python -m lensengine.training.at_scale pack`).
set -o pipefail
here=$(cd "$(dirname "$0")" && pwd)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site "$here"/whl/*.whl || exit 3
mkdir -p /tmp/pkg/lensengine && cp src/lensengine/__init__.py /tmp/pkg/lensengine/
for sub in engine plugins training catalogs models; do ln -sfn "$PWD/$sub" /tmp/pkg/lensengine/$sub; done
export PYTHONPATH=/tmp/pkg:/tmp/site PYTHONUNBUFFERED=1 LENSENGINE_SHARED="$here/shared"
out=${OUT:-$PWD/at_scale_out}
mkdir -p "$out"
python3 -m lensengine.training.at_scale run --out "$out" --work /tmp/at_scale "$@" 2>&1 | tee "$out/at_scale.log"
"""


def tree_bytes(repo: Path) -> int:
    """Bytes of the files a device call sends besides ``carry`` (tracked and untracked-not-ignored)."""
    names = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=repo,
                           capture_output=True, check=True).stdout.split(b"\0")
    return sum((repo / n.decode()).stat().st_size for n in names if n and (repo / n.decode()).is_file())


def pack(into: Path, *, galaxies: Path, repo: Path, wheels_from: Path | None = None) -> dict:
    """Wheels of ``LEASE_PACKAGES`` at the versions installed here, the real galaxies and ``run.sh``."""
    from importlib.metadata import version

    into = Path(into)
    whl = into / "whl"
    whl.mkdir(parents=True, exist_ok=True)
    pins = [f"{name}=={version(name)}" for name in LEASE_PACKAGES]
    if wheels_from is None:
        platform_args = [a for p in ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
                                     "manylinux2014_x86_64", "manylinux1_x86_64") for a in ("--platform", p)]
        binary = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                                 "--python-version", "3.12", "--implementation", "cp", *platform_args, "-d", str(whl),
                                 *pins], capture_output=True, text=True)
        if binary.returncode:  # some (lenstronomy) publish no wheel: download one by one, building pure ones here
            for pin in pins:
                got = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                                      "--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp",
                                      *platform_args, "-d", str(whl), pin], capture_output=True, text=True)
                if got.returncode:
                    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(whl), pin],
                                   check=True, capture_output=True)
    else:
        for f in Path(wheels_from).glob("*.whl"):
            shutil.copy(f, whl)
    from lensengine.training._sim_real import REAL_EXCLUDE_FOLDERS

    dest = into / "shared" / "real" / "galaxies"
    shutil.rmtree(dest, ignore_errors=True)
    # the folders the simulator never draws from (the real-imaging checks' own) stay here
    shutil.copytree(galaxies, dest, ignore=lambda folder, names: [n for n in names if n in REAL_EXCLUDE_FOLDERS])
    (into / "run.sh").write_text(RUN_SH)
    carried = sum(f.stat().st_size for f in into.rglob("*") if f.is_file())
    tree = tree_bytes(repo)
    report = {"into": str(into), "wheels": sorted(f.name for f in whl.glob("*.whl")), "carried_bytes": carried,
              "tree_bytes": tree, "limit_bytes": CARRY_LIMIT, "fits": carried + tree <= CARRY_LIMIT}
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lensengine.training.at_scale", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="simulate, train and export against a clock (on the GPU machine)")
    r.add_argument("--out", type=Path, required=True, help="folder for summary.json and at_scale.tar.gz")
    r.add_argument("--work", type=Path, default=None, help="folder for the stores and runs, kept afterwards "
                   "(default OUT/work; run.sh puts them in /tmp so that $OUT holds only what comes back)")
    r.add_argument("--minutes", type=float, default=8.0, help="wall-clock budget of the whole job (default 8: a device call runs 10 minutes at most, and run.sh installs first)")
    r.add_argument("--models", default=",".join(DEFAULT_MODELS), help="networks to train side by side")
    r.add_argument("--sim-share", type=float, default=0.45, help="share of the time for the training store")
    r.add_argument("--workers", type=int, default=None, help="simulation processes (default: every core)")
    r.add_argument("--device", default="auto", help="auto | cuda | cpu")
    r.add_argument("--max-epochs", type=int, default=60, help="epochs at most (the clock usually stops first)")
    r.add_argument("--train-seed", type=int, default=TRAIN_SEED, help=f"training store seed (default {TRAIN_SEED})")
    r.add_argument("--stack-weight", type=float, default=0.0,
                   help="train stack-aware (`lensengine train --stack-weight`) after the shipped networks score the "
                        "training store on the CPU, in training's time (default 0: off; stop 46 measured 0.5 and 1)")
    r.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU: checks the job end to end")
    p = sub.add_parser("pack", help="gather what the GPU machine lacks into one folder (here, before the lease)")
    p.add_argument("--into", type=Path, default=Path(".lease"), help="folder to fill (ignored by git; carry it)")
    p.add_argument("--galaxies", type=Path, default=None, help="real galaxy folder (default: the one the "
                   "simulator finds: $LENSENGINE_SHARED/real/galaxies or ../shared/real/galaxies)")
    p.add_argument("--wheels-from", type=Path, default=None, help="copy wheels from here instead of downloading")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("distributed").setLevel(logging.WARNING)  # the simulation cluster's own chatter
    if args.cmd == "run":
        summary = run(args.out, minutes=args.minutes, models=tuple(m for m in args.models.split(",") if m),
                      sim_share=args.sim_share, workers=args.workers, device=args.device,
                      max_epochs=args.max_epochs, train_seed=args.train_seed, work=args.work, dry_run=args.dry_run,
                      stack_weight=args.stack_weight)
        failed = [m for m, r in summary["training"].items() if r["returncode"] and not r.get("onnx")]
        print(json.dumps({k: summary[k] for k in ("stores", "seconds", "archive")}, indent=1))
        return 1 if failed else 0
    from lensengine.training.real_galaxies import shared_real_root

    galaxies = args.galaxies or shared_real_root()
    if galaxies is None:
        parser.error("no real galaxy folder found: give --galaxies")
    report = pack(args.into, galaxies=galaxies, repo=Path.cwd(), wheels_from=args.wheels_from)
    print(json.dumps(report, indent=1))
    if not report["fits"]:
        print(f"too large for one device call: {report['carried_bytes'] + report['tree_bytes']} bytes > "
              f"{CARRY_LIMIT}", file=sys.stderr)
        return 1
    print(f"carry [{str(args.into)!r}] and run: bash {args.into}/run.sh --minutes 8", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
