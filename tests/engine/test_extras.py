"""An engine-only install (no training extra) gets one line naming the extra, never a traceback (issue 16).

One subprocess blocks the extra's modules (as an engine-only install lacks them) and runs every command that
needs them in-process with click's runner; the in-process tests cover the root group's safety net.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from lensengine.engine.cli import LensGroup
from lensengine.engine.options import EXTRA_MODULES, needs_extra

ROOT = Path(__file__).resolve().parents[2]

#: the extra's modules an engine-only install really lacks; scipy is left importable because
#: scikit-learn, a core dependency, installs it anyway
BLOCKED = ("torch", "onnx", "lenstronomy", "skypy", "speclite", "skimage", "matplotlib")

#: command -> arguments that get it as far as its first need of the extra (the paths exist where required)
NEEDS_THE_EXTRA = {
    "demo": ["demo", "--out", "{tmp}/demo"],
    "simulate": ["simulate", "--kind", "mixed", "-n", "2", "--seed", "1", "--out", "{tmp}/sim.zarr"],
    "train": ["train", "--model", "OU-66", "--tiles", "{tmp}/s.zarr", "--out", "{tmp}/run"],
    "evaluate --out": ["evaluate", "--tiles", "{tmp}/s.zarr", "--out", "{tmp}/report"],
    "explain": ["explain", "--model", "OU-66", "--out", "{tmp}/explain"],
    "models import-published": ["models", "import-published", "{tmp}", "--out", "{tmp}/models"],
    "models export": ["models", "export", "{tmp}/file.bin", "--out", "{tmp}/x.onnx"],
    "models tta": ["models", "tta", "{tmp}/file.bin", "--out", "{tmp}/x.onnx"],
    "tsne plot": ["tsne", "plot", "{tmp}/file.bin", "--out", "{tmp}/p.png"],
    "tsne fit --plot": ["tsne", "fit", "--scores", "{tmp}/file.bin", "--out", "{tmp}/m.npz", "--plot", "{tmp}/p.png"],
    "recall-test (simulating)": ["recall-test", "-n", "2", "--workdir", "{tmp}/sims"],
    "recall-test --out": ["recall-test", "--arcs", "{tmp}/s.zarr", "--out", "{tmp}/recall"],
    "realcheck": ["realcheck", "--out", "{tmp}/rc"],
    "run --precision bf16": ["run", "--tiles", "{tmp}/s.zarr", "--precision", "bf16"],
}

_SCRIPT = textwrap.dedent(
    """
    import json, sys

    class Block:
        # makes the extra's modules unimportable, as in an engine-only install
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
            return None

    sys.meta_path.insert(0, Block())
    from click.testing import CliRunner
    from lensengine.engine.cli import _register_plugin_commands, cli

    _register_plugin_commands()
    for label, args in CASES.items():
        result = CliRunner().invoke(cli, args, prog_name="lensengine")
        print(json.dumps({"label": label, "code": result.exit_code, "output": result.output,
                          "exception": type(result.exception).__name__ if result.exception else None}))
    """
)


def _run_blocked(cases: dict[str, list[str]]) -> dict[str, dict]:
    code = f"BLOCKED = {BLOCKED!r}\nCASES = {cases!r}\n" + _SCRIPT
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    results = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return {r["label"]: r for r in results}


def test_every_command_that_needs_the_extra_says_so_in_one_line(tmp_path):
    (tmp_path / "s.zarr").mkdir()
    (tmp_path / "file.bin").write_bytes(b"not a model")
    cases = {label: [a.format(tmp=tmp_path) for a in args] for label, args in NEEDS_THE_EXTRA.items()}
    # every --help still works without the extra
    cases.update({f"{' '.join(args[:2])} --help": [*args[:2 if args[0] in ("models", "tsne") else 1], "--help"]
                  for args in NEEDS_THE_EXTRA.values()})
    results = _run_blocked(cases)
    assert set(results) == set(cases)
    for label in NEEDS_THE_EXTRA:
        r = results[label]
        lines = [line for line in r["output"].splitlines() if line.strip()]
        assert r["code"] == 2 and r["exception"] == "SystemExit", (label, r)
        assert len(lines) == 1, (label, r["output"])
        assert "training extra" in lines[0] and 'pip install "lensengine[training]"' in lines[0], (label, lines)
        assert "Traceback" not in r["output"] and "ModuleNotFoundError" not in r["output"], label
        assert lines[0].startswith("Error: `lensengine "), (label, lines)
    for label, r in results.items():
        if label.endswith("--help"):
            assert r["code"] == 0 and "Usage: lensengine" in r["output"], (label, r)
    # nothing was half done before the message
    assert not any((tmp_path / name).exists() for name in ("demo", "sim.zarr", "run", "report", "explain", "sims"))


def test_the_root_group_turns_a_deep_import_of_the_extra_into_the_message():
    group = LensGroup("lensengine")

    @group.command("deep")
    def deep():
        """Imports a module of the extra deep inside its work."""
        raise ModuleNotFoundError("No module named 'lenstronomy.LensModel'", name="lenstronomy.LensModel")

    @group.command("bug")
    def bug():
        """A missing module that is no extra's is a real bug: it must not be dressed up."""
        raise ModuleNotFoundError("No module named 'lensengine.nothing'", name="lensengine.nothing")

    result = CliRunner().invoke(group, ["deep"], prog_name="lensengine")
    assert result.exit_code == 2
    assert result.output.strip() == ('Error: `lensengine deep` needs the training extra (missing module '
                                     'lenstronomy): pip install "lensengine[training]" (from a checkout: '
                                     'pip install -e ".[training]")')
    result = CliRunner().invoke(group, ["bug"])
    assert isinstance(result.exception, ModuleNotFoundError)


def test_needs_extra_checks_before_the_command_runs():
    ran = []

    @click.command("x")
    @needs_extra("json", "lensengine_no_such_module")
    def x():
        """Never runs: its second module is missing."""
        ran.append(True)

    result = CliRunner().invoke(x, [])
    assert result.exit_code == 2 and not ran
    assert "missing module lensengine_no_such_module" in result.output


def test_extra_modules_are_the_extras_of_pyproject():
    tomllib = pytest.importorskip("tomllib")
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    import_names = {"scikit-image": "skimage"}  # distributions whose import name differs
    declared = {}
    for extra, requirements in extras.items():
        if extra == "dev":
            continue
        for requirement in requirements:
            dist = requirement.split(";")[0].split("[")[0]
            for sep in ("<", ">", "=", "!", "~", " "):
                dist = dist.split(sep)[0]
            declared[import_names.get(dist, dist)] = extra
    assert declared == EXTRA_MODULES
