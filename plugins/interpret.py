"""Built-in plugin: ``lensengine explain``, interpretability maps for the torch networks (paper §5).

Registers through ``register_commands`` exactly as a third-party plugin would.
The methods live in :mod:`lensengine.plugins._interpret_methods` (tensors in,
arrays out), the figures in :mod:`lensengine.plugins._interpret_plots`, the
orchestration (:func:`explain_cutouts`) in :mod:`lensengine.plugins._interpret_run`.
``lensengine run --explain-top K`` reaches it through the ``explain_candidates``
hook, never by import.  torch is imported only when maps are made.
Documentation: docs/interpretability.md.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import click

from lensengine.engine.options import (AliasedOption, echo_json, json_option, model_names_option, models_dir_option,
                                       needs_extra, tiles_option)
from lensengine.plugins import hookimpl

log = logging.getLogger(__name__)

__all__ = ["explain_cutouts", "explain_cmd"]

_METHOD_CHOICES = ("occlusion", "kav", "cgi", "deepdream", "gki", "gradcam", "all")


def explain_cutouts(model_name, net, bands_batch, methods, out_dir, **kwargs):
    """Interpretability maps for a batch of cutouts: ``{object_id: {method: PNG path}}``.

    See :func:`lensengine.plugins._interpret_run.explain_cutouts` (imports torch lazily).
    """
    from lensengine.plugins._interpret_run import explain_cutouts as run

    return run(model_name, net, bands_batch, methods, out_dir, **kwargs)


@hookimpl
def explain_candidates(model, store, rows, out_dir):
    """Occlusion and guided Grad-CAM maps of ``rows`` ((tile, row, object_id), rank order) for ``model``.

    The torch weights beside the model's ONNX file are loaded once; each
    cutout goes through the engine's preprocessing with the model's own bands
    and stamp (:meth:`~lensengine.engine.models.ModelEntry.as_spec`).  Without
    torch it does not answer (None), and the engine says what is missing.
    """
    try:
        from lensengine.training.export import load_torch_model
    except ImportError as exc:
        log.warning("interpretability maps need torch (pip install 'lensengine[training]'): %s", exc)
        return None

    net = load_torch_model(model.path, model.name)
    done: dict = {}
    for rank, (tile, row, oid) in enumerate(rows, start=1):
        batch = store.read(tile, row, row + 1)
        done.update(explain_cutouts(model.name, net, batch, ["occlusion", "gradcam"], out_dir,
                                    object_ids=[oid], spec=model.as_spec()))
        log.info("explained candidate %d (object %d) with %s", rank, oid, model.name)
    return done


def _parse_ids(text: str | None) -> list[int]:
    if not text:
        return []
    try:
        return [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integer object IDs, got {text!r}", param_hint="--ids")


def _parse_kernels(text: str | None) -> list[tuple[int, int]]:
    if not text:
        return []
    try:
        return [tuple(int(v) for v in item.split(":")) for item in text.split(",") if item]  # type: ignore[misc]
    except ValueError:
        raise click.BadParameter(f"expected LAYER:KERNEL[,LAYER:KERNEL...], got {text!r}", param_hint="--kernels")


@click.command("explain")
@model_names_option(extra_help="Each model's maps go to OUT/<MODEL>/.")
@models_dir_option(extra_help="The torch .pt beside each .onnx is used.")
@click.option("--published-weights", "--weights", "weights_dir", cls=AliasedOption, hidden_aliases=("--weights",),
              type=click.Path(exists=True, file_okay=False, path_type=Path), default=None, metavar="DIR",
              help="The paper's published weights directory (OU_*_Weights.pt) instead of --models.")
@tiles_option(required=False, exists=True, help="Survey store (zarr) holding the cutouts.")
@click.option("--ids", "ids", default=None, help="Comma-separated object IDs to explain, e.g. 12,57.")
@click.option("--method", "methods", multiple=True, type=click.Choice(_METHOD_CHOICES), default=(),
              help="Method (repeatable). Default: occlusion, gradcam and kav, seconds per object and model on a "
                   "laptop CPU. Opt-in, minutes each: deepdream (1000 updates per object, about 4.5 min per object "
                   "with OU-200) and cgi (5000 updates per model); the time they will take here is printed "
                   "before they start. all: every method.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output directory (PNG figures and raw .npy/.npz maps).")
@click.option("--recipe", type=click.Choice(("paper", "code")), default="paper", show_default=True,
              help="CGI / Deep Dream recipe: the paper's (lr 0.1 x 5000; lr 0.001 x 1000) or the published code's "
                   "(SGD lr 0.1, 99 updates on the raw logit, re-scale and clip).")
@click.option("--steps", type=click.IntRange(1), default=None, help="Override the number of updates (CGI, Deep Dream, GKI).")
@click.option("--target", type=click.Choice(("lens", "non-lens")), default="lens", show_default=True,
              help="Class to explain or maximise.")
@click.option("--occlusion-grid", "grid", type=click.Choice(("quick", "paper")), default="quick", show_default=True,
              help="Occlusion squares: quick (6 px OU-66, 20 px OU-200: about 100 positions, seconds) or the "
                   "paper's (1 px OU-66, 4 px OU-200: thousands of positions, minutes per object).")
@click.option("--patch", type=click.IntRange(1), default=None, help="Occlusion square in pixels (default: the grid's).")
@click.option("--stride", type=click.IntRange(1), default=None, help="Occlusion stride (default: the grid's).")
@click.option("--score", type=click.Choice(("p", "logit")), default="p", show_default=True,
              help="Occlusion score: ΔP(lens) (paper) or Δ(lens - non-lens logit), for saturated P.")
@click.option("--kernels", default=None, help="GKI kernels as LAYER:KERNEL[,...] (trunk indices), e.g. 0:6,4:25.")
@click.option("--top-k", type=click.IntRange(1), default=9, show_default=True, help="KAV: images per kernel.")
@click.option("--limit", type=click.IntRange(1), default=None, help="KAV over the store: at most this many cutouts.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the noise images (CGI, GKI).")
@json_option(help="Print the written paths as JSON on stdout (one model: its object; several: {\"models\": "
                  "{MODEL: object}}).")
@needs_extra("torch", "matplotlib")
def explain_cmd(model_names, models_dir, weights_dir, store, ids, methods, out_dir, recipe, steps, target, grid, patch,
                stride, score, kernels, top_k, limit, seed, as_json):
    """Interpretability maps for the networks (paper §5): occlusion, KAV, CGI, Deep Dream, GKI, Guided Grad-CAM.

    Every model of the set unless --model names some; each model's maps go to OUT/<MODEL>/.

    \b
    Examples:
      lensengine explain --model OU-66 --published-weights ../shared/published-weights \\
          --tiles survey.zarr --ids 12,57 --method occlusion --method gradcam --out explain/
      lensengine explain --model OU-200 --models models/published --method cgi --recipe code --out explain/
      lensengine explain --model OU-66 --models models/published --tiles survey.zarr --method kav --out explain/
    """
    from lensengine.engine.models import ContractError
    from lensengine.plugins import _interpret_run as R

    chosen = set(R.METHODS) if "all" in methods else set(methods or R.DEFAULT_METHODS)
    object_ids = _parse_ids(ids)
    cutout_methods = chosen & set(R.PER_CUTOUT)
    if not (object_ids or store is not None or chosen & set(R.PER_MODEL)):
        raise click.UsageError("nothing to explain: give --tiles with --ids (maps of those cutouts) or --tiles alone "
                               "(KAV over the store), or a model-level --method (cgi, gki)")
    if (cutout_methods - {"kav"}) and not object_ids:
        if "all" in methods or not methods:
            cutout_methods = {"kav"} if store else set()
        else:
            raise click.UsageError(f"--method {', '.join(sorted(cutout_methods - {'kav'}))} needs --tiles and --ids")
    if object_ids and store is None:
        raise click.UsageError("--ids needs --tiles STORE.zarr")
    if chosen == {"kav"} and store is None:
        raise click.UsageError("--method kav needs --tiles (a data set to rank, or the cutouts named by --ids)")
    options = R.ExplainOptions(patch=patch, stride=stride, grid=grid, score=score, recipe=recipe, steps=steps,
                               target=1 if target == "lens" else 0, seed=seed, kernels=_parse_kernels(kernels),
                               top_k=top_k)
    try:
        names = list(dict.fromkeys(model_names)) or _model_set(models_dir, weights_dir)
    except ContractError as exc:
        raise click.UsageError(str(exc))
    done = {}
    for model in names:
        try:
            net, spec = R.load_network(model, models_dir, weights_dir)
        except (ContractError, FileNotFoundError, KeyError) as exc:
            raise click.UsageError(str(exc))
        done[model] = _explain_one(model, net, spec, store, object_ids, cutout_methods, chosen, out_dir, options,
                                   top_k, limit)
    if as_json:
        echo_json(done[names[0]] if len(names) == 1 else {"models": done})
        return
    for model, written in done.items():
        for key, value in written.items():
            if key not in ("model", "out"):
                click.echo(f"{model} {key}: {json.dumps(value)}" if len(names) > 1 else f"{key}: {json.dumps(value)}")


def _model_set(models_dir, weights_dir) -> list[str]:
    """The models ``explain`` covers when no ``--model`` is named: all of the set, as every command does."""
    if weights_dir is not None:
        from lensengine.engine.specs import MODEL_NAMES

        return list(MODEL_NAMES)
    from lensengine.engine.registry import resolve_models

    return [e.name for e in resolve_models(models_dir)]


def _explain_one(model, net, spec, store, object_ids, cutout_methods, chosen, out_dir, options, top_k, limit) -> dict:
    """One model's maps (per cutout, KAV over the store, per model), as ``{kind: paths}`` for the output."""
    from lensengine.plugins import _interpret_run as R

    quiet = bool((click.get_current_context().find_root().obj or {}).get("quiet"))
    _announce_slow(model, net, spec, chosen, len(object_ids) if cutout_methods else 0, options)
    written: dict = {"model": model, "out": str(out_dir)}
    if object_ids and cutout_methods:
        try:
            batch = R.find_cutouts(store, object_ids)
        except KeyError as exc:
            raise click.UsageError(str(exc.args[0]))
        maps = R.explain_cutouts(model, net, batch, cutout_methods, out_dir, spec=spec, options=options,
                                 progress=not quiet)
        written["cutouts"] = {str(k): {m: str(p) for m, p in v.items()} for k, v in maps.items()}
    elif "kav" in cutout_methods and store is not None:
        paths = R.kav_over_store(model, net, store, out_dir, spec=spec, top_k=top_k, limit=limit)
        written["kav"] = {k: str(v) for k, v in paths.items()}
    model_methods = chosen & set(R.PER_MODEL)
    if model_methods:
        paths = R.explain_model(model, net, model_methods, out_dir, spec=spec, options=options)
        written.update({k: [str(p) for p in v] for k, v in paths.items()})
    return written


def _announce_slow(model, net, spec, methods, n_objects, options) -> None:
    """Say on stderr how long the slow methods asked for will take here, before they start (measured)."""
    from lensengine.plugins import _interpret_run as R

    for method, seconds in R.estimate_seconds(net, spec, methods, n_objects, options).items():
        what = f"{n_objects} object(s)" if method == "deepdream" else "one image"
        click.echo(f"{model}: {method} will take about {seconds / 60:.1f} min here ({what}; an update measured "
                   f"just now, times the {options.recipe} recipe's updates)", err=True)


@hookimpl
def register_commands(cli):
    cli.add_command(explain_cmd)
