"""Built-in plugin (being written): registers its commands through ``register_commands``."""

from __future__ import annotations

from lensengine.plugins import hookimpl


@hookimpl
def register_commands(cli):
    return None
