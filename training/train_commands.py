"""Built-in plugin: the ``train`` and ``evaluate`` commands (torch is imported inside them)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import click

from lensengine.plugins import hookimpl

log = logging.getLogger(__name__)


def _quiet(ctx: click.Context) -> bool:
    root = ctx.find_root()
    return bool((root.obj or {}).get("quiet"))


@click.command("train")
@click.option("--model", "model", default=None, help="Model to train (OU-J, OU-Y, OU-H, OU-JYH, OU-66, OU-VIS, OU-200).")
@click.option("--all", "all_models", is_flag=True, help="Train all seven models, each into OUT/<MODEL>/.")
@click.option("--data", required=True, type=click.Path(exists=True, path_type=Path), help="Training survey store (zarr).")
@click.option("--val", type=click.Path(exists=True, path_type=Path), default=None,
              help="Validation store; default: split --val-fraction off the training store (seeded).")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Run directory (with --all: the parent of one directory per model).")
@click.option("--epochs", type=int, default=250, show_default=True)
@click.option("--batch-size", type=int, default=None, help="Default: 250 (OU-66 family), 125 (OU-200 family).")
@click.option("--lr", type=float, default=3e-4, show_default=True, help="Adam learning rate.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--val-fraction", type=float, default=0.1, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]), default="auto", show_default=True,
              help="auto: bf16 autocast on CUDA and on CPUs with AMX/AVX512-BF16, else fp32.")
@click.option("--max-train", type=int, default=None, help="Use at most N training cutouts.")
@click.option("--max-val", type=int, default=None, help="Use at most N validation cutouts.")
@click.option("--early-stop", type=int, default=None, help="Stop after PATIENCE epochs without a lower validation loss.")
@click.option("--max-time", "max_time", type=float, default=None,
              help="Minutes per model for this invocation; stops cleanly between epochs (resume later).")
@click.option("--threads", type=int, default=None, help="torch intra-op threads.")
@click.option("--cache", type=click.Choice(["auto", "prepared", "raw"]), default="auto", show_default=True,
              help="Hold preprocessed inputs (prepared) or native bands preprocessed per batch (raw); "
                   "auto: prepared when it fits --max-memory-gb.")
@click.option("--max-memory-gb", type=float, default=6.0, show_default=True, help="Budget for the prepared cache.")
@click.option("--init-from", "init_from", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Fine-tune from the paper's published weights in this directory (OU_*_Weights.pt) "
                   "instead of a He-normal initialisation.")
@click.option("--resume", is_flag=True, help="Continue from OUT/last.pt exactly.")
@click.option("--no-export", is_flag=True, help="Do not export the best weights to ONNX at the end.")
@click.pass_context
def train_cmd(ctx, model, all_models, data, val, out, epochs, batch_size, lr, seed, val_fraction, device, precision,
              max_train, max_val, early_stop, max_time, threads, cache, max_memory_gb, init_from, resume, no_export):
    """Train a lens-finding CNN with the paper's recipe (Adam 3e-4, class-weighted cross-entropy).

    Keeps the weights of the lowest validation loss, logs every epoch to OUT/log.csv,
    checkpoints every epoch (OUT/last.pt, resumable with --resume) and exports OUT/<MODEL>.onnx.

    Example: lensengine train --model OU-66 --data train.zarr --val val.zarr --out runs/OU-66
    """
    try:
        from lensengine.training.train import TrainConfig, train, train_all
    except ImportError as exc:
        raise click.UsageError(f"training needs torch: pip install 'lensengine[training]' ({exc})")
    from lensengine.engine.specs import MODEL_SPECS

    if all_models == (model is not None):
        raise click.UsageError("give exactly one of --model NAME or --all")
    if model is not None and model not in MODEL_SPECS:
        raise click.UsageError(f"unknown model {model!r}; known models: {', '.join(MODEL_SPECS)}")
    if batch_size is not None and all_models:
        log.warning("--batch-size %d applies to both families under --all", batch_size)
    cfg = TrainConfig(model=model or "OU-66", epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                      val_fraction=val_fraction, max_train=max_train, max_val=max_val, early_stop=early_stop,
                      max_time_min=max_time, precision=precision, device=device, num_threads=threads,
                      cache=cache, max_memory_gb=max_memory_gb, init_from=str(init_from or ""))
    progress = not _quiet(ctx)
    try:
        if all_models:
            results = train_all(cfg, data, out, val=val, resume=resume, export=not no_export, progress=progress)
        else:
            results = {model: train(cfg, data, out, val=val, resume=resume, export=not no_export,
                                    progress=progress)}
    except (FileExistsError, FileNotFoundError, ValueError, KeyError) as exc:
        raise click.UsageError(str(exc))
    for name, r in results.items():
        click.echo(f"{name}: {r.epochs_run} epochs ({r.stop_reason}); best validation loss {r.best_val_loss:.5f} "
                   f"at epoch {r.best_epoch}; {r.onnx or r.best_checkpoint}")


@click.command("evaluate")
@click.option("--models", "models", multiple=True, required=True,
              help="Directory of ONNX models (repeatable; later ones as LABEL=DIR prefix names LABEL:MODEL).")
@click.option("--data", required=True, type=click.Path(exists=True, path_type=Path), help="Labelled test store (zarr).")
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Report directory (report.json, report.md, roc.png).")
@click.option("--json", "as_json", is_flag=True, help="Print {model: {n, auroc, f1, fbeta, ...}} as JSON.")
@click.pass_context
def evaluate_cmd(ctx, models, data, out, as_json):
    """Precision, recall, accuracy, AUROC, F1, F-beta (beta 0.03), TPR0/TPR10 and recall by truth.

    Example: lensengine evaluate --models runs/models --models published=models/published --data test.zarr --out report/
    """
    from lensengine.engine.models import ContractError
    from lensengine.training.evaluate import evaluate, summary_json

    try:
        report = evaluate(list(models), data, out)
    except (ContractError, ValueError, FileNotFoundError) as exc:
        raise click.UsageError(str(exc))
    summary = summary_json(report)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    click.echo(f"{'model':20s} {'n':>7s} {'prec':>7s} {'recall':>7s} {'acc':>7s} {'F1':>7s} {'Fbeta':>7s} "
               f"{'AUROC':>7s} {'TPR0':>7s} {'TPR10':>7s}")
    for name, m in summary.items():
        vals = " ".join(f"{m[k]:7.4f}" if m[k] is not None else f"{'—':>7s}"
                        for k in ("precision", "recall", "accuracy", "f1", "fbeta", "auroc", "tpr0", "tpr10"))
        click.echo(f"{name:20s} {m['n']:7d} {vals}")
    if out is not None:
        click.echo(f"wrote {out / 'report.md'}, {out / 'report.json'}")


@hookimpl
def register_commands(cli):
    cli.add_command(train_cmd)
    cli.add_command(evaluate_cmd)
