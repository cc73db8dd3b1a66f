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
@click.option("--loader-workers", "loader_workers", type=int, default=1, show_default=True,
              help="Threads assembling (and augmenting) batches; more on a GPU machine with spare cores.")
@click.option("--init-from", "init_from", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Fine-tune from the paper's published weights in this directory (OU_*_Weights.pt) "
                   "instead of a He-normal initialisation.")
@click.option("--augment", type=click.Choice(["none", "flips", "full"]), default="full", show_default=True,
              help="Per-cutout augmentation: the eight flips/90-degree turns (flips), plus extra noise, blur and "
                   "sky gradient on the raw bands before preprocessing (full; holds the raw bands in memory).")
@click.option("--hard-negatives", "hard_negatives", type=float, default=0.0, show_default=True,
              help="Fraction of training negatives with the highest P(lens) in the last epoch to see "
                   "--hard-boost times in the next epoch (0: no mining).")
@click.option("--hard-boost", "hard_boost", type=int, default=2, show_default=True,
              help="How many times a hard negative is seen per epoch.")
@click.option("--l2sp", type=float, default=0.01, show_default=True,
              help="L2-SP: add L2SP/2 * sum((w - w0)^2) over conv/linear weights, w0 = the --init-from weights "
                   "(0: plain fine-tuning; ignored without --init-from).")
@click.option("--resume", is_flag=True, help="Continue from OUT/last.pt exactly.")
@click.option("--no-export", is_flag=True, help="Do not export the best weights to ONNX at the end.")
@click.pass_context
def train_cmd(ctx, model, all_models, data, val, out, epochs, batch_size, lr, seed, val_fraction, device, precision,
              max_train, max_val, early_stop, max_time, threads, cache, max_memory_gb, loader_workers, init_from,
              augment, hard_negatives, hard_boost, l2sp, resume, no_export):
    """Train a lens-finding CNN: the paper's recipe (Adam 3e-4, class-weighted cross-entropy) plus the sky recipe.

    The sky recipe: per-cutout flips/turns and raw-band jitter (--augment), hard-negative
    mining (--hard-negatives) and L2-SP towards the published weights (--init-from, --l2sp).

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
                      cache=cache, max_memory_gb=max_memory_gb, init_from=str(init_from or ""), augment=augment,
                      hard_negatives=hard_negatives, hard_negative_boost=hard_boost, l2sp=l2sp,
                      loader_workers=loader_workers)
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
@click.option("--data", type=click.Path(exists=True, path_type=Path), default=None,
              help="Labelled (mixed) test store (zarr): the threshold-0.5 table, its lenses and, as negative "
                   "set 'data', its non-lenses.")
@click.option("--lenses", type=click.Path(exists=True, path_type=Path), default=None,
              help="Store whose label-1 cutouts are the lenses of the operating points (default: those of --data).")
@click.option("--negatives", "negatives", multiple=True, metavar="LABEL=STORE",
              help="Negative set (its label-0 cutouts), repeatable, e.g. sky=sky_neg.zarr hard=hard_neg.zarr; "
                   "the first one gives the top-level tpr_fpr* figures.")
@click.option("--check", "checks", multiple=True, metavar="LABEL=STORE",
              help="Store scored cutout by cutout against the operating thresholds (e.g. lensengine realcheck "
                   "output: j0946=rc/j0946.zarr real=rc/real_galaxies.zarr), repeatable.")
@click.option("--prevalence", type=float, default=1e-3, show_default=True,
              help="Lens fraction for the purity figure (1e-3: purity_1e3).")
@click.option("--purity-fpr", "purity_fpr", type=float, default=1e-3, show_default=True,
              help="Operating FPR whose threshold the purity is taken at.")
@click.option("--bootstrap", type=int, default=1000, show_default=True,
              help="Bootstrap resamples for the confidence intervals (0: none).")
@click.option("--seed", type=int, default=0, show_default=True, help="Bootstrap seed.")
@click.option("--min-fp", "min_fp", type=int, default=10, show_default=True,
              help="A TPR at FPR f needs at least MIN_FP/f negatives (else null with a reason).")
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Report directory (report.json, report.md, roc.png).")
@click.option("--json", "as_json", is_flag=True,
              help="Print {model: {n, auroc, f1, ..., tpr_fpr1, tpr_fpr01, tpr_fpr001, purity_1e3, ci, ...}} as JSON.")
@click.pass_context
def evaluate_cmd(ctx, models, data, lenses, negatives, checks, prevalence, purity_fpr, bootstrap, seed, min_fp, out,
                 as_json):
    """Threshold-0.5 metrics, AUROC, TPR0/TPR10, recall by truth, and operating points with bootstrap intervals.

    Operating points: TPR at FPR 1 %, 0.1 %, 0.01 % (null when the negatives are too few) and purity at
    --prevalence, per negative set.

    Examples:
      lensengine evaluate --models runs/models --models published=models/published --data test.zarr --out report/
      lensengine evaluate --models models --lenses lenses.zarr --negatives sky=sky_neg.zarr
        --negatives hard=hard_neg.zarr --check j0946=rc/j0946.zarr --check real=rc/real_galaxies.zarr --json
    """
    from lensengine.engine.models import ContractError
    from lensengine.training.evaluate import evaluate, parse_labelled_stores, summary_json
    from lensengine.training.metrics import purity_key

    if data is None and (lenses is None or not negatives):
        raise click.UsageError("give --data STORE, or --lenses STORE with at least one --negatives LABEL=STORE")
    try:
        neg = parse_labelled_stores(negatives, "--negatives")
        chk = parse_labelled_stores(checks, "--check")
        for label, path in {**neg, **chk}.items():
            if not path.exists():
                raise FileNotFoundError(f"store {path} (label {label!r}) does not exist")
        report = evaluate(list(models), data, out, negatives=neg, lenses=lenses, checks=chk, prevalence=prevalence,
                          purity_fpr=purity_fpr, bootstrap=bootstrap, seed=seed, min_false_positives=min_fp)
    except (ContractError, ValueError, FileNotFoundError) as exc:
        raise click.UsageError(str(exc))
    summary = summary_json(report)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    pkey = purity_key(prevalence)
    extra = ("tpr_fpr1", "tpr_fpr01", pkey)
    click.echo(f"{'model':20s} {'n':>7s} {'prec':>7s} {'recall':>7s} {'acc':>7s} {'F1':>7s} {'Fbeta':>7s} "
               f"{'AUROC':>7s} {'TPR0':>7s} {'TPR10':>7s} {'TPR@1%':>7s} {'TPR@.1%':>7s} {'purity':>7s}")
    for name, m in summary.items():
        vals = " ".join(f"{m[k]:7.4f}" if m.get(k) is not None else f"{'—':>7s}"
                        for k in ("precision", "recall", "accuracy", "f1", "fbeta", "auroc", "tpr0", "tpr10", *extra))
        click.echo(f"{name:20s} {m['n']:7d} {vals}")
    if report.get("primary_negatives"):
        click.echo(f"operating points against negatives {report['primary_negatives']!r} "
                   f"(purity at prevalence {prevalence:g}); per set and intervals in --json / the report")
    if out is not None:
        click.echo(f"wrote {out / 'report.md'}, {out / 'report.json'}")


@hookimpl
def register_commands(cli):
    from lensengine.training.realcheck_commands import realcheck_cmd

    cli.add_command(train_cmd)
    cli.add_command(evaluate_cmd)
    cli.add_command(realcheck_cmd)
