"""The command line's shared vocabulary: one declaration per option that several commands take.

Every command that reads a survey store calls it ``--tiles``, every command that runs models takes
``--models DIR`` (default: the shipped models) and ``--model NAME`` (repeatable filter), and so on; the
table is docs/cli.md.  Declaring each shared option once, here, is what keeps the commands from drifting
apart again, and ``tests/engine/test_cli_vocabulary.py`` walks every command's ``--help`` to check it.
The catalogs layer cannot import this module (imports only go down), so its ``store`` commands declare
``--tiles`` and ``--json`` themselves; the same test holds them to these definitions.

Renamed options keep their old spelling as a hidden alias (:class:`AliasedOption`) so scripts keep working.
This module imports only click: ``lensengine --help`` stays fast.
"""

from __future__ import annotations

import functools
import importlib.util
import json
from pathlib import Path

import click

__all__ = ["AliasedOption", "ExtraChoice", "MissingExtra", "PRECISIONS", "DEVICES", "EXTRA_MODULES",
           "tiles_option", "models_dir_option", "model_names_option", "precision_option", "device_option",
           "threads_option", "json_option", "echo_json", "format_table", "needs_extra", "missing_extra",
           "require_modules"]

#: the choices of --precision and --device that every command shows, and their default
PRECISIONS = ("auto", "fp32", "bf16")
DEVICES = ("auto", "cpu", "cuda")

#: import name -> extra, for every distribution of pyproject's [project.optional-dependencies] but dev's
#: (a test compares it with pyproject.toml): what an engine-only install may lack.  scipy is there too
#: because the training code relies on a recent one, although scikit-learn usually brings some scipy along
EXTRA_MODULES = {"torch": "training", "onnx": "training", "lenstronomy": "training", "skypy": "training",
                 "speclite": "training", "skimage": "training", "matplotlib": "training", "scipy": "training",
                 "s3fs": "cloud", "gcsfs": "cloud", "openvino": "fast"}


class AliasedOption(click.Option):
    """An option whose old spellings (``hidden_aliases``) are accepted but left out of ``--help``."""

    def __init__(self, *args, hidden_aliases: tuple[str, ...] = (), **kwargs):
        super().__init__(*args, **kwargs)
        self.hidden_aliases = tuple(hidden_aliases)
        unknown = [a for a in self.hidden_aliases if a not in self.opts]
        if unknown:
            raise TypeError(f"hidden aliases {unknown} are not among the option's names {self.opts}")

    def get_help_record(self, ctx):
        shown = [o for o in self.opts if o not in self.hidden_aliases]
        saved, self.opts = self.opts, shown
        try:
            return super().get_help_record(ctx)
        finally:
            self.opts = saved


class ExtraChoice(click.Choice):
    """A choice list shown the same everywhere, plus values one command also accepts (``extra``).

    ``--device`` shows auto|cpu|cuda on every command; ``run`` also takes ``tensorrt`` and ``train``
    ``cuda:N``.  The extras are named in that command's help text instead of widening the shared list.
    """

    def __init__(self, choices, extra: tuple[str, ...] = (), extra_prefixes: tuple[str, ...] = ()):
        super().__init__(choices)
        self.extra = tuple(extra)
        self.extra_prefixes = tuple(extra_prefixes)

    def convert(self, value, param, ctx):
        if isinstance(value, str):
            if value in self.extra:
                return value
            for prefix in self.extra_prefixes:
                if value.startswith(prefix) and value[len(prefix):].isdigit():
                    return value
        return super().convert(value, param, ctx)


def tiles_option(required: bool = True, help: str = "Survey store (zarr) to read, e.g. survey.zarr.",
                 hidden_aliases: tuple[str, ...] = (), exists: bool = False):
    """``--tiles STORE``: the survey store a command reads (old spellings in ``hidden_aliases``).

    A local path (a Path) or an fsspec URL such as ``s3://bucket/survey.zarr`` (kept a string).
    """
    from lensengine.catalogs.commands import StoreLocation

    return click.option("--tiles", *hidden_aliases, "store", cls=AliasedOption, hidden_aliases=hidden_aliases,
                        type=StoreLocation(exists=exists), required=required, default=None,
                        metavar="STORE", help=help)


def models_dir_option(multiple: bool = False, extra_help: str = ""):
    """``--models DIR``: a folder of lensengine ONNX models; default the shipped models."""
    return click.option("--models", "models_dir", type=click.Path(file_okay=False, path_type=Path) if not multiple
                        else str, multiple=multiple, default=None, metavar="DIR",
                        help="Folder of lensengine ONNX models [default: the shipped default models]."
                             + (" " + extra_help if extra_help else ""))


def model_names_option(extra_help: str = "", default_help: str = "[default: all models of the set]"):
    """``--model NAME``: only these models (repeatable); default all models of the set."""
    return click.option("--model", "model_names", multiple=True, metavar="NAME",
                        help=f"Only this model, e.g. OU-66 (repeatable) {default_help}."
                             + (" " + extra_help if extra_help else ""))


def precision_option(extra: tuple[str, ...] = (), extra_help: str = ""):
    """``--precision auto|fp32|bf16`` (default auto), plus values one command also takes."""
    return click.option("--precision", type=ExtraChoice(PRECISIONS, extra=extra), default="auto",
                        show_default=True,
                        help="Network arithmetic. auto: what is measured faster here and stays correct (per "
                             "command below), else fp32."
                             + (" " + extra_help if extra_help else ""))


def device_option(extra: tuple[str, ...] = (), extra_prefixes: tuple[str, ...] = (), extra_help: str = ""):
    """``--device auto|cpu|cuda`` (default auto), plus values one command also takes."""
    return click.option("--device", type=ExtraChoice(DEVICES, extra=extra, extra_prefixes=extra_prefixes),
                        default="auto", show_default=True,
                        help="Where the networks run. auto: a CUDA GPU when one is present, else the CPU."
                             + (" " + extra_help if extra_help else ""))


def threads_option(help: str = "Threads per worker (0: decided from the cores)."):
    """``--threads N`` (default 0: decide from the cores)."""
    return click.option("--threads", type=click.IntRange(0), default=0, show_default=True, help=help)


def json_option(help: str = "Print the results as JSON on stdout (logs and progress stay on stderr)."):
    """``--json``: results as JSON on stdout, on every command."""
    return click.option("--json", "as_json", is_flag=True, help=help)


def echo_json(obj) -> None:
    """Print ``obj`` as indented JSON (paths and other objects as strings)."""
    click.echo(json.dumps(obj, indent=2, default=str))


def format_table(header: list[str], rows: list[list]) -> str:
    """Plain left-aligned columns under a header: nothing cut, and still one line per row in a pipe."""
    cells = [[str(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[j]) for r in cells)) if cells else len(h) for j, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip(),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in cells]
    return "\n".join(lines)


class MissingExtra(click.ClickException):
    """A command needs an optional extra that is not installed: one line naming it, exit 2."""

    exit_code = 2


def missing_extra(module: str, command: str | None = None) -> MissingExtra:
    """The error for a missing module of an extra: names the command, the module and the install line."""
    extra = EXTRA_MODULES.get(module.split(".")[0], "training")
    who = f"`{command}`" if command else "this command"
    return MissingExtra(f"{who} needs the {extra} extra (missing module {module.split('.')[0]}): "
                        f"pip install \"lensengine[{extra}]\" (from a checkout: pip install -e \".[{extra}]\")")


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def require_modules(ctx: click.Context | None, *modules: str) -> None:
    """Raise :class:`MissingExtra` for the first of ``modules`` that cannot be imported."""
    for module in modules:
        if not _importable(module):
            raise missing_extra(module, ctx.command_path if ctx is not None else None)


def needs_extra(*modules: str):
    """Decorator: check ``modules`` before the command does any work (one-line message, exit 2)."""
    def wrap(func):
        @functools.wraps(func)
        def checked(*args, **kwargs):
            require_modules(click.get_current_context(silent=True), *modules)
            return func(*args, **kwargs)
        return checked
    return wrap
