"""The ``lensengine`` command line.

The root group holds the engine's own commands (``run``, ``demo``, ``models``,
``plugins``), defined in :mod:`lensengine.engine.run_cli` and
:mod:`lensengine.engine.commands` and added here (those modules never import
this one, so there is no import circle); every other command (store, catalog,
simulate, train, explain, recall-test ...) is added by a plugin through the
``register_commands`` hook, built-in plugins included.  Exit codes: 0 success,
1 the job failed (the message names what failed), 2 bad usage or bad input
found before any work started, 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import logging
import sys

import click

from lensengine import __version__
from lensengine.engine.commands import models, plugins_cmd
from lensengine.engine.run_cli import run_cmd

log = logging.getLogger("lensengine")


def setup_logging(verbose: int, quiet: bool) -> None:
    """Our log at INFO (WARNING with ``-q``, DEBUG with ``-vv``); Dask's own INFO chatter only with ``-v``."""
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("lensengine").setLevel(level)
    # distributed sets its own level when imported; the run sets it again after importing it
    logging.getLogger("distributed").setLevel(logging.INFO if verbose >= 1 and not quiet else logging.WARNING)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="lensengine")
@click.option("-v", "--verbose", count=True, help="More log output, Dask's included (-vv for debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors; no progress bars.")
@click.pass_context
def cli(ctx: click.Context, verbose: int, quiet: bool) -> None:
    """lensengine: find strong gravitational lenses in Euclid- and Rubin-like imaging.

    Scores every multiband cutout of a survey store with seven CNNs (OU-J, OU-Y,
    OU-H, OU-JYH, OU-66, OU-VIS, OU-200) and an ensemble, and writes a FITS
    candidate catalogue.  Start with `lensengine demo`, then
    `lensengine run --tiles STORE.zarr`.
    """
    setup_logging(verbose, quiet)
    ctx.ensure_object(dict)
    ctx.obj["quiet"] = quiet
    ctx.obj["verbose"] = 0 if quiet else verbose


for _command in (run_cmd, models, plugins_cmd):
    cli.add_command(_command)


def _register_plugin_commands() -> None:
    from lensengine.plugins.manager import get_plugin_manager

    get_plugin_manager().hook.register_commands(cli=cli)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    _register_plugin_commands()
    cli.main(args=argv, prog_name="lensengine")
