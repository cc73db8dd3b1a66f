"""Built-in plugin: registers the shipped default models (``lensengine.models``)."""

from __future__ import annotations

import logging

from lensengine.plugins import hookimpl

log = logging.getLogger(__name__)


@hookimpl
def register_models():
    from lensengine.engine.models import default_models_dir, discover_models

    directory = default_models_dir()
    if not any(directory.glob("*.onnx")):
        log.debug("no default models shipped in %s", directory)
        return []
    return discover_models(directory)
