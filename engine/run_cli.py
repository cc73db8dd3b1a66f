"""The ``lensengine run`` command."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from lensengine.engine.cli import cli

log = logging.getLogger(__name__)


@cli.command("run")
@click.option("--tiles", "store", type=click.Path(path_type=Path), required=True,
              help="Survey store (zarr) to score, e.g. survey.zarr (see `lensengine store from-fits`).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=Path("candidates.fits"),
              show_default=True, help="FITS candidate catalogue to write.")
@click.option("--scores", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Parquet score table of every cutout [default: <out>_scores.parquet].")
@click.option("--models", "models_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Directory of lensengine ONNX models [default: the shipped default models].")
@click.option("--model", "model_names", multiple=True, help="Run only these models (repeatable).")
@click.option("--ensemble", "ensemble_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Fitted OU-T-SNE (.npz) [default: ou_tsne.npz beside the models, else the mean of the models].")
@click.option("--threshold", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help="Candidates are cutouts with ensemble score >= threshold.")
@click.option("--scheduler", default=None, help="Address of an existing Dask scheduler (tcp://host:8786).")
@click.option("--workers", type=click.IntRange(1), default=1, show_default=True,
              help="Worker processes of the local Dask cluster (ignored with --scheduler).")
@click.option("--threads", type=click.IntRange(0), default=0, show_default=True,
              help="ONNX Runtime threads per worker (0: cores / workers).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda", "tensorrt"]), default="auto", show_default=True,
              help="auto uses CUDA (and TensorRT) when a GPU is present, else the CPU.")
@click.option("--batch-size", type=click.IntRange(1), default=128, show_default=True,
              help="Cutouts per model call inside a chunk.")
@click.option("--resume", is_flag=True, help="Skip the chunks an interrupted run with the same outputs completed.")
@click.pass_context
def run_cmd(ctx, store, out, scores, models_dir, model_names, ensemble_path, threshold, scheduler, workers,
            threads, device, batch_size, resume):
    """Score every cutout of a survey store and write the candidate catalogue.

    Reads the store chunk by chunk on a Dask cluster (local by default, or an
    existing one with --scheduler), runs the seven CNNs and the ensemble on each
    cutout, and writes a Parquet score table with every cutout (scored, or flagged
    with a reason) and a ranked FITS catalogue of the candidates with provenance.

    \b
    Examples:
      lensengine run --tiles survey.zarr --out candidates.fits
      lensengine run --tiles survey.zarr --models models/published --workers 2
      lensengine run --tiles survey.zarr --scheduler tcp://10.0.0.5:8786
    """
    from lensengine.engine.models import ContractError
    from lensengine.engine.registry import resolve_models
    from lensengine.engine.run import RunOptions, command_line, execute_run, format_summary

    quiet = (ctx.obj or {}).get("quiet", False)
    if scores is None:
        scores = out.with_name(out.stem + "_scores.parquet")
    try:
        entries = resolve_models(models_dir, model_names or None)
        opts = RunOptions(store=store, out=out, scores=scores, models=entries, models_dir=models_dir or
                          (Path(entries[0].path).parent if entries else None), threshold=threshold,
                          scheduler=scheduler, workers=workers, threads=threads, device=device,
                          batch_size=batch_size, resume=resume, ensemble_path=ensemble_path,
                          progress=not quiet and sys.stderr.isatty(), command_line=command_line())
        summary = execute_run(opts)
    except (ContractError, ValueError, FileNotFoundError, FileExistsError) as exc:
        raise click.UsageError(str(exc)) from None
    except RuntimeError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(1)
    click.echo(format_summary(summary, opts))
