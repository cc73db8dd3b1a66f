"""The plugin manager: loads built-in plugins, then entry-point plugins."""

from __future__ import annotations

import importlib
import logging
from functools import lru_cache

import pluggy

from lensengine.plugins import hookspecs

log = logging.getLogger(__name__)

#: Built-in plugins, loaded exactly like external ones (through the hooks).
BUILTIN_PLUGINS = (
    "lensengine.plugins.builtin_models",
    "lensengine.plugins.torch_runner",
    "lensengine.plugins.catalog_commands",
    "lensengine.training.simulate_commands",
    "lensengine.training.train_commands",
    "lensengine.training.engine_commands",
    "lensengine.plugins.tsne",
    "lensengine.plugins.interpret",
    "lensengine.plugins.recall",
    "lensengine.plugins.reports",
    "lensengine.plugins.gallery",
)


def _new_manager(load_entrypoints: bool = True) -> pluggy.PluginManager:
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    for name in BUILTIN_PLUGINS:
        pm.register(importlib.import_module(name), name=name)
    if load_entrypoints:
        pm.load_setuptools_entrypoints(hookspecs.PROJECT)
    pm.check_pending()
    return pm


@lru_cache(maxsize=1)
def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager (built-ins + ``lensengine`` entry points)."""
    return _new_manager()


def reset_plugin_manager() -> None:
    """Forget the cached manager (tests that install plugins at run time)."""
    get_plugin_manager.cache_clear()


def plugin_origin(pm: pluggy.PluginManager, plugin) -> str:
    """'builtin' or the distribution that provides an entry-point plugin."""
    name = pm.get_name(plugin) or ""
    if name in BUILTIN_PLUGINS:
        return "builtin"
    for p, dist in pm.list_plugin_distinfo():
        if p is plugin:
            return f"{dist.project_name} {dist.version}"
    return "registered at run time"
