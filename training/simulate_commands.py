"""Built-in plugin: the ``simulate`` command (Euclid-like simulated cutouts into a survey store).

Heavy modules (lenstronomy, SkyPy, dask) are imported inside the command so
that ``lensengine --help`` stays fast.  Exit codes: 0 success, 1 the job
failed, 2 bad usage or bad input.
"""

from __future__ import annotations

import time
from pathlib import Path

import click

from lensengine.engine.options import echo_json, json_option, needs_extra, require_modules
from lensengine.plugins import hookimpl

#: the same as lensengine.training.simulate.KINDS (a test checks), kept here so --help needs no numpy
KINDS = ("lenses", "non-lenses", "mixed", "compound-arcs", "double-rings", "survey-lenses", "sky-negatives",
         "hard-negatives", "training-mix")


@click.command("simulate")
@click.option("--kind", required=True, type=click.Choice(KINDS),
              help="What to simulate: challenge-like lenses / non-lenses / mixed, compound-arcs, double-rings; "
                   "survey-lenses (realistic lenses down to the detection limit), sky-negatives (the sky's "
                   "galaxy mix), hard-negatives (confusers only), training-mix (survey lenses + a negative mix).")
@click.option("-n", "n", required=True, type=click.IntRange(min=1), help="Number of cutouts.")
@click.option("--seed", required=True, type=int, help="Run seed; cutout i is reproducible from (seed, i) alone.")
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), metavar="STORE",
              help="Store to create (STORE.zarr).")
@click.option("--lens-fraction", default=0.72, show_default=True, type=click.FloatRange(0, 1),
              help="Fraction of lenses in --kind mixed and training-mix (the challenge's training set: ~0.72).")
@click.option("--min-arc-snr", type=click.FloatRange(min=0), default=None,
              help="Arc S/N a lens must reach (default: the kind's rule: 25; survey-lenses 6; training-mix 10).")
@click.option("--source-colour", default="mixed", show_default=True, type=click.Choice(("blue", "red", "mixed")),
              help="Spectral class of the lensed sources.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(min=1),
              help="Dask worker processes (a local cluster when > 1); the store is the same for any value.")
@click.option("--max-time", "max_time", type=click.FloatRange(min=0, min_open=True), default=None, metavar="MINUTES",
              help="Stop after this many minutes with the cutouts done so far: the store then holds cutouts "
                   "0 … k-1 of the -n asked (each the same as in the whole store; its provenance says so). "
                   "For filling a fixed time, e.g. a GPU lease.")
@click.option("--chunk-size", default=1024, show_default=True, type=click.IntRange(min=1),
              help="Store chunk size along the cutout axis.")
@click.option("--overwrite", is_flag=True, help="Replace an existing store.")
@click.option("--report", is_flag=True, help="Print a summary of the set and the throughput afterwards.")
@click.option("--published-weights", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="With --report: also score the set with the paper's OU-66 and OU-200 (realism check).")
@json_option(help="Print what was written (and the --report summary) as JSON on stdout.")
@needs_extra("lenstronomy", "skypy", "speclite")
@click.pass_context
def simulate_cmd(ctx, kind, n, seed, out, lens_fraction, min_arc_snr, source_colour, workers, max_time, chunk_size,
                 overwrite, report, published_weights, as_json):
    """Simulate Euclid-like cutouts (VIS 200×200 at 0.1″, NISP Y/J/H 66×66 at 0.3″, e-/s) with truth.

    Example: lensengine simulate --kind mixed -n 2000 --seed 1 --out train.zarr --report
    """
    quiet = bool((ctx.obj or {}).get("quiet"))
    if out.exists() and not overwrite:
        raise click.UsageError(f"{out} already exists (add --overwrite to replace it)")
    if report and published_weights is not None:
        require_modules(ctx, "torch")
    from lensengine.training.simulate import simulate_store

    t0 = time.perf_counter()
    try:
        path = simulate_store(out, kind, n, seed, lens_fraction=lens_fraction, source_colour=source_colour,
                              workers=workers, chunk_size=chunk_size, progress=not quiet, overwrite=overwrite,
                              min_arc_snr=min_arc_snr, max_seconds=None if max_time is None else 60 * max_time)
    except ValueError as exc:
        raise click.UsageError(str(exc))
    elapsed = time.perf_counter() - t0
    from lensengine.catalogs.store import SurveyStore
    from lensengine.training.simulate import TILE

    store = SurveyStore.open(path)
    written = store.n_cutouts(TILE)
    result = {"store": str(path), "n": written, "n_asked": n, "seconds": round(elapsed, 3), "rate": written / elapsed,
              "workers": workers}
    if not as_json:
        stopped = "" if written == n else f" of {n} asked (--max-time {max_time:g} min ran out)"
        click.echo(f"wrote {written} cutouts{stopped} to {path} in {elapsed:.1f} s ({written / elapsed:.1f} "
                   f"systems/s, {workers} worker(s))")
    if report:
        from lensengine.training._sim_report import realism_table, score_published, summarise

        batch = store.read(TILE, 0, written)
        result["report"] = list(summarise(batch))
        if published_weights is not None:
            result["realism"] = realism_table(batch, score_published(batch, published_weights))
        if not as_json:
            for line in result["report"]:
                click.echo(line)
            for name, rows in result.get("realism", {}).items():
                a = rows[0]
                click.echo(f"{name:7s} AUROC {a['auroc']:.3f}  precision {a['precision']:.3f}  "
                           f"recall {a['recall']:.3f}  accuracy {a['accuracy']:.3f}")
    if as_json:
        echo_json(result)


@hookimpl
def register_commands(cli):
    cli.add_command(simulate_cmd)
