"""One CLI vocabulary (issue 16): every command's shared options have the same names, defaults and help.

The test walks the whole click tree, plugin commands included, in-process (no subprocess, no work done):
docs/cli.md is the table it enforces.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from lensengine.engine import options as O
from lensengine.engine.cli import _register_plugin_commands, cli, hoist_global_options

ROOT = Path(__file__).resolve().parents[2]


def _commands() -> dict[str, click.Command]:
    _register_plugin_commands()
    found: dict[str, click.Command] = {}

    def walk(command: click.Command, path: list[str]) -> None:
        if isinstance(command, click.Group):
            for name, sub in command.commands.items():
                walk(sub, [*path, name])
        else:
            found[" ".join(path)] = command

    walk(cli, [])
    return found


def _option(command: click.Command, name: str) -> click.Option | None:
    return next((p for p in command.params if isinstance(p, click.Option) and name in p.opts), None)


COMMANDS = _commands()

#: where each shared option must be offered (docs/cli.md's table)
TAKEN_BY = {
    "--tiles": ("run", "explain", "train", "evaluate", "store info", "store validate"),
    "--models": ("run", "evaluate", "explain", "recall-test", "models list"),
    "--model": ("run", "evaluate", "explain", "recall-test", "models list", "models import-published", "train"),
    "--precision": ("run", "train"),
    "--device": ("run", "train"),
    "--threads": ("run", "train"),
    "--workers": ("run", "demo", "simulate", "store from-fits", "recall-test"),
}


def test_the_walk_finds_the_commands():
    # a walk that silently found nothing would make every test below pass
    for name in ("run", "demo", "simulate", "train", "evaluate", "explain", "recall-test", "store info",
                 "store validate", "store from-fits", "catalog info", "models list", "plugins", "tsne fit"):
        assert name in COMMANDS, f"lensengine {name} is missing from the command tree"


@pytest.mark.parametrize("path", sorted(COMMANDS))
def test_every_option_explains_itself(path):
    command = COMMANDS[path]
    assert (command.help or "").strip(), f"lensengine {path} has no help text"
    for param in command.params:
        if isinstance(param, click.Option) and not param.hidden:
            assert (param.help or "").strip(), f"lensengine {path} {'/'.join(param.opts)} has no help text"


@pytest.mark.parametrize("path", sorted(COMMANDS))
def test_every_command_prints_json_on_request(path):
    option = _option(COMMANDS[path], "--json")
    assert option is not None, f"lensengine {path} has no --json"
    # the value a command gets without the flag (click 8.5 keeps an unset marker in ``default`` itself)
    off = option.get_default(click.Context(COMMANDS[path]))
    assert option.is_flag and off is False and option.name == "as_json", path
    assert "JSON" in option.help, path


@pytest.mark.parametrize("name", sorted(TAKEN_BY))
def test_shared_options_are_offered_where_the_table_says(name):
    missing = [path for path in TAKEN_BY[name] if _option(COMMANDS[path], name) is None]
    assert not missing, f"{name} is missing from: {missing}"


def test_tiles_is_the_store_everywhere():
    for path, command in COMMANDS.items():
        option = _option(command, "--tiles")
        if option is None:
            continue
        assert option.metavar == "STORE" and not option.multiple and option.default is None, path
        assert option.type.name == "store", f"lensengine {path} --tiles is not the store type"
        assert "store" in option.help.lower(), path
    # no command names the store a second way (the old spellings live on only as hidden aliases)
    for path, command in COMMANDS.items():
        for old in ("--data", "--store"):
            option = _option(command, old)
            if option is not None:
                assert old in getattr(option, "hidden_aliases", ()), f"lensengine {path} still shows {old}"


def test_models_default_to_the_shipped_set_and_model_filters_the_same_way():
    for path, command in COMMANDS.items():
        models = _option(command, "--models")
        if models is not None:
            assert models.name == "models_dir" and models.metavar == "DIR" and not models.required, path
            assert models.default in (None, ()), path
            assert "[default: the shipped default models]" in models.help, path
            assert models.multiple == (path == "evaluate"), f"only evaluate compares several sets: {path}"
        model = _option(command, "--model")
        if model is not None:
            assert model.name == "model_names" and model.multiple and not model.required, path
            assert model.metavar == "NAME" and "(repeatable)" in model.help, path
            # train alone has no default set: each model is a long job (docs/cli.md)
            default = "[no default" if path == "train" else "[default: all models of the set]"
            assert default in model.help, path


def test_precision_device_threads_workers_agree():
    for path, command in COMMANDS.items():
        for name, choices in (("--precision", O.PRECISIONS), ("--device", O.DEVICES)):
            option = _option(command, name)
            if option is not None:
                assert isinstance(option.type, O.ExtraChoice), f"{path} {name}"
                assert tuple(option.type.choices) == choices and option.default == "auto", f"{path} {name}"
                assert option.show_default, f"{path} {name}"
        threads = _option(command, "--threads")
        if threads is not None:
            assert threads.default == 0 and threads.type.min == 0, path
        workers = _option(command, "--workers")
        if workers is not None:
            assert workers.type.min == 1, path
            if path == "run":  # one on the CPU, more where the networks run on a GPU (run_cli.sized_for)
                assert workers.default is None and "[default: 1 on the CPU;" in workers.help, path
            else:
                assert workers.default == 1, path


def test_help_pages_show_the_vocabulary_and_hide_old_spellings():
    runner = CliRunner()
    for path, command in COMMANDS.items():
        result = runner.invoke(cli, [*path.split(), "--help"])
        assert result.exit_code == 0, (path, result.output)
        text = result.output
        for old in ("--data ", "--weights ", "--store "):
            assert old not in text, f"lensengine {path} --help shows the old spelling {old.strip()}"
        if _option(command, "--precision") is not None:
            assert "[auto|fp32|bf16]" in text and "default: auto" in text, path
        if _option(command, "--device") is not None:
            assert "[auto|cpu|cuda]" in text, path
    assert "docs/cli.md" in runner.invoke(cli, ["--help"]).output


def test_old_spellings_still_work(tmp_path):
    store = tmp_path / "s.zarr"
    store.mkdir()

    def params(path: str, args: list[str]) -> dict:
        with COMMANDS[path].make_context(path, args) as ctx:
            return ctx.params

    assert params("train", ["--data", str(store), "--out", str(tmp_path / "o"), "--all"])["store"] == store
    assert params("train", ["--tiles", str(store), "--out", str(tmp_path / "o"), "--all"])["store"] == store
    assert params("evaluate", ["--data", str(store)])["store"] == store
    assert params("explain", ["--weights", str(tmp_path), "--out", str(tmp_path)])["weights_dir"] == tmp_path
    assert params("recall-test", ["--store", str(store)])["known_stores"] == (store,)
    assert params("train", ["--tiles", str(store), "--out", "o", "--all", "--device", "cuda:1",
                            "--precision", "fp16"])["device"] == "cuda:1"
    with pytest.raises(click.BadParameter):
        params("run", ["--tiles", str(store), "--device", "cuda:1"])  # run's extra is tensorrt only
    with pytest.raises(click.BadParameter):
        params("run", ["--tiles", str(store), "--precision", "fp16"])


def test_store_commands_take_the_store_either_way(tmp_path):
    from tests.engine.conftest import make_store

    path = tmp_path / "s.zarr"
    make_store(path, tiles=("T0",), n_per_tile=4, chunk_size=4, bad=False)
    runner = CliRunner()
    as_argument = runner.invoke(cli, ["store", "info", str(path), "--json"])
    as_option = runner.invoke(cli, ["store", "info", "--tiles", str(path), "--json"])
    assert as_argument.exit_code == 0 and as_option.exit_code == 0, as_argument.output + as_option.output
    assert json.loads(as_argument.output) == json.loads(as_option.output)
    assert runner.invoke(cli, ["store", "validate", "--tiles", str(path)]).exit_code == 0
    both = runner.invoke(cli, ["store", "info", str(path), "--tiles", str(tmp_path / "other.zarr")])
    assert both.exit_code == 2 and "two stores" in both.output
    neither = runner.invoke(cli, ["store", "info"])
    assert neither.exit_code == 2 and "--tiles STORE" in neither.output
    # pixel scales with their unit, truth columns with readable types
    text = runner.invoke(cli, ["store", "info", "--tiles", str(path)]).output
    assert "VIS 0.1\u2033/px" in text and "H 0.3\u2033/px" in text, text
    assert "theta_e (float32)" in text and "label (int8)" in text and "<f4" not in text, text


def test_global_options_after_the_subcommand():
    ctx = click.Context(cli)
    assert hoist_global_options(cli, ctx, ["run", "--tiles", "s.zarr", "-vv", "-q"]) == \
        ["-vv", "-q", "run", "--tiles", "s.zarr"]
    assert hoist_global_options(cli, ctx, ["store", "info", "--quiet", "s.zarr"]) == \
        ["--quiet", "store", "info", "s.zarr"]
    # after "--" everything is the command's; a command's own -v is left to it
    assert hoist_global_options(cli, ctx, ["report", "--", "-q"]) == ["report", "--", "-q"]
    own = click.Group("root", commands=[click.Command("x", params=[click.Option(["-v"], is_flag=True)])])
    assert hoist_global_options(own, click.Context(own), ["x", "-v"]) == ["x", "-v"]
    # end to end: the root sees -q given after a nested subcommand
    with cli.make_context("lensengine", ["models", "list", "-q", "--json"]) as root:
        assert root.params["quiet"] is True
    result = CliRunner().invoke(cli, ["plugins", "-q", "--json"])
    assert result.exit_code == 0 and json.loads(result.output), result.output


def test_tables_have_headers_and_cut_nothing():
    from lensengine.engine.registry import registered_models

    entries = registered_models()  # the shipped models (models/ in the checkout)
    if not entries:
        pytest.skip("no shipped models in this checkout")
    result = CliRunner().invoke(cli, ["models", "list"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["MODEL", "BANDS", "STAMP", "SOURCE", "SHA-256", "FILE"]
    assert set(lines[1]) <= {"-", " "}
    for entry in entries:
        row = next(line for line in lines if line.startswith(entry.name + " "))
        assert entry.source in row and str(entry.path) in row, row  # whole texts, however long
    filtered = CliRunner().invoke(cli, ["models", "list", "--model", entries[-1].name, "--json"])
    assert [m["name"] for m in json.loads(filtered.output)] == [entries[-1].name]
    plugins = CliRunner().invoke(cli, ["plugins"]).output.splitlines()
    assert plugins[0].split() == ["PLUGIN", "ORIGIN", "HOOKS"]
    assert any(line.startswith("lensengine.training.simulate_commands ") for line in plugins)


def test_docs_page_lists_every_shared_option():
    text = (ROOT / "docs" / "cli.md").read_text()
    for name in (*TAKEN_BY, "--json", "--out", "--scores", "--published-weights", "-v", "-q"):
        assert re.search(rf"`{re.escape(name)}[ `]", text), f"docs/cli.md does not list {name}"
    for choice in (*O.PRECISIONS, *O.DEVICES):
        assert choice in text


def test_run_summary_as_json():
    # the run itself is covered by tests/engine/test_run.py; here only what --json prints of its summary
    from types import SimpleNamespace

    from lensengine.engine.run import RunSummary
    from lensengine.engine.run_cli import summary_json

    summary = RunSummary(n_cutouts=6, n_scored=5, n_flagged=1, n_candidates=2, seconds=2.0,
                         flag_counts={"NAN_PIXELS": 1})
    opts = SimpleNamespace(threshold=0.5, store=Path("s.zarr"), scores=Path("c_scores.parquet"), out=Path("c.fits"),
                           models=[SimpleNamespace(name="OU-J")])
    printed = json.loads(json.dumps(summary_json(summary, opts)))
    assert printed["n_cutouts"] == 6 and printed["n_flagged"] == 1 and printed["flag_counts"] == {"NAN_PIXELS": 1}
    assert printed["rate"] == pytest.approx(summary.rate) and printed["models"] == ["OU-J"]
    assert printed["out"] == "c.fits" and printed["scores"] == "c_scores.parquet" and printed["store"] == "s.zarr"
