"""Built-in plugin: ``lensengine report``, which runs the reports plugins register on a finished score table.

Reports are the last step of the pipeline: a plugin returns
``{name: callable(scores_path, out_dir) -> list[path]}`` from the
``register_reports`` hook and this command runs them (all, or those named with
``--name``) on a score table written by ``lensengine run``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import click

from lensengine.plugins import hookimpl

log = logging.getLogger(__name__)

__all__ = ["registered_reports", "report_cmd"]


def registered_reports() -> dict:
    """Every report registered through ``register_reports``; a name offered twice is an error."""
    from lensengine.plugins.manager import get_plugin_manager

    reports: dict = {}
    for offered in get_plugin_manager().hook.register_reports():
        for name, func in (offered or {}).items():
            if name in reports:
                raise click.UsageError(f"report {name!r} is registered by two plugins")
            reports[name] = func
    return reports


@click.command("report")
@click.argument("scores", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder the reports write into.")
@click.option("--name", "names", multiple=True, help="Run only this report (repeatable) [default: all].")
def report_cmd(scores: Path, out_dir: Path, names: tuple[str, ...]) -> None:
    """Run the reports that plugins register (``register_reports``) on a score table.

    \b
    Example:
      lensengine report cands_scores.parquet --out reports/
    """
    reports = registered_reports()
    unknown = [n for n in names if n not in reports]
    if unknown:
        raise click.UsageError(f"unknown report(s) {unknown}; registered: {sorted(reports) or 'none'}")
    chosen = list(names) or sorted(reports)
    if not chosen:
        click.echo("no plugin registers a report (the register_reports hook)")
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in chosen:
        written = reports[name](scores, out_dir) or []
        click.echo(f"{name}: " + (", ".join(str(p) for p in written) or "wrote nothing"))


@hookimpl
def register_commands(cli):
    cli.add_command(report_cmd)
