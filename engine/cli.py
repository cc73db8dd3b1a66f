"""The ``lensengine`` command line.

The root group holds the engine's own commands (``run``, ``models``,
``plugins``); every other command (store, catalog, simulate, train, explain,
recall-test ...) is added by a plugin through the ``register_commands`` hook,
built-in plugins included.  Exit codes: 0 success, 1 the job failed, 2 bad
usage or bad input.
"""

from __future__ import annotations

import logging
import sys

import click

from lensengine import __version__

log = logging.getLogger("lensengine")


class UsageError(click.UsageError):
    """Bad usage or bad input: exit code 2 with a clear message."""


def setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="lensengine")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
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


def _register_plugin_commands() -> None:
    from lensengine.plugins.manager import get_plugin_manager

    get_plugin_manager().hook.register_commands(cli=cli)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    _register_plugin_commands()
    cli.main(args=argv, prog_name="lensengine")


# the engine's own commands register themselves on import
from lensengine.engine import commands as _commands  # noqa: E402,F401
from lensengine.engine import run_cli as _run_cli  # noqa: E402,F401
