"""Built-in plugin: ``lensengine recall-test``, recall on compound lenses and the selection function.

Registers through ``register_commands`` exactly as a third-party plugin would.
Generates (``lensengine.training.simulate``) or reads the compound-arc and
double-ring sets, scores them with every model (ONNX Runtime) and OU-T-SNE when
a fitted one is available, prints the paper's Table 6 beside ours, scores known
compound lenses on real imaging (Table 7), writes the selection function
(recall against θ_E, arc S/N, source magnitude and colour), and acts as a
regression gate (``--min-recall``).  Documentation: docs/recall.md.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path

import click

from lensengine.engine.options import (AliasedOption, MissingExtra, json_option, model_names_option,
                                       models_dir_option, require_modules)
from lensengine.plugins import hookimpl

log = logging.getLogger(__name__)

__all__ = ["recall_test_cmd", "simulated_set"]


def simulated_set(kind: str, n: int, seed: int, workdir: Path, *, workers: int = 1, progress: bool = True) -> Path:
    """The store of a simulated set in ``workdir``, reused when an identical one (kind, n, seed) is there."""
    from lensengine.catalogs.store import SurveyStore
    from lensengine.training.simulate import simulate_store

    path = Path(workdir) / f"{kind}_n{n}_seed{seed}.zarr"
    if path.exists():
        try:
            store = SurveyStore.open(path)
            prov = store.attrs.get("provenance") or {}
            if store.total_cutouts() == n and prov.get("kind") == kind and int(prov.get("seed", -1)) == seed:
                log.info("reusing %s", path)
                return path
        except (OSError, ValueError, KeyError) as exc:
            log.info("regenerating %s (%s)", path, exc)
    log.info("simulating %d %s (seed %d) into %s", n, kind, seed, path)
    return simulate_store(path, kind, n, seed, lens_fraction=1.0, workers=workers, progress=progress,
                          overwrite=True)


class _progress:
    """A rich progress bar over a store's cutouts; a no-op when disabled (``--quiet``, not a terminal)."""

    def __init__(self, enabled: bool, store_path, label: str):
        self.enabled, self.store_path, self.label = enabled, store_path, label

    def __enter__(self):
        if not self.enabled:
            return lambda n: None
        from rich.progress import Progress

        from lensengine.catalogs.store import SurveyStore

        total = SurveyStore.open(self.store_path).total_cutouts()
        self._bar = Progress(transient=True)
        self._bar.start()
        task = self._bar.add_task(self.label, total=total)
        return lambda n: self._bar.advance(task, n)

    def __exit__(self, *exc):
        if self.enabled:
            self._bar.stop()
        return False


def _nan_to_none(obj):
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, float) and math.isnan(obj):
        return None
    return obj


@click.command("recall-test")
@models_dir_option()
@model_names_option()
@click.option("--ensemble", "ensemble_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="Fitted OU-T-SNE (.npz) [default: ou_tsne.npz beside the models, if present].")
@click.option("--arcs", "arcs", type=click.Path(exists=True, path_type=Path), default=None, metavar="STORE",
              help="Compound-arc store (else simulated).")
@click.option("--rings", "rings", type=click.Path(exists=True, path_type=Path), default=None, metavar="STORE",
              help="Double-ring store (else simulated).")
@click.option("--singles", "singles", type=click.Path(exists=True, path_type=Path), default=None, metavar="STORE",
              help="A single-lens store for the selection function (optional).")
@click.option("-n", "n", type=click.IntRange(1), default=500, show_default=True,
              help="Cutouts per simulated set (the paper used 10 000).")
@click.option("--seed", type=int, default=2022, show_default=True, help="Simulation seed.")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where simulated sets are written and reused [default: OUT/sims, or ./recall-sims].")
@click.option("--workers", type=click.IntRange(1), default=1, show_default=True, help="Simulation processes.")
@click.option("--fits", "fits", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Single-band FITS image of a known compound lens (Table 7), e.g. "
                   "../shared/real/hst_sdssj0946/data.fits (repeatable).")
@click.option("--known", "--store", "known_stores", cls=AliasedOption, hidden_aliases=("--store",), multiple=True,
              type=click.Path(exists=True, path_type=Path), metavar="STORE",
              help="A store of known compound lenses already ingested (repeatable).")
@click.option("--pixel-scale", type=float, default=None, help="Pixel scale of --fits images [default: info.json].")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write recall.json, selection_function.csv and selection_*.png here.")
@click.option("--band", default="VIS", show_default=True, help="Band of the source magnitude in the selection function.")
@click.option("--min-recall", type=click.FloatRange(0, 1), default=None,
              help="Regression gate: exit 1 when a model's recall on a compound set is below this.")
@json_option(help="Print the recall table as JSON on stdout.")
@click.pass_context
def recall_test_cmd(ctx, models_dir, model_names, ensemble_path, arcs, rings, singles, n, seed, workdir, workers, fits,
                    known_stores, pixel_scale, out_dir, band, min_recall, as_json):
    """Recall on compound lenses (paper Table 6), known compound lenses (Table 7) and the selection function.

    \b
    Examples:
      lensengine recall-test --models models/published -n 500
      lensengine recall-test --models models/published --arcs arcs.zarr --rings rings.zarr --min-recall 0.5
      lensengine recall-test --models models/published --fits ../shared/real/hst_sdssj0946/data.fits
    """
    from lensengine.engine.ensemble import load_ensemble
    from lensengine.engine.models import ContractError
    from lensengine.engine.registry import resolve_models
    from lensengine.plugins import _recall_score as S
    from lensengine.plugins import _recall_tables as T

    quiet = bool((ctx.obj or {}).get("quiet")) or not sys.stderr.isatty()
    if out_dir is not None:
        require_modules(ctx, "matplotlib")  # the selection-function figures: say so before the scoring
    try:
        entries = resolve_models(models_dir, list(model_names) or None)
    except ContractError as exc:
        raise click.UsageError(str(exc))
    try:  # the ensemble a run with these models would use: OU-T-SNE when fitted and all seven run
        ensemble = load_ensemble([e.name for e in entries], models_dir, ensemble_path)
    except (OSError, ValueError, KeyError) as exc:
        raise click.UsageError(f"--ensemble {ensemble_path}: {exc}")
    tsne = str(ensemble.path) if hasattr(ensemble, "path") else None
    workdir = workdir or ((out_dir / "sims") if out_dir else Path("recall-sims"))

    sets: dict[str, Path] = {}
    simulate = not (arcs or rings or fits or known_stores)  # nothing given: simulate both sets
    for kind, given in (("compound-arcs", arcs), ("double-rings", rings)):
        if given is not None:
            sets[kind] = given
        elif simulate:
            try:
                sets[kind] = simulated_set(kind, n, seed, workdir, workers=workers, progress=not quiet)
            except ImportError as exc:
                raise MissingExtra(f"`{ctx.command_path}` simulates the {kind} set with the training extra "
                                   f"(missing module {exc.name}): pip install \"lensengine[training]\", "
                                   "or pass --arcs/--rings stores") from None
    scored = {}
    for kind, path in sets.items():
        try:
            with _progress(not quiet, path, f"scoring {kind}") as advance:
                scored[kind] = S.score_store(path, entries, name=kind, ensemble=tsne, progress=advance)
        except (OSError, ValueError, KeyError) as exc:
            raise click.UsageError(f"{path}: cannot score this store ({exc})")
    table = T.recall_table(scored)
    models = [e.name for e in entries] + ([S.TSNE_NAME] if any(S.TSNE_NAME in s.scores for s in scored.values())
                                          else [])
    result = {k: table[k] for k in T.SETS if k in table}
    result["n"] = table["n"]

    known_rows = []
    for path in fits:
        store_path = workdir / f"known_{path.parent.name}_{path.stem}.zarr"
        workdir.mkdir(parents=True, exist_ok=True)
        from lensengine.plugins._recall_real import ingest_known_lens

        try:
            store_path, name = ingest_known_lens(path, store_path, pixel_scale=pixel_scale)
        except (OSError, ValueError) as exc:
            raise click.UsageError(f"{path}: {exc}")
        s = S.score_store(store_path, entries, name=name, ensemble=tsne)
        known_rows.append({"name": name, "scores": {m: float(p[0]) for m, p in s.scores.items()}})
    for path in known_stores:
        s = S.score_store(path, entries, name=path.stem, ensemble=tsne)
        for i, oid in enumerate(s.object_id):
            known_rows.append({"name": f"{path.stem}:{oid}", "scores": {m: float(p[i]) for m, p in s.scores.items()}})
    if known_rows:
        result["known"] = {r["name"]: r["scores"] for r in known_rows}

    if singles is not None:
        scored["singles"] = S.score_store(singles, entries, name="singles", ensemble=tsne)
    selection = {name: {var: T.selection_function(values, s.scores, s.lenses)
                        for var, values in T.selection_variables(s.truth, band).items()}
                 for name, s in scored.items()}
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "recall.json").write_text(json.dumps(_nan_to_none(
            {**result, "n_unscored": table["n_unscored"], "selection": selection}), indent=2))
        if any(selection.values()):
            T.write_selection(selection, out_dir)
            T.plot_selection(selection, out_dir)

    if as_json:
        click.echo(json.dumps(_nan_to_none(result), indent=2))
    else:
        if scored:
            click.echo(T.format_table6(table, models))
        if known_rows:
            click.echo("")
            click.echo(T.format_table7(known_rows))
        if out_dir is not None:
            click.echo(f"\nwrote {out_dir / 'recall.json'}" + (" and the selection function" if any(selection.values())
                                                              else ""))
    if min_recall is not None:
        failing = [f"{m} on {k}: {v:.4f}" for k in T.SETS if k in result for m, v in result[k].items()
                   if not (v >= min_recall)]
        if failing:
            click.echo(f"recall below {min_recall}: " + "; ".join(failing), err=True)
            ctx.exit(1)


@hookimpl
def register_commands(cli):
    cli.add_command(recall_test_cmd)
