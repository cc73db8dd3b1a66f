"""docs/deploy.md's recipes stay true to the programs they call.

Every option the page gives ``lensengine run``, ``dask scheduler`` and ``dask worker`` exists in that
program; the Kubernetes manifest parses and gives GPU workers the ``GPU`` resource that ``--device
cuda`` tasks ask for; the dask-jobqueue script's ``SLURMCluster`` arguments build the job script the
page describes.  (The recipes themselves run in test_slurm.py, tests/engine/test_distributed.py and
tests/catalogs/test_object_store.py.)
"""

from __future__ import annotations

import ast
import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

DOC = Path(__file__).resolve().parents[2] / "docs" / "deploy.md"


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOC.read_text(), flags=re.S)


def _command_lines(prefix: tuple[str, ...]) -> list[list[str]]:
    """Every shell command in the page's bash blocks that starts with ``prefix`` (continued lines joined)."""
    found = []
    for block in _blocks("bash"):
        pending = ""
        for line in block.replace("\\\n", " ").splitlines():
            pending += line + "\n"
            try:
                words = shlex.split(pending, comments=True)
            except ValueError:  # an open quotation: the command goes on on the next line
                continue
            pending = ""
            while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):  # VAR=value before the command
                words = words[1:]
            words = [w for w in words if w != "&"]
            if tuple(words[:len(prefix)]) == prefix:
                found.append(words[len(prefix):])
        assert not pending, f"unclosed quotation in docs/deploy.md: {pending[:80]}"
    return found


def _options(command) -> set[str]:
    return {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}


def _used(lines: list[list[str]]) -> set[str]:
    return {word.split("=")[0] for words in lines for word in words if word.startswith("--")}


def test_lensengine_run_options_exist():
    from lensengine.engine.run_cli import run_cmd

    lines = _command_lines(("lensengine", "run"))
    for words in _command_lines(("kubectl", "run")):  # the Kubernetes client's command is in the pod override
        override = next(w for w in words if w.startswith("--overrides="))
        command = json.loads(override.split("=", 1)[1])["spec"]["containers"][0]["command"]
        assert command[:2] == ["lensengine", "run"], command
        lines.append(command[2:])
    assert len(lines) >= 5  # one per recipe
    assert _used(lines) <= _options(run_cmd), _used(lines) - _options(run_cmd)


def test_dask_cli_options_exist():
    from distributed.cli import dask_scheduler, dask_worker

    for words, command in ((("dask", "scheduler"), dask_scheduler.main), (("dask", "worker"), dask_worker.main)):
        lines = _command_lines(words)
        assert lines, words
        assert _used(lines) <= _options(command), (words, _used(lines) - _options(command))


def test_kubernetes_manifest_gives_gpu_workers_the_gpu_resource():
    (manifest,) = [yaml.safe_load(block) for block in _blocks("yaml")]
    assert manifest["apiVersion"] == "kubernetes.dask.org/v1" and manifest["kind"] == "DaskCluster"
    worker = manifest["spec"]["worker"]["spec"]["containers"][0]
    args = worker["args"]
    assert args[args.index("--resources") + 1] == "GPU=1"
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    name = manifest["metadata"]["name"]
    assert f"tcp://{name}-scheduler:8786" in DOC.read_text()


def test_slurm_script_builds_the_described_job(tmp_path, monkeypatch):
    pytest.importorskip("dask_jobqueue", reason="the SLURM recipe uses dask-jobqueue (pip install dask-jobqueue)")
    from dask_jobqueue import SLURMCluster

    (script,) = [b for b in _blocks("python") if "SLURMCluster(" in b]
    call = next(node for node in ast.walk(ast.parse(script))
                if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "SLURMCluster")
    kwargs = {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords}
    kwargs["scheduler_options"] = {**kwargs["scheduler_options"], "dashboard_address": ":0", "host": "127.0.0.1"}
    monkeypatch.chdir(tmp_path)  # the scheduler file and log folder land here
    with SLURMCluster(**kwargs) as cluster:
        job = cluster.job_script()
        assert (tmp_path / "scheduler.json").is_file()
    assert "#SBATCH -p gpu" in job and "#SBATCH --gres=gpu:1" in job
    assert "--resources GPU=1" in job and "source ~/lensengine-venv/bin/activate" in job
