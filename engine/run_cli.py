"""The ``lensengine run`` and ``lensengine demo`` commands (added to the root group by cli.py)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

log = logging.getLogger(__name__)

INTERRUPTED = "interrupted — resume with --resume"


@click.command("run")
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
@click.option("--scheduler", default=None,
              help="Address of an existing Dask scheduler (tcp://host:8786, or tls://host:8786 with the TLS options).")
@click.option("--tls-ca-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="CA certificate that signed the scheduler's and workers' certificates (with a tls:// --scheduler).")
@click.option("--tls-cert", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="This client's TLS certificate (PEM).")
@click.option("--tls-key", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="This client's TLS private key (PEM).")
@click.option("--security", "security_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="YAML file of distributed.security.Security arguments (tls_ca_file, tls_client_cert, "
                   "tls_client_key, ...) instead of the --tls-* options.")
@click.option("--workers", type=click.IntRange(1), default=1, show_default=True,
              help="Worker processes of the local Dask cluster (ignored with --scheduler).")
@click.option("--threads", type=click.IntRange(0), default=0, show_default=True,
              help="ONNX Runtime threads per worker (0: cores / workers).")
@click.option("--dashboard/--no-dashboard", default=True, show_default=True,
              help="The local cluster's Dask dashboard, on 127.0.0.1 only (its address is logged).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda", "tensorrt"]), default="auto", show_default=True,
              help="auto uses CUDA (and TensorRT) when a GPU is present, else the CPU.")
@click.option("--batch-size", type=click.IntRange(1), default=32, show_default=True,
              help="Cutouts per model call inside a chunk.")
@click.option("--precision", type=click.Choice(["fp32", "bf16", "auto"]), default="fp32", show_default=True,
              help="fp32: ONNX Runtime (portable, exact). bf16: torch autocast on the CPU (needs torch; several "
                   "times faster on AMX/AVX-512-BF16 CPUs, |dP| ~ 1e-3). auto: bf16 where the CPU supports it.")
@click.option("--explain-top", type=click.IntRange(0), default=0, show_default=True,
              help="Write occlusion and Grad-CAM maps for the K best candidates (needs torch).")
@click.option("--explain-model", default=None, help="Model for --explain-top [default: OU-200 if run].")
@click.option("--resume", is_flag=True,
              help="Continue an interrupted run with the same outputs: keep its checked finished chunks.")
@click.option("--restart", is_flag=True,
              help="Discard the finished chunks of an earlier run with the same outputs and start again.")
@click.pass_context
def run_cmd(ctx, store, out, scores, models_dir, model_names, ensemble_path, threshold, scheduler, tls_ca_file,
            tls_cert, tls_key, security_file, workers, threads, dashboard, device, batch_size, precision,
            explain_top, explain_model, resume, restart):
    """Score every cutout of a survey store and write the candidate catalogue.

    Reads the store chunk by chunk on a Dask cluster (local by default, or an
    existing one with --scheduler), runs the seven CNNs and the ensemble on each
    cutout, and writes a Parquet score table with every cutout (scored, or flagged
    with a reason) and a ranked FITS catalogue of the candidates with provenance.
    Exit codes: 0 done, 1 the job failed, 2 bad usage or input (before any work),
    130 interrupted (the finished chunks are kept: run again with --resume).

    \b
    Examples:
      lensengine run --tiles survey.zarr --out candidates.fits
      lensengine run --tiles survey.zarr --models models/published --workers 2
      lensengine run --tiles survey.zarr --scheduler tls://10.0.0.5:8786 \\
          --tls-ca-file ca.pem --tls-cert client.pem --tls-key client.key
    """
    from lensengine.engine.models import ContractError
    from lensengine.engine.reduced import resolve_precision
    from lensengine.engine.registry import resolve_models
    from lensengine.engine.run import RunFailed, RunOptions, RunRefused, command_line, execute_run, format_summary

    obj = ctx.obj or {}
    quiet = obj.get("quiet", False)
    if scores is None:
        scores = out.with_name(out.stem + "_scores.parquet")
    try:
        entries = resolve_models(models_dir, model_names or None)
        opts = RunOptions(store=store, out=out, scores=scores, models=entries, models_dir=models_dir or
                          (Path(entries[0].path).parent if entries else None), threshold=threshold,
                          scheduler=scheduler, workers=workers, threads=threads, device=device,
                          batch_size=batch_size, resume=resume, restart=restart, ensemble_path=ensemble_path,
                          precision=resolve_precision(precision, "cpu" if device == "auto" and not _gpu() else device),
                          progress=not quiet and sys.stderr.isatty(), command_line=command_line(),
                          dashboard=dashboard, verbose=obj.get("verbose", 0), tls_ca_file=tls_ca_file,
                          tls_cert=tls_cert, tls_key=tls_key, security_file=security_file,
                          explain_top=explain_top, explain_model=explain_model)
        summary = execute_run(opts)
    except KeyboardInterrupt:
        click.echo(INTERRUPTED, err=True)
        sys.exit(130)
    except (RunRefused, ContractError, ValueError, FileNotFoundError, FileExistsError) as exc:
        raise click.UsageError(str(exc)) from None
    except (RunFailed, RuntimeError, OSError) as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(1)
    click.echo(format_summary(summary, opts))


def _gpu() -> bool:
    from lensengine.engine.sessions import gpu_available

    return gpu_available()
