"""Built-in plugin: the fitted ensembles' commands: ``lensengine tsne`` (fit, plot, inspect) for OU-T-SNE and
``lensengine stack fit`` for the stacked ensemble (:mod:`lensengine.engine.stack`).

Registers through ``register_commands`` exactly as a third-party plugin would.
Score tables are read with pyarrow: columns ``P_OU_J`` ... ``P_OU_200`` (one per
model, in :data:`lensengine.engine.specs.MODEL_NAMES` order) and, for fitting,
``TRUTH_LABEL`` (1 lens, 0 non-lens).
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import click
import numpy as np

from lensengine.engine.options import echo_json, json_option, models_dir_option, needs_extra, require_modules
from lensengine.plugins import hookimpl

log = logging.getLogger(__name__)

LABEL_COLUMN = "TRUTH_LABEL"
_INSPECT_EXTRA = ("OBJECT_ID", "TILE", "CHUNK", "RA", "DEC", LABEL_COLUMN)


def score_columns() -> list[str]:
    """``P_<MODEL>`` column of each of the seven models, in MODEL_NAMES order."""
    from lensengine.engine.specs import MODEL_NAMES

    return ["P_" + name.replace("-", "_") for name in MODEL_NAMES]


def read_score_matrix(path: Path, extra: tuple[str, ...] = (), require: tuple[str, ...] = ()):
    """Read the seven score columns (and ``extra`` ones that exist) from a Parquet score table.

    Returns ``(P, columns, finite)``: the (n, 7) float64 matrix, a dict of the extra
    columns found (NumPy arrays) and the (n,) mask of rows whose seven scores are all finite.
    Raises ``click.UsageError`` naming the missing columns.
    """
    import pyarrow.dataset as ds

    from lensengine.catalogs.catalog import score_table_files, score_table_schema

    try:
        schema = score_table_schema(path)  # a Parquet file, or the dataset folder `lensengine run` writes
    except (OSError, ValueError) as exc:
        raise click.UsageError(f"cannot read {path} as Parquet: {exc}")
    cols = score_columns()
    missing = [c for c in (*cols, *require) if c not in schema.names]
    if missing:
        raise click.UsageError(f"{path} lacks column(s) {', '.join(missing)}; found {', '.join(schema.names)}")
    present = [c for c in extra if c in schema.names and c not in cols]
    table = ds.dataset([str(f) for f in score_table_files(path)], schema=schema,
                       format="parquet").to_table(columns=cols + present)
    P = np.column_stack([table.column(c).to_numpy(zero_copy_only=False).astype(np.float64) for c in cols]) \
        if table.num_rows else np.empty((0, len(cols)))
    other = {c: table.column(c).to_numpy(zero_copy_only=False) for c in present}
    return P, other, np.isfinite(P).all(axis=1)


def read_labelled_scores(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(P, y)``: the seven scores and ``TRUTH_LABEL`` (0/1) of the rows whose scores are all finite (a fit's input).

    Says on stderr how many rows were skipped for a missing score; a label other than 0/1 is a usage error.
    """
    P, other, finite = read_score_matrix(path, (LABEL_COLUMN,), require=(LABEL_COLUMN,))
    y = np.asarray(other[LABEL_COLUMN])
    n_bad = int((~finite).sum())
    if n_bad:
        click.echo(f"skipping {n_bad} of {len(P)} rows with missing (NaN) scores", err=True)
    P, y = P[finite], y[finite]
    if not np.isin(y, (0, 1)).all():
        raise click.UsageError(f"{LABEL_COLUMN} must be 0 or 1; found {np.unique(y)[:10].tolist()}")
    return P, y


def _parse_region(text: str) -> tuple[float, float, float, float]:
    try:
        x0, x1, y0, y1 = (float(v) for v in text.split(","))
    except ValueError:
        raise click.UsageError(f"--region must be x0,x1,y0,y1 (four numbers), got {text!r}")
    if not (x0 < x1 and y0 < y1):
        raise click.UsageError(f"--region needs x0 < x1 and y0 < y1, got {text!r}")
    return x0, x1, y0, y1


def _load(model_path: Path):
    from lensengine.engine.ou_tsne import OUTSNE

    try:
        return OUTSNE.load(model_path)
    except (ValueError, OSError, KeyError) as exc:
        raise click.UsageError(f"cannot load OU-T-SNE model {model_path}: {exc}")


@click.group("tsne")
def tsne_group() -> None:
    """OU-T-SNE: fit the t-SNE grid classifier over the seven models' scores, plot and inspect it."""


@tsne_group.command("fit")
@click.option("--scores", "scores_path", required=True, type=click.Path(exists=True, path_type=Path),
              help="Parquet score table of the labelled training set (P_OU_* columns and TRUTH_LABEL).")
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Model file to write (.npz).")
@click.option("--grid-size", default=100, show_default=True, type=click.IntRange(1), help="Cells per side.")
@click.option("--perplexity", default=30.0, show_default=True, type=click.FloatRange(min=1.0, min_open=False),
              help="t-SNE perplexity.")
@click.option("--smoothing", default=0.0, show_default=True, type=click.FloatRange(min=0.0),
              help="Gaussian smoothing of the cell counts (cells); 0 = the paper's plain lens fraction.")
@click.option("--prior-weight", default=0.0, show_default=True, type=click.FloatRange(min=0.0),
              help="Pseudo-count pulling cell values towards the training lens fraction; 0 = the paper.")
@click.option("--seed", default=0, show_default=True, type=int, help="Random seed (openTSNE).")
@click.option("--jobs", default=1, show_default=True, type=int, help="Threads for openTSNE.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the embedding/grid figure (PNG).")
@json_option(help="Print the fit (objects, defined cells, seconds, files) as JSON on stdout.")
@click.pass_context
def fit_cmd(ctx: click.Context, scores_path: Path, out_path: Path, grid_size: int, perplexity: float,
            smoothing: float, prior_weight: float, seed: int, jobs: int, plot_path: Path | None,
            as_json: bool) -> None:
    """Fit OU-T-SNE on a labelled score table and save it.

    Example: lensengine tsne fit --scores train_scores.parquet --out ou_tsne.npz --plot ou_tsne.png
    """
    from lensengine.engine.ou_tsne import OUTSNE

    if plot_path is not None:
        require_modules(ctx, "matplotlib")  # before the fit, not after it
    P, y = read_labelled_scores(scores_path)
    if len(P) < 4:
        raise click.UsageError(f"{scores_path} has {len(P)} usable rows; OU-T-SNE needs at least 4")
    model = OUTSNE(grid_size=grid_size, perplexity=perplexity, smoothing=smoothing, prior_weight=prior_weight,
                   random_state=seed,
                   n_jobs=jobs, verbose=True)
    quiet = (ctx.find_root().obj or {}).get("quiet", False) or not sys.stderr.isatty()
    t0 = time.perf_counter()
    if quiet:
        model.fit(P, y.astype(np.int8))
    else:
        from rich.console import Console

        with Console(stderr=True).status(f"fitting t-SNE on {len(P)} objects ({int(y.sum())} lenses)..."):
            model.fit(P, y.astype(np.int8))
    seconds = time.perf_counter() - t0
    out = model.save(out_path)
    written = [str(out)]
    if plot_path is not None:
        written.append(str(model.plot(plot_path, title=f"OU-T-SNE: {scores_path.name}")))
    if as_json:
        echo_json({"objects": len(P), "lenses": int(y.sum()), "cells_defined": int(model.defined_.sum()),
                   "cells": grid_size * grid_size, "seconds": round(seconds, 3), "written": written})
        return
    click.echo(f"fitted {len(P)} objects in {seconds:.1f} s; "
               f"{int(model.defined_.sum())} of {grid_size * grid_size} cells hold training objects")
    click.echo(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB)")
    if plot_path is not None:
        click.echo(f"wrote {written[-1]}")


@tsne_group.command("plot")
@click.argument("model_path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="PNG to write.")
@json_option(help="Print the written file as JSON on stdout.")
@needs_extra("matplotlib")
def plot_cmd(model_path: Path, out_path: Path, as_json: bool) -> None:
    """Plot a fitted model: embedding coloured by label and the grid (cf. the paper's Fig. 9)."""
    written = str(_load(model_path).plot(out_path, title=f"OU-T-SNE: {model_path.name}"))
    if as_json:
        echo_json({"written": [written]})
    else:
        click.echo(f"wrote {written}")


@tsne_group.command("inspect")
@click.argument("model_path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--scores", "scores_path", required=True, type=click.Path(exists=True, path_type=Path),
              help="Parquet score table whose objects to place into the embedding.")
@click.option("--region", required=True, help="Box in embedding coordinates: x0,x1,y0,y1.")
@click.option("--exact", is_flag=True, help="Place objects with openTSNE's transform (slow) instead of the fast path.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(0), help="Rows to print (0: all).")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write all objects in the region to this CSV file.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the model figure with the region outlined (PNG).")
@json_option(help="Print the objects in the region (all of them, --limit aside) as JSON on stdout.")
@click.pass_context
def inspect_cmd(ctx: click.Context, model_path: Path, scores_path: Path, region: str, exact: bool, limit: int,
                csv_path: Path | None, plot_path: Path | None, as_json: bool) -> None:
    """List the objects of a score table that land in a region of the embedding.

    Example: lensengine tsne inspect ou_tsne.npz --scores test_scores.parquet --region -10,0,5,15
    """
    x0, x1, y0, y1 = _parse_region(region)
    if plot_path is not None:
        require_modules(ctx, "matplotlib")
    model = _load(model_path).set_params(exact_transform=exact)
    P, other, finite = read_score_matrix(scores_path, _INSPECT_EXTRA)
    rows = np.flatnonzero(finite)
    if len(rows) < len(P):
        click.echo(f"skipping {len(P) - len(rows)} rows with missing (NaN) scores", err=True)
    coords, _, scores, outside = model.locate(P[rows])
    inside = (coords[:, 0] >= x0) & (coords[:, 0] <= x1) & (coords[:, 1] >= y0) & (coords[:, 1] <= y1)
    sel = np.flatnonzero(inside)
    sel = sel[np.argsort(-scores[sel], kind="stable")]
    header = [c for c in _INSPECT_EXTRA if c in other] + ["ROW", "TSNE_X", "TSNE_Y", "P_OU_TSNE", "OUTSIDE"] \
        + score_columns()
    lines = []
    for i in sel:
        r = rows[i]
        vals = [f"{other[c][r]:.6f}" if isinstance(other[c][r], (float, np.floating)) else other[c][r]
                for c in _INSPECT_EXTRA if c in other]
        vals += [r, f"{coords[i, 0]:.3f}", f"{coords[i, 1]:.3f}", f"{scores[i]:.4f}", bool(outside[i])]
        vals += [f"{v:.4f}" for v in P[r]]
        lines.append([str(v) for v in vals])
    written = []
    if csv_path is not None:
        import csv

        with open(csv_path, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(header)
            w.writerows(lines)
        written.append(str(csv_path))
    if plot_path is not None:
        from lensengine.engine._tsne_plot import plot_model

        written.append(str(plot_model(model, plot_path, highlight=(x0, x1, y0, y1))))
    if as_json:
        echo_json({"region": [x0, x1, y0, y1], "in_region": len(sel), "objects": len(rows),
                   "rows": [dict(zip(header, line)) for line in lines], "written": written})
        return
    click.echo(f"{len(sel)} of {len(rows)} objects in x [{x0}, {x1}], y [{y0}, {y1}]"
               + (f"; lens fraction {np.mean(other[LABEL_COLUMN][rows[sel]]):.3f}"
                  if LABEL_COLUMN in other and len(sel) else ""))
    shown = lines if limit == 0 else lines[:limit]
    if shown:
        widths = [max(len(h), *(len(line[j]) for line in shown)) for j, h in enumerate(header)]
        click.echo("  ".join(h.ljust(w) for h, w in zip(header, widths)))
        for line in shown:
            click.echo("  ".join(v.ljust(w) for v, w in zip(line, widths)))
        if len(shown) < len(lines):
            click.echo(f"... {len(lines) - len(shown)} more (--limit 0 for all, or --csv)")
    for path in written:
        click.echo(f"wrote {path}")


@click.group("stack")
def stack_group() -> None:
    """The stacked ensemble: one weight per network on its log-odds, fitted on labelled validation scores."""


@stack_group.command("fit")
@click.option("--scores", "scores_paths", required=True, multiple=True, type=click.Path(exists=True, path_type=Path),
              help="Parquet score table of a labelled validation set (P_OU_* columns and TRUTH_LABEL), e.g. "
                   "from `lensengine run --tiles val.zarr`; not the sets you judge the ensemble on.  Repeat to "
                   "pool tables (a lens-rich validation set and a large set of realistic negatives, say).")
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="File to write (.json); `ou_stack.json` beside the models makes it their default ensemble.")
@models_dir_option(extra_help="The models that scored the table: their SHA-256 are recorded in the file.")
@click.option("--c", "C", default=1.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Inverse L2 regularisation strength of the logistic regression.")
@click.option("--balance/--no-balance", default=True, show_default=True,
              help="Weigh lenses and non-lenses equally whatever their counts in the tables (the weights then do "
                   "not depend on the pooled lens fraction; P_ENSEMBLE is at a 1:1 prior).")
@json_option(help="Print the weights and the fit's size as JSON on stdout.")
def stack_fit_cmd(scores_paths: tuple[Path, ...], out_path: Path, models_dir: Path | None, C: float, balance: bool,
                  as_json: bool) -> None:
    """Fit the stacked ensemble on labelled validation score tables and save it.

    P_ENSEMBLE = 1 / (1 + exp(-(b + sum_i w_i logit(P_i)))), one weight per network, fitted by L2-regularised
    logistic regression (docs/ou-tsne.md, "The stacked ensemble").

    Example: lensengine stack fit --scores val_scores.parquet --scores sky_negatives_scores.parquet
    --models models --out models/ou_stack.json
    """
    from lensengine.engine.specs import MODEL_NAMES
    from lensengine.engine.stack import Stack

    tables = [read_labelled_scores(path) for path in scores_paths]
    P, y = np.concatenate([t[0] for t in tables]), np.concatenate([t[1] for t in tables])
    from lensengine.engine.models import default_models_dir, discover_models

    models_dir = models_dir or default_models_dir()
    try:
        found = {m.name: m.sha256 for m in discover_models(models_dir)}
    except Exception as exc:  # noqa: BLE001 - a missing folder or a broken model file: say which
        raise click.UsageError(f"--models {models_dir}: {exc}")
    missing = [n for n in MODEL_NAMES if n not in found]
    if missing:
        raise click.UsageError(f"--models {models_dir} lacks {', '.join(missing)}")
    fitted_on = [str(p) for p in scores_paths]
    meta = {"fitted_on": fitted_on[0] if len(fitted_on) == 1 else fitted_on,
            "models_sha256": {n: found[n] for n in MODEL_NAMES}}
    try:
        stack = Stack.fit(P, y, MODEL_NAMES, C=C, balance=balance, meta=meta)
    except ValueError as exc:
        raise click.UsageError(f"{', '.join(fitted_on)}: {exc}")
    out = stack.save(out_path)
    weights = dict(zip(MODEL_NAMES, (round(float(w), 4) for w in stack.coef)))
    if as_json:
        echo_json({"objects": len(P), "lenses": int(y.sum()), "weights": weights,
                   "intercept": round(stack.intercept, 4), "written": [str(out)]})
        return
    click.echo(f"fitted on {len(P)} objects ({int(y.sum())} lenses); intercept {stack.intercept:.3f}; weights "
               + ", ".join(f"{k} {v:+.3f}" for k, v in weights.items()))
    click.echo(f"wrote {out}")


@hookimpl
def register_commands(cli):
    cli.add_command(tsne_group)
    cli.add_command(stack_group)
