"""docs/deploy.md's SLURM recipe, run for real: a single-node SLURM cluster started by the test.

munged runs with a generated key; slurmctld and slurmd run in the foreground from a generated
slurm.conf in a temporary folder (no cgroups: proctrack/linuxproc, task/none; no accounting).
dask-jobqueue's SLURMCluster submits a Dask worker as a batch job with ``sbatch``, its scheduler
writes a scheduler file, and ``lensengine run --scheduler-file`` scores a tiny store on that
worker; the catalogue and score table are read back.  Skipped, with the reason, where the SLURM
and munge binaries (Debian: ``apt-get install slurm-wlm munge``) or dask-jobqueue are missing.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "sinfo")
REPO = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.skipif(any(shutil.which(b) is None for b in BINARIES),
                       reason="needs SLURM and munge (apt-get install slurm-wlm munge): "
                              + ", ".join(b for b in BINARIES if shutil.which(b) is None) + " not found"),
    pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() != 0,
                       reason="slurmd launches batch jobs only as root in this single-node setup"),
    pytest.mark.slow,
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _slurm_conf(folder: Path, node: str) -> str:
    cpus = os.cpu_count() or 1
    memory_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20 // 2  # half: below slurmd's count
    return "\n".join([
        "ClusterName=lensenginetest",
        f"SlurmctldHost={node}(127.0.0.1)",
        "SlurmUser=root",
        "SlurmdUser=root",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        f"AuthInfo=socket={folder}/munge.socket",
        f"SlurmctldPort={_free_port()}",
        f"SlurmdPort={_free_port()}",
        f"StateSaveLocation={folder}/state",
        f"SlurmdSpoolDir={folder}/spool",
        f"SlurmctldPidFile={folder}/slurmctld.pid",
        f"SlurmdPidFile={folder}/slurmd.pid",
        f"SlurmctldLogFile={folder}/slurmctld.log",
        f"SlurmdLogFile={folder}/slurmd.log",
        "ProctrackType=proctrack/linuxproc",  # no cgroups in a container
        "TaskPlugin=task/none",
        "MpiDefault=none",
        "ReturnToService=2",
        "SchedulerType=sched/builtin",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core",
        "JobCompType=jobcomp/none",
        "AccountingStorageType=accounting_storage/none",
        "JobAcctGatherType=jobacct_gather/none",
        f"NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN",
        f"PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP",
        "",
    ])


def _log_tails(folder: Path) -> str:
    out = []
    for name in ("munged.log", "slurmctld.log", "slurmd.log", "slurmctld.out", "slurmd.out"):
        path = folder / name
        if path.exists():
            out.append(f"--- {name}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-15:]))
    return "\n".join(out)


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """munged + slurmctld + slurmd for one node; yields the folder (SLURM_CONF is set meanwhile)."""
    folder = tmp_path_factory.mktemp("slurm")
    folder.chmod(0o755)  # munged wants its socket's folder reachable by every user
    for sub in ("state", "spool"):
        (folder / sub).mkdir()
    key = folder / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    node = socket.gethostname().split(".")[0]
    conf = folder / "slurm.conf"
    conf.write_text(_slurm_conf(folder, node))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    started: list[subprocess.Popen] = []
    subprocess.run(["munged", "--force", f"--key-file={key}", f"--socket={folder}/munge.socket",
                    f"--pid-file={folder}/munged.pid", f"--log-file={folder}/munged.log",
                    f"--seed-file={folder}/munged.seed"], check=True, timeout=30)
    try:
        for daemon in (["slurmctld", "-D", "-i"], ["slurmd", "-D", "-N", node]):
            log = open(folder / f"{daemon[0]}.out", "w")
            started.append(subprocess.Popen([*daemon, "-f", str(conf)], env=env, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True))
            log.close()
            time.sleep(0.5)
        deadline = time.time() + 45
        state = ""
        while time.time() < deadline:
            if any(p.poll() is not None for p in started):
                pytest.fail(f"a SLURM daemon exited:\n{_log_tails(folder)}")
            state = subprocess.run(["sinfo", "-h", "-o", "%t"], env=env, capture_output=True, text=True).stdout.strip()
            if state == "idle":
                break
            time.sleep(0.5)
        else:
            pytest.fail(f"the node never became idle (sinfo: {state!r}):\n{_log_tails(folder)}")
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("SLURM_CONF", str(conf))
            yield folder
    finally:
        subprocess.run(["scancel", "--full", "-u", "root"], env=env, capture_output=True)
        for proc in reversed(started):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in reversed(started):
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        pid_file = folder / "munged.pid"
        if pid_file.exists():
            try:
                os.kill(int(pid_file.read_text().strip()), signal.SIGTERM)
            except (ProcessLookupError, ValueError):
                pass


def _tiny_model(folder: Path) -> Path:
    """tests/reliability/_models.py's tiny ONNX model (no torch), loaded by path: tests are not a package."""
    spec = importlib.util.spec_from_file_location("_reliability_models", REPO / "tests/reliability/_models.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.onnx_model(folder / "OU_J.onnx", "OU-J", ("J",), 66, scale=0.01)
    return folder


def _tiny_store(path: Path, n: int = 16) -> Path:
    from lensengine.catalogs.store import CutoutBatch, SurveyStore

    rng = np.random.default_rng(5)
    with SurveyStore.build(path, survey="slurm test", bands=("Y", "J", "H"), chunk_size=8) as store:
        store.append("A", CutoutBatch(object_id=np.arange(n, dtype=np.int64) + 500, ra=rng.uniform(150, 151, n),
                                      dec=rng.uniform(2, 3, n), vis=None,
                                      nisp=rng.gamma(2.0, 40.0, (n, 3, 66, 66)).astype(np.float32),
                                      flags=np.zeros(n, np.uint32)))
    return path


def test_lensengine_run_on_a_dask_jobqueue_slurm_worker(slurm, tmp_path):
    pytest.importorskip("dask_jobqueue", reason="the SLURM recipe uses dask-jobqueue (pip install dask-jobqueue)")
    from dask_jobqueue import SLURMCluster
    from distributed import Client

    store = _tiny_store(tmp_path / "survey.zarr")
    models = _tiny_model(tmp_path / "models")
    scheduler_file = tmp_path / "scheduler.json"
    # the recipe of docs/deploy.md, at test size: one single-process worker job with one core
    cluster = SLURMCluster(queue="debug", cores=1, processes=1, memory="1GB", walltime="00:10:00",
                           python=sys.executable, log_directory=str(tmp_path / "jobs"),
                           scheduler_options={"host": "127.0.0.1", "scheduler_file": str(scheduler_file),
                                              "dashboard_address": ":0"},
                           worker_extra_args=["--host", "127.0.0.1", "--resources", "GPU=1"])
    try:
        assert "#SBATCH -p debug" in cluster.job_script()
        cluster.scale(jobs=1)
        with Client(cluster) as client:
            try:
                client.wait_for_workers(1, timeout=45)
            except TimeoutError:
                pytest.fail(f"no worker joined from the SLURM job:\n{_log_tails(slurm)}")
            job_ids = set(client.run(lambda: os.environ.get("SLURM_JOB_ID")).values())
            assert job_ids and all(job_ids), job_ids  # the worker runs inside a SLURM job
        assert json.loads(scheduler_file.read_text())["address"].startswith("tcp://127.0.0.1:")

        out = tmp_path / "candidates.fits"
        result = subprocess.run([sys.executable, "-m", "lensengine.engine", "-q", "run", "--tiles", str(store),
                                 "--models", str(models), "--scheduler-file", str(scheduler_file), "--out", str(out),
                                 "--threshold", "0.5", "--json"], capture_output=True, text=True, timeout=180)
        assert result.returncode == 0, result.stderr + _log_tails(slurm)
        summary = json.loads(result.stdout)
        assert summary["n_cutouts"] == 16 and summary["n_scored"] + summary["n_flagged"] == 16
    finally:
        cluster.close()

    from lensengine.catalogs.catalog import read_catalog

    scores = pq.read_table(out.with_name("candidates_scores.parquet")).to_pydict()
    assert sorted(scores["OBJECT_ID"]) == list(range(500, 516))
    candidates = read_catalog(out)
    assert len(candidates) == summary["n_candidates"]
