"""The ``lensengine`` command line.

The root group holds the engine's own commands (``run``, ``demo``, ``models``,
``plugins``), defined in :mod:`lensengine.engine.run_cli` and
:mod:`lensengine.engine.commands` and added here (those modules never import
this one, so there is no import circle); every other command (store, catalog,
simulate, train, explain, recall-test ...) is added by a plugin through the
``register_commands`` hook, built-in plugins included.  Exit codes: 0 success,
1 the job failed (the message names what failed), 2 bad usage or bad input
found before any work started (a missing optional extra included), 130
interrupted (Ctrl-C).  The options every command shares are declared once in
:mod:`lensengine.engine.options` (docs/cli.md).
"""

from __future__ import annotations

import logging
import re
import sys

import click

from lensengine import __version__
from lensengine.engine.commands import models, plugins_cmd
from lensengine.engine.options import EXTRA_MODULES, missing_extra
from lensengine.engine.run_cli import run_cmd

log = logging.getLogger("lensengine")

#: the root group's own options, which a user may also write after the subcommand
_GLOBAL_FLAGS = ("-v", "--verbose", "-q", "--quiet")


def _is_global_flag(token: str) -> bool:
    return token in _GLOBAL_FLAGS or re.fullmatch(r"-v+", token) is not None  # -vv counts twice


def _resolve(group: click.Group, ctx: click.Context, tokens: list[str]) -> tuple[list[str], click.Command]:
    """The subcommand names ``tokens`` start with, and the command they lead to."""
    command: click.Command = group
    names: list[str] = []
    for token in tokens:
        if not isinstance(command, click.Group):
            break
        if token.startswith("-"):
            continue
        nxt = command.get_command(ctx, token)
        if nxt is None:
            break
        names.append(token)
        command = nxt
    return names, command


def hoist_global_options(group: click.Group, ctx: click.Context, args: list[str]) -> list[str]:
    """``lensengine run -q ...`` -> ``lensengine -q run ...``: -v/-q work before or after the subcommand.

    The root's options take no values, so the first token that is not an option is the subcommand;
    global flags after it move in front of it, up to a ``--`` and unless the command declares the same
    flag itself.
    """
    first = next((i for i, a in enumerate(args) if not a.startswith("-")), None)
    if first is None:
        return list(args)
    rest = args[first:]
    end = rest.index("--") if "--" in rest else len(rest)
    names, command = _resolve(group, ctx, rest[:end])
    own = {o for p in command.params for o in (*p.opts, *p.secondary_opts)} if names else set()
    ctx.meta["lensengine.command"] = " ".join(["lensengine", *names])
    hoisted = [a for a in rest[:end] if _is_global_flag(a) and a not in own]
    kept = [a for a in rest[:end] if not (_is_global_flag(a) and a not in own)]
    return [*args[:first], *hoisted, *kept, *rest[end:]]


class LensGroup(click.Group):
    """The root group: global options after the subcommand, and one line for a missing optional extra."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, hoist_global_options(self, ctx, args))

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except ImportError as exc:
            # a module of an optional extra (torch, lenstronomy, matplotlib ...) imported deep inside a
            # command: say which extra to install instead of a traceback; anything else is a real bug
            module = (exc.name or "").split(".")[0]
            if module not in EXTRA_MODULES:
                raise
            raise missing_extra(module, ctx.meta.get("lensengine.command")) from None


def setup_logging(verbose: int, quiet: bool) -> None:
    """Our log at INFO (WARNING with ``-q``, DEBUG with ``-vv``); Dask's own INFO chatter only with ``-v``."""
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("lensengine").setLevel(level)
    # distributed sets its own level when imported; the run sets it again after importing it
    logging.getLogger("distributed").setLevel(logging.INFO if verbose >= 1 and not quiet else logging.WARNING)


@click.group(cls=LensGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
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

    -v/-q may also follow the subcommand (`lensengine run -q ...`).  Every
    command shares one vocabulary (--tiles STORE, --models DIR, --model NAME,
    --precision, --device, --json): docs/cli.md.
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
