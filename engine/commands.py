"""The engine's own commands: ``models`` and ``plugins`` (``run`` lives in run_cli; cli.py adds them to the root group)."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.group()
def models() -> None:
    """Import, export and inspect the ONNX models the engine runs."""


@models.command("list")
@click.option("--models", "models_dir", type=click.Path(path_type=Path), default=None,
              help="Model directory (default: the shipped default models).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def list_cmd(models_dir: Path | None, as_json: bool) -> None:
    """List the models a run would use, with their contracts and hashes."""
    from lensengine.engine.registry import resolve_models

    entries = resolve_models(models_dir)
    if as_json:
        click.echo(json.dumps([{"name": e.name, "path": str(e.path), "bands": list(e.bands), "stamp": e.stamp,
                                "architecture": e.architecture, "source": e.source, "sha256": e.sha256}
                               for e in entries], indent=2))
        return
    for e in entries:
        click.echo(f"{e.name:8s} {','.join(e.bands):12s} {e.stamp:4d}px  {e.source[:40]:40s} {e.sha256[:12]}  {e.path}")


@models.command("info")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def info_cmd(path: Path) -> None:
    """Print the metadata of one ONNX model file."""
    from lensengine.engine.models import ContractError, load_entry

    try:
        entry = load_entry(path)
    except ContractError as exc:
        raise click.UsageError(str(exc))
    click.echo(f"file      {entry.path}  (sha256 {entry.sha256})")
    for key, value in sorted(entry.metadata.items()):
        click.echo(f"{key:18s}{value}")


@click.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
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
        click.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        click.echo(f"{r['name']:40s} {r['origin']:24s} {', '.join(r['hooks'])}")
