"""The ``lensengine run`` and ``lensengine demo`` commands (added to the root group by cli.py)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from lensengine.engine.options import (device_option, echo_json, json_option, model_names_option, models_dir_option,
                                       precision_option, require_modules, threads_option, tiles_option)
from lensengine.engine.runners import RUNNERS

log = logging.getLogger(__name__)

INTERRUPTED = "interrupted — resume with --resume"


#: --batch-size and --workers when not given.  On a GPU (one H200, stop 38) 8 workers sharing the card made 1 555
#: cutouts/s end to end against 357 with one.  The sub-batch is 256: the 66-px networks' fastest GPU call for
#: two of them and 89-90 % of it for the other three (the 200-px ones take 64 at a time in any case), while
#: preprocessing a sub-batch of 256 costs 0.41 ms of CPU per cutout, against 0.47 for 1 024 (0.77 before 1 024 was
#: prepared in slices, as in the GPU runs; preprocess.PREP_SLICE; benchmarks/bench_prep.py --sub-batches).
CPU_BATCH_SIZE, GPU_BATCH_SIZE, GPU_MAX_WORKERS = 32, 256, 8


def sized_for(device: str, scheduler: str | None, workers: int | None, batch_size: int | None,
              quiet: bool = True) -> tuple[int, int]:
    """``(workers, batch_size)``: the given values, else the defaults for where the networks run.

    On the CPU one worker and sub-batches of 32.  On a GPU (``--device cuda``/``tensorrt``, or ``auto`` where
    this machine has one and the cluster is local) sub-batches of 256 and min(8, cores / 2) workers: one
    worker keeps an H200 idle most of the time (its CPU side is the limit), four made 3.0x its rate and eight
    4.4x; fifteen failed inside ONNX Runtime (docs/performance.md, "The GPU benchmark").
    """
    import os

    from lensengine.engine.sessions import gpu_available

    gpu = device in ("cuda", "tensorrt")
    if device == "auto" and not scheduler and (workers is None or batch_size is None) and gpu_available():
        from lensengine.engine.scoring import _on_gpu

        gpu = _on_gpu("auto")
    chosen = []
    if workers is None:
        workers = max(1, min(GPU_MAX_WORKERS, (os.cpu_count() or 1) // 2)) if gpu and not scheduler else 1
        chosen.append(f"--workers {workers}")
    if batch_size is None:
        batch_size = GPU_BATCH_SIZE if gpu else CPU_BATCH_SIZE
        chosen.append(f"--batch-size {batch_size}")
    if gpu and chosen and not quiet:
        click.echo(f"networks on a GPU: {' '.join(chosen)} (give them to choose)", err=True)
    return workers, batch_size


@click.command("run")
@tiles_option(help="Survey store (zarr) to score, e.g. survey.zarr (see `lensengine store from-fits`).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=Path("candidates.fits"),
              show_default=True, help="FITS candidate catalogue to write.")
@click.option("--scores", type=click.Path(path_type=Path), default=None,
              help="Score table of every cutout: a folder, a Parquet dataset partitioned by tile "
                   "(tile=<tile>/part-<row>.parquet; read it with pyarrow.dataset, dask.dataframe.read_parquet "
                   "or pandas) [default: <out>_scores.parquet, a folder].")
@models_dir_option()
@model_names_option()
@click.option("--ensemble", "ensemble_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Fitted OU-T-SNE (.npz) or stack (.json), or 'mean' [default: ou_tsne.npz, else ou_stack.json "
                   "beside the models, else the mean of the models].")
@click.option("--threshold", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help="Candidates are cutouts with ensemble score >= threshold.")
@click.option("--scheduler", default=None,
              help="Address of an existing Dask scheduler (tcp://host:8786, or tls://host:8786 with the TLS options).")
@click.option("--scheduler-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="JSON file an existing Dask scheduler wrote (`dask scheduler --scheduler-file`, dask-jobqueue, "
                   "dask-mpi): its address is used as --scheduler (docs/deploy.md).")
@click.option("--tls-ca-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="CA certificate that signed the scheduler's and workers' certificates (with a tls:// --scheduler).")
@click.option("--tls-cert", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="This client's TLS certificate (PEM).")
@click.option("--tls-key", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="This client's TLS private key (PEM).")
@click.option("--security", "security_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="YAML file of distributed.security.Security arguments (tls_ca_file, tls_client_cert, "
                   "tls_client_key, ...) instead of the --tls-* options.")
@click.option("--workers", type=click.IntRange(1), default=None,
              help="Worker processes of the local Dask cluster (ignored with --scheduler). [default: 1 on the CPU; "
                   "on a GPU min(8, cores / 2), the workers sharing the card]")
@threads_option(help="ONNX Runtime threads per worker (0: cores / workers).")
@click.option("--lanes", type=click.IntRange(0), default=0, show_default=True,
              help="Networks run side by side in each worker, sharing its threads (0: auto: two lanes on the CPU "
                   "when a worker has two threads or more, else one; 1: one network at a time on all the threads). "
                   "Scores do not change; recorded as LANES in the catalogue.")
@click.option("--dashboard/--no-dashboard", default=True, show_default=True,
              help="The local cluster's Dask dashboard, on 127.0.0.1 only (its address is logged).")
@device_option(extra=("tensorrt",), extra_help="run also takes tensorrt (CUDA with TensorRT kernels); auto "
                                                 "uses CUDA (and TensorRT) when a GPU is present.")
@click.option("--batch-size", type=click.IntRange(1), default=None,
              help="Cutouts preprocessed and scored together inside a task (a sub-batch). On the CPU the 200-px "
                   "networks take it 16 cutouts at a time (less memory, as fast or faster); on a GPU 64 at a time, "
                   "and the 66-px ones up to 587 (the fastest sizes on an H200). Scores do not depend on it. "
                   "[default: 32 on the CPU, 256 on a GPU]")
@click.option("--task-size", type=click.IntRange(0), default=0, show_default=True,
              help="Cutouts per Dask task (0: one store chunk; a store of under 16 chunks is split into about 16 "
                   "tasks so progress moves). At least a chunk: whole chunks per task (fewer, larger tasks for "
                   "fast GPUs); less: row ranges of a chunk. The last two tasks are cut into up to four "
                   "smaller ones so that the workers finish together.")
@precision_option(extra_help="Here auto on the CPU is --runner auto (per model the runner a calibration measured "
                             "faster and correct on this CPU, else ONNX Runtime fp32); on a GPU fp32. fp32: ONNX "
                             "Runtime (portable, exact). bf16: torch autocast on the CPU (needs torch; |dP| up to "
                             "~0.01).")
@click.option("--runner", type=click.Choice(["auto", *RUNNERS]), default=None,
              help="How the networks run (supersedes --precision). auto: per model the fastest runner measured "
                   "correct (max |dP| <= 0.01 against ort-fp32) and faster on this CPU, from a calibration "
                   "(benchmarks/bench_runners.py --save-calibration), else ort-fp32. The choice is recorded in "
                   "the catalogue (RUNNER<i>); docs/performance.md. [default: as --precision, whose auto is this auto]")
@click.option("--explain-top", type=click.IntRange(0), default=0, show_default=True,
              help="Write occlusion and Grad-CAM maps for the K best candidates (needs torch).")
@click.option("--explain-model", default=None, help="Model for --explain-top [default: OU-200 if run].")
@click.option("--cascade", is_flag=True,
              help="Run the 66-px networks on every cutout and the 200-px ones (OU-VIS, OU-200) and the ensemble "
                   "only where the cheap networks' mean P(lens) reaches a gate (models/cascade.json; for the mean "
                   "ensemble the gate is the bound below which no cutout can reach --threshold, so the catalogue "
                   "is the full run's; the shipped stack's validated gates pass most cutouts, so add --ensemble "
                   "mean for speed). Skipped cutouts stay in the score table, flagged CASCADE_SKIPPED, with "
                   "NaN 200-px and ensemble scores. Opt-in: docs/performance.md.")
@click.option("--resume", is_flag=True,
              help="Continue an interrupted run with the same outputs: keep its checked finished chunks.")
@click.option("--restart", is_flag=True,
              help="Discard the finished chunks of an earlier run with the same outputs and start again.")
@json_option(help="Print the run summary as JSON on stdout (counts, flags, seconds, output paths).")
@click.pass_context
def run_cmd(ctx, store, out, scores, models_dir, model_names, ensemble_path, threshold, scheduler, scheduler_file,
            tls_ca_file,
            tls_cert, tls_key, security_file, workers, threads, lanes, dashboard, device, batch_size, task_size, precision,
            runner, explain_top, explain_model, cascade, resume, restart, as_json):
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
    from lensengine.engine.registry import resolve_models
    from lensengine.engine.run import RunFailed, RunOptions, RunRefused, command_line, execute_run, format_summary

    if precision == "bf16":
        require_modules(ctx, "torch")  # bf16 runs the networks in torch: one line naming the extra
    obj = ctx.obj or {}
    quiet = obj.get("quiet", False)
    if scheduler_file is not None:
        scheduler = _scheduler_from_file(scheduler_file, scheduler)
    if scores is None:
        scores = out.with_name(out.stem + "_scores.parquet")
    try:
        entries = resolve_models(models_dir, model_names or None)
        if device in ("cuda", "tensorrt") and not scheduler:
            from lensengine.engine.sessions import choose_providers

            try:  # a local cluster's workers run on this machine: no usable GPU here is bad usage, found now
                choose_providers(device)
            except RuntimeError as exc:
                raise click.UsageError(str(exc)) from None
        workers, batch_size = sized_for(device, scheduler, workers, batch_size, quiet)
        opts = RunOptions(store=store, out=out, scores=scores, models=entries, models_dir=models_dir or
                          (Path(entries[0].path).parent if entries else None), threshold=threshold,
                          scheduler=scheduler, workers=workers, threads=threads, lanes=lanes, device=device,
                          batch_size=batch_size, task_size=task_size, resume=resume, restart=restart,
                          ensemble_path=ensemble_path,
                          precision=_runner_plan(ctx, runner, precision, entries, device),
                          progress=not quiet and sys.stderr.isatty(), command_line=command_line(),
                          dashboard=dashboard, verbose=obj.get("verbose", 0), tls_ca_file=tls_ca_file,
                          tls_cert=tls_cert, tls_key=tls_key, security_file=security_file,
                          explain_top=explain_top, explain_model=explain_model, cascade=cascade)
        summary = execute_run(opts)
    except KeyboardInterrupt:
        click.echo(INTERRUPTED, err=True)
        sys.exit(130)
    except (RunRefused, ContractError, ValueError, FileNotFoundError, FileExistsError) as exc:
        raise click.UsageError(str(exc)) from None
    except (RunFailed, RuntimeError, OSError) as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(1)
    if as_json:
        echo_json(summary_json(summary, opts))
        return
    click.echo(format_summary(summary, opts))


def summary_json(summary, opts) -> dict:
    """The run summary for ``--json``: every counter of :class:`RunSummary`, the rate and the outputs."""
    from dataclasses import asdict

    return {**asdict(summary), "rate": summary.rate, "threshold": opts.threshold, "store": str(opts.store),
            "scores": str(opts.scores), "out": str(opts.out), "models": [e.name for e in opts.models]}


def _runner_plan(ctx, runner, precision, entries, device) -> str:
    """What runs each model: ``--runner`` when given (one plan string, engine/runners.py), else ``--precision``."""
    from click.core import ParameterSource

    from lensengine.engine.reduced import resolve_precision
    from lensengine.engine.runners import choose_runners, encode_plan

    where = "cpu" if device == "auto" and not _gpu() else device
    if runner is None:
        if precision != "auto" or where != "cpu":
            return resolve_precision(precision, where)  # fp32 or bf16 as asked; on a GPU ONNX Runtime's fp32
        runner = "auto"  # on the CPU, auto is --runner auto: measured faster and correct here, else ort-fp32
    elif ctx.get_parameter_source("precision") == ParameterSource.COMMANDLINE:
        raise ValueError("give --runner or --precision, not both (--runner supersedes --precision)")
    choice = choose_runners(entries, runner, where)
    log.info("runners: %s", ", ".join(f"{m} {r}" for m, r in choice.items()))
    return encode_plan(choice)


def _scheduler_from_file(path: Path, scheduler: str | None) -> str:
    """The address in a Dask scheduler file (what batch-system recipes share instead of an address)."""
    import json

    if scheduler is not None:
        raise click.UsageError("--scheduler and --scheduler-file both name the scheduler: give one")
    try:
        address = json.loads(Path(path).read_text())["address"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise click.UsageError(f"--scheduler-file {path}: no scheduler address in it ({type(exc).__name__}: "
                               f"{exc}); is the scheduler up and writing this file?") from None
    if not isinstance(address, str) or "://" not in address:
        raise click.UsageError(f"--scheduler-file {path}: address {address!r} is not a scheduler address")
    return address


def _gpu() -> bool:
    from lensengine.engine.sessions import gpu_available

    return gpu_available()
