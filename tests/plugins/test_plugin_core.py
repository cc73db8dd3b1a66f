"""The plugin core: a third-party plugin installed through the entry-point group adds a model and a command."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pluggy
import pytest

from lensengine.plugins import hookspecs
from lensengine.plugins.manager import BUILTIN_PLUGINS, get_plugin_manager

REPO = Path(__file__).resolve().parents[2]

PLUGIN_SOURCE = textwrap.dedent(
    '''
    """A third-party lensengine plugin, as an outside package would write it."""
    from pathlib import Path

    import click

    from lensengine.plugins import hookimpl

    HERE = Path(__file__).parent


    @hookimpl
    def register_models():
        from lensengine.engine.models import load_entry
        return [load_entry(HERE / "thirdparty_models" / "ACME_J.onnx")]


    @hookimpl
    def register_commands(cli):
        @cli.command("hello-lens")
        @click.argument("name")
        def hello(name):
            """Say hello (third-party command)."""
            click.echo(f"hello {name} from a third-party plugin")
    '''
)


def _install_fake_distribution(site: Path) -> None:
    (site / "thirdparty_lens.py").write_text(PLUGIN_SOURCE)
    info = site / "thirdparty_lens-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: thirdparty-lens\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[lensengine]\nthirdparty = thirdparty_lens\n")


def _run(args, site: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "lensengine.engine", *args], capture_output=True, text=True,
                          env=env, timeout=300)


def test_third_party_plugin_adds_a_model_and_a_command(tmp_path):
    torch = pytest.importorskip("torch")
    from lensengine.engine.specs import ModelSpec
    from lensengine.training.export import export_onnx
    from lensengine.training.networks import LensCNN

    site = tmp_path / "site"
    site.mkdir()
    _install_fake_distribution(site)
    torch.manual_seed(0)
    # a third party's own network: the OU-66 architecture on the J band, under its own name
    spec = ModelSpec("ACME-J", "OU-66", ("J",), 0)
    export_onnx(LensCNN("OU-66", 1), spec, site / "thirdparty_models" / "ACME_J.onnx",
                source="third-party test plugin")

    listed = _run(["plugins", "--json"], site)
    assert listed.returncode == 0, listed.stderr
    rows = {r["name"]: r for r in json.loads(listed.stdout)}
    assert rows["thirdparty"]["origin"] == "thirdparty-lens 0.1"
    assert rows["thirdparty"]["hooks"] == ["register_commands", "register_models"]

    hello = _run(["hello-lens", "Einstein"], site)
    assert hello.returncode == 0, hello.stderr
    assert hello.stdout.strip() == "hello Einstein from a third-party plugin"

    models = _run(["models", "list", "--json"], site)
    assert models.returncode == 0, models.stderr
    entries = [m for m in json.loads(models.stdout) if m["source"] == "third-party test plugin"]
    assert [m["name"] for m in entries] == ["ACME-J"]


def test_builtins_register_through_the_same_hooks():
    pm = get_plugin_manager()
    names = {pm.get_name(p) for p in pm.get_plugins()}
    assert set(BUILTIN_PLUGINS) <= names
    for name in BUILTIN_PLUGINS:
        assert pm.get_hookcallers(pm.get_plugin(name)), f"{name} implements no hook"


def test_misspelled_hook_fails_at_start_up():
    class Bad:
        @pluggy.HookimplMarker("lensengine")
        def register_modles(self):  # noqa: D401 - the typo is the point
            return []

    pm = pluggy.PluginManager("lensengine")
    pm.add_hookspecs(hookspecs)
    pm.register(Bad())
    with pytest.raises(pluggy.PluginValidationError, match="register_modles"):
        pm.check_pending()


def test_hook_docs_are_in_step_with_the_hookspecs():
    doc = (REPO / "docs" / "plugins.md").read_text()
    documented = set(re.findall(r"^### `(\w+)\(", doc, flags=re.M))
    specs = {name for name in dir(hookspecs) if hasattr(getattr(hookspecs, name), "lensengine_spec")}
    assert documented == specs
