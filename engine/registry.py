"""Resolve which models a run uses: a directory, or what plugins register."""

from __future__ import annotations

from pathlib import Path

from lensengine.engine.models import ContractError, ModelEntry, check_entry, discover_models

__all__ = ["resolve_models", "registered_models"]


def registered_models() -> list[ModelEntry]:
    """Every model registered through the ``register_models`` hook, checked for name clashes and contract."""
    from lensengine.plugins.manager import get_plugin_manager

    pm = get_plugin_manager()
    seen: dict[str, ModelEntry] = {}
    for result in pm.hook.register_models():
        for entry in result or []:
            check_entry(entry, "a register_models plugin")
            if entry.name in seen and seen[entry.name].path != entry.path:
                raise ContractError(
                    f"model {entry.name!r} is registered twice: {seen[entry.name].path} and {entry.path}"
                )
            seen[entry.name] = entry
    return list(seen.values())


def resolve_models(models_dir: str | Path | None = None, names: list[str] | tuple[str, ...] | None = None) -> list[ModelEntry]:
    """The models to run: all ONNX models in ``models_dir`` if given, else the registered ones.

    ``names`` selects a subset (in the given order); an unknown name is an error.
    """
    entries = discover_models(models_dir) if models_dir is not None else registered_models()
    if not entries:
        where = str(models_dir) if models_dir is not None else "the registered plugins"
        raise ContractError(
            f"no models found in {where}; train them (`lensengine train`) or import the paper's weights "
            "(`lensengine models import-published DIR --out models/published`) and pass --models"
        )
    if names:
        by_name = {e.name: e for e in entries}
        unknown = [n for n in names if n not in by_name]
        if unknown:
            raise ContractError(f"models {unknown} not found; available: {sorted(by_name)}")
        entries = [by_name[n] for n in names]
    return entries
