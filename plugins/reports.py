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

from lensengine.engine.options import echo_json, json_option
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
@click.argument("scores", required=False, type=click.Path(exists=True, path_type=Path))
@click.option("--scores", "scores_opt", type=click.Path(exists=True, path_type=Path), default=None,
              metavar="TABLE", help="Parquet score table written by `lensengine run` (or give it as the argument).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder the reports write into.")
@click.option("--name", "names", multiple=True, help="Run only this report (repeatable) [default: all].")
@json_option(help="Print the files each report wrote as JSON on stdout.")
def report_cmd(scores: Path | None, scores_opt: Path | None, out_dir: Path, names: tuple[str, ...],
               as_json: bool) -> None:
    """Run the reports that plugins register (``register_reports``) on a score table.

    \b
    Example:
      lensengine report --scores cands_scores.parquet --out reports/
    """
    if scores is not None and scores_opt is not None and scores != scores_opt:
        raise click.UsageError(f"two score tables given ({scores} and --scores {scores_opt}): give one")
    scores = scores or scores_opt
    if scores is None:
        raise click.UsageError("give the score table: --scores TABLE (or TABLE as the argument)")
    reports = registered_reports()
    unknown = [n for n in names if n not in reports]
    if unknown:
        raise click.UsageError(f"unknown report(s) {unknown}; registered: {sorted(reports) or 'none'}")
    chosen = list(names) or sorted(reports)
    if not chosen:
        if as_json:
            echo_json({})
        else:
            click.echo("no plugin registers a report (the register_reports hook)")
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    done = {}
    for name in chosen:
        done[name] = [str(p) for p in reports[name](scores, out_dir) or []]
        if not as_json:
            click.echo(f"{name}: " + (", ".join(done[name]) or "wrote nothing"))
    if as_json:
        echo_json(done)


@hookimpl
def register_commands(cli):
    cli.add_command(report_cmd)
