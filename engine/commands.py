"""The engine's own commands: ``models`` and ``plugins`` (``run`` lives in run_cli; cli.py adds them to the root group)."""

from __future__ import annotations

from pathlib import Path

import click

from lensengine.engine.options import echo_json, format_table, json_option, model_names_option, models_dir_option


@click.group()
def models() -> None:
    """Import, export and inspect the ONNX models the engine runs."""


@models.command("list")
@models_dir_option()
@model_names_option()
@json_option()
def list_cmd(models_dir: Path | None, model_names: tuple[str, ...], as_json: bool) -> None:
    """List the models a run would use, with their contracts and hashes."""
    from lensengine.engine.models import ContractError
    from lensengine.engine.registry import resolve_models

    try:
        entries = resolve_models(models_dir, model_names or None)
    except ContractError as exc:
        raise click.UsageError(str(exc)) from None
    rows = [{"name": e.name, "path": str(e.path), "bands": list(e.bands), "stamp": e.stamp,
             "architecture": e.architecture, "source": e.source, "sha256": e.sha256} for e in entries]
    if as_json:
        echo_json(rows)
        return
    click.echo(format_table(["MODEL", "BANDS", "STAMP", "SOURCE", "SHA-256", "FILE"],
                            [[r["name"], ",".join(r["bands"]), f"{r['stamp']} px", r["source"], r["sha256"][:12],
                              r["path"]] for r in rows]))


@models.command("info")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@json_option()
def info_cmd(path: Path, as_json: bool) -> None:
    """Print the metadata of one ONNX model file."""
    from lensengine.engine.models import ContractError, load_entry

    try:
        entry = load_entry(path)
    except ContractError as exc:
        raise click.UsageError(str(exc))
    if as_json:
        echo_json({"path": str(entry.path), "sha256": entry.sha256, "metadata": dict(entry.metadata)})
        return
    click.echo(f"file      {entry.path}  (sha256 {entry.sha256})")
    for key, value in sorted(entry.metadata.items()):
        click.echo(f"{key:18s}{value}")


@click.command("plugins")
@json_option()
def plugins_cmd(as_json: bool) -> None:
    """List the loaded plugins and the hooks each implements."""
    from lensengine.plugins.manager import get_plugin_manager, plugin_origin

    pm = get_plugin_manager()
    rows = []
    for plugin in pm.get_plugins():
        hooks = sorted(h.name for h in pm.get_hookcallers(plugin) or [])
        rows.append({"name": pm.get_name(plugin), "origin": plugin_origin(pm, plugin), "hooks": hooks})
    rows.sort(key=lambda r: (r["origin"] != "builtin", r["name"]))
    if as_json:
        echo_json(rows)
        return
    click.echo(format_table(["PLUGIN", "ORIGIN", "HOOKS"], [[r["name"], r["origin"], ", ".join(r["hooks"])]
                                                            for r in rows]))
