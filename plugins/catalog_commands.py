"""Built-in plugin: adds the catalogs layer's ``store`` and ``catalog`` commands.

The commands live beside the code they drive (:mod:`lensengine.catalogs.commands`); this module is the
plugin that registers them, so the catalogs layer never imports the plugin system above it
(docs/architecture.md).
"""

from __future__ import annotations

from lensengine.catalogs import commands
from lensengine.plugins import hookimpl


@hookimpl
def register_commands(cli):
    commands.register_commands(cli)
