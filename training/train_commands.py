"""Built-in plugin: the ``train`` and ``evaluate`` commands (torch is imported inside them)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import click

from lensengine.engine.options import (device_option, echo_json, json_option, model_names_option, models_dir_option,
                                       needs_extra, precision_option, require_modules, threads_option, tiles_option)
from lensengine.plugins import hookimpl

log = logging.getLogger(__name__)


def _quiet(ctx: click.Context) -> bool:
    root = ctx.find_root()
    return bool((root.obj or {}).get("quiet"))


@click.command("train")
@model_names_option(default_help="[no default: training is a long job, so name the models or give --all]",
                    extra_help="Models: OU-J, OU-Y, OU-H, OU-JYH, OU-66, OU-VIS, OU-200; several train one "
                               "after the other into OUT/<MODEL>/.")
@click.option("--all", "all_models", is_flag=True, help="Train all seven models, each into OUT/<MODEL>/.")
@tiles_option(help="Training survey store (zarr), e.g. train.zarr.", hidden_aliases=("--data",), exists=True)
@click.option("--val", type=click.Path(exists=True, path_type=Path), default=None, metavar="STORE",
              help="Validation store; default: split --val-fraction off the training store (seeded).")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Run directory (with --all: the parent of one directory per model).")
@click.option("--epochs", type=click.IntRange(1), default=250, show_default=True,
              help="Epochs (the paper's 250 take tens of minutes per model on a CPU even for a few thousand "
                   "cutouts; a few epochs are enough to try the pipeline).")
@click.option("--batch-size", type=int, default=None, help="Default: 250 (OU-66 family), 125 (OU-200 family).")
@click.option("--lr", type=float, default=3e-4, show_default=True, help="Adam learning rate.")
@click.option("--lr-schedule", type=click.Choice(["constant", "cosine"]), default="constant", show_default=True,
              help="constant: --lr throughout (the paper). cosine: anneal from --lr to 0 batch by batch over "
                   "--epochs (for fine-tuning a few epochs; a resumed run keeps the same --epochs).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the initialisation, the validation split and the batch order.")
@click.option("--val-fraction", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.1,
              show_default=True, help="Fraction of --tiles held out for validation when --val is not given.")
@device_option(extra_prefixes=("cuda:",), extra_help="train also takes cuda:N (GPU N).")
@precision_option(extra=("fp16",), extra_help="Here auto is bf16 autocast on CUDA and on CPUs with "
                                              "AMX/AVX512-BF16, else fp32; train also takes fp16 (CUDA).")
@click.option("--max-train", type=int, default=None, help="Use at most N training cutouts.")
@click.option("--max-val", type=int, default=None, help="Use at most N validation cutouts.")
@click.option("--min-arc-snr", "min_arc_snr", type=float, default=None,
              help="Leave the training lenses whose arcs have S/N below this out (truth column arc_snr; "
                   "negatives all kept; a --val store keeps every lens). Default: keep all.")
@click.option("--early-stop", type=int, default=None, help="Stop after PATIENCE epochs without a better validation epoch.")
@click.option("--select-by", "select_by", type=click.Choice(["tpr_fpr1", "auroc", "loss"]), default="tpr_fpr1",
              show_default=True,
              help="Validation figure that picks the kept (exported) epoch: TPR at FPR 1 % on the validation "
                   "store's own negatives (needs >= 100 of them; fewer: the loss), AUROC, or the loss (before "
                   "stop 28). Ties go to the lower loss; every figure is in log.csv.")
@click.option("--max-time", "max_time", type=float, default=None,
              help="Minutes per model for this invocation; stops cleanly between epochs (resume later).")
@threads_option(help="torch intra-op threads (0: torch's default, from the cores).")
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
@click.option("--stack-scores", "stack_scores", type=click.Path(exists=True, path_type=Path), default=None,
              metavar="TABLE",
              help="Stack-aware training: the score table of --tiles from `lensengine run --scores` (every other "
                   "member of the stack scored). The training loss adds the stacked ensemble's loss with this "
                   "network in it and the others fixed, so it learns most where the rest of the stack errs "
                   "(docs/training.md, \"Stack-aware training\").")
@click.option("--stack-val-scores", "stack_val_scores", type=click.Path(exists=True, path_type=Path), default=None,
              metavar="TABLE",
              help="The score table of --val (as --stack-scores is of --tiles): --select-by then ranks the epochs "
                   "by the stack's figure with this network in it, the objective a stack-aware run trains for; "
                   "log.csv gives both.")
@click.option("--stack-file", "stack_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="The stack for --stack-scores and --stack-val-scores (default: the shipped models/ou_stack.json).")
@click.option("--stack-weight", "stack_weight", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help="With --stack-scores: the stack's share of the loss; the rest is the network's own.")
@click.option("--resume", is_flag=True, help="Continue from OUT/last.pt exactly.")
@click.option("--no-export", is_flag=True, help="Do not export the best weights to ONNX at the end.")
@json_option(help="Print each model's result (epochs, stop reason, best validation loss, files) as JSON.")
@needs_extra("torch")
@click.pass_context
def train_cmd(ctx, model_names, all_models, store, val, out, epochs, batch_size, lr, lr_schedule, seed, val_fraction,
              device, precision, max_train, max_val, min_arc_snr, early_stop, select_by, max_time, threads, cache,
              max_memory_gb, loader_workers, init_from, augment, hard_negatives, hard_boost, l2sp, stack_scores, stack_val_scores,
              stack_file, stack_weight, resume, no_export, as_json):
    """Train a lens-finding CNN: the paper's recipe (Adam 3e-4, class-weighted cross-entropy) plus the sky recipe.

    The sky recipe: per-cutout flips/turns and raw-band jitter (--augment), hard-negative
    mining (--hard-negatives) and L2-SP towards the published weights (--init-from, --l2sp).

    Keeps the weights of the best validation epoch (--select-by: by default its TPR at FPR 1 %,
    the operating point a survey uses), logs every epoch to OUT/log.csv,
    checkpoints every epoch (OUT/last.pt, resumable with --resume) and exports OUT/<MODEL>.onnx.

    Example: lensengine train --model OU-66 --tiles train.zarr --val val.zarr --out runs/OU-66
    """
    from lensengine.engine.specs import MODEL_NAMES, MODEL_SPECS
    from lensengine.training.train import TrainConfig, train, train_all

    if all_models == bool(model_names):
        raise click.UsageError("give --model NAME (repeatable) or --all, not both and not neither")
    unknown = [m for m in model_names if m not in MODEL_SPECS]
    if unknown:
        raise click.UsageError(f"unknown model(s) {', '.join(map(repr, unknown))}; known models: "
                               f"{', '.join(MODEL_SPECS)}")
    if stack_file is not None and stack_scores is None and stack_val_scores is None:
        raise click.UsageError("--stack-file is the stack of --stack-scores or --stack-val-scores: give one with it")
    chosen = tuple(MODEL_NAMES) if all_models else tuple(dict.fromkeys(model_names))
    if batch_size is not None and len(chosen) > 1:
        log.warning("--batch-size %d applies to every model trained here", batch_size)
    data = store
    cfg = TrainConfig(model=chosen[0], epochs=epochs, batch_size=batch_size, lr=lr, lr_schedule=lr_schedule, seed=seed,
                      val_fraction=val_fraction, max_train=max_train, max_val=max_val,
                      min_arc_snr=min_arc_snr, early_stop=early_stop, select_by=select_by,
                      max_time_min=max_time, precision=precision, device=device, num_threads=threads or None,
                      cache=cache, max_memory_gb=max_memory_gb, init_from=str(init_from or ""), augment=augment,
                      hard_negatives=hard_negatives, hard_negative_boost=hard_boost, l2sp=l2sp,
                      stack_scores=str(stack_scores or ""), stack_file=str(stack_file or ""), stack_weight=stack_weight,
                      stack_val_scores=str(stack_val_scores or ""),
                      loader_workers=loader_workers)
    progress = not _quiet(ctx)
    try:
        if len(chosen) > 1:
            results = train_all(cfg, data, out, models=chosen, val=val, resume=resume, export=not no_export,
                                progress=progress)
        else:
            results = {chosen[0]: train(cfg, data, out, val=val, resume=resume, export=not no_export,
                                        progress=progress)}
    except (FileExistsError, FileNotFoundError, ValueError, KeyError) as exc:
        raise click.UsageError(str(exc))
    if as_json:
        echo_json({name: {"epochs_run": r.epochs_run, "stop_reason": r.stop_reason, "best_val_loss": r.best_val_loss,
                          "best_epoch": r.best_epoch, "onnx": r.onnx, "best_checkpoint": r.best_checkpoint}
                   for name, r in results.items()})
        return
    for name, r in results.items():
        click.echo(f"{name}: {r.epochs_run} epochs ({r.stop_reason}); kept epoch {r.best_epoch} (validation loss "
                   f"{r.best_val_loss:.5f}); {r.onnx or r.best_checkpoint}")


@click.command("evaluate")
@models_dir_option(multiple=True, extra_help="Repeat it to compare sets: later ones as LABEL=DIR name "
                                              "their models LABEL:MODEL.")
@model_names_option()
@tiles_option(required=False, hidden_aliases=("--data",), exists=True,
              help="Labelled (mixed) test store (zarr): the threshold-0.5 table, its lenses and, as negative "
                   "set 'data', its non-lenses.")
@click.option("--lenses", type=click.Path(exists=True, path_type=Path), default=None, metavar="STORE",
              help="Store whose label-1 cutouts are the lenses of the operating points (default: those of --tiles).")
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
@json_option(help="Print {model: {n, auroc, f1, ..., tpr_fpr1, tpr_fpr01, tpr_fpr001, purity_1e3, ci, ...}} "
                  "as JSON.")
@click.pass_context
def evaluate_cmd(ctx, models_dir, model_names, store, lenses, negatives, checks, prevalence, purity_fpr, bootstrap,
                 seed, min_fp, out, as_json):
    """Threshold-0.5 metrics, AUROC, TPR0/TPR10, recall by truth, and operating points with bootstrap intervals.

    Operating points: TPR at FPR 1 %, 0.1 %, 0.01 % (null when the negatives are too few) and purity at
    --prevalence, per negative set.

    \b
    Examples:
      lensengine evaluate --tiles test.zarr --out report/            (the shipped models)
      lensengine evaluate --models runs/models --models published=models/published --tiles test.zarr
      lensengine evaluate --models models --lenses lenses.zarr --negatives sky=sky_neg.zarr
        --negatives hard=hard_neg.zarr --check j0946=rc/j0946.zarr --check real=rc/real_galaxies.zarr --json
    """
    from lensengine.engine.models import ContractError, default_models_dir
    from lensengine.training.evaluate import evaluate, parse_labelled_stores, parse_model_dirs, summary_json
    from lensengine.training.metrics import purity_key

    data = store
    if data is None and (lenses is None or not negatives):
        raise click.UsageError("give --tiles STORE, or --lenses STORE with at least one --negatives LABEL=STORE")
    if out is not None:
        require_modules(ctx, "matplotlib")  # roc.png: say so before the scoring, not after it
    try:
        models = _model_sources(parse_model_dirs(list(models_dir) or [str(default_models_dir())]), model_names)
        neg = parse_labelled_stores(negatives, "--negatives")
        chk = parse_labelled_stores(checks, "--check")
        for label, path in {**neg, **chk}.items():
            if not path.exists():
                raise FileNotFoundError(f"store {path} (label {label!r}) does not exist")
        report = evaluate(models, data, out, negatives=neg, lenses=lenses, checks=chk, prevalence=prevalence,
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


def _model_sources(sources, names: tuple[str, ...]):
    """Keep only the models named by ``--model`` in each ``--models`` set (all when none is named)."""
    if not names:
        return sources
    found = {e.name for s in sources for e in s.entries}
    unknown = [n for n in names if n not in found]
    if unknown:
        raise ValueError(f"--model {', '.join(unknown)}: not among the models given ({', '.join(sorted(found))})")
    for source in sources:
        source.entries = [e for e in source.entries if e.name in names]
    return [s for s in sources if s.entries]


@hookimpl
def register_commands(cli):
    from lensengine.training.realcheck_commands import realcheck_cmd

    cli.add_command(train_cmd)
    cli.add_command(evaluate_cmd)
    cli.add_command(realcheck_cmd)
