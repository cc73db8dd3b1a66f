"""Train one of the seven networks on a survey store, the paper's way (SPEC §5).

:func:`train` reads the training (and validation) store through
:mod:`lensengine.training.data` (the engine's Preprocessor), trains with Adam
and class-weighted cross-entropy on the two logits, keeps the weights of the
best validation epoch (by default its TPR at FPR 1 %, see :data:`SELECT_BY`),
writes a CSV log and a checkpoint after every epoch,
and exports the best weights as ONNX at the end.  The sky recipe (issue 11)
adds per-cutout augmentation (:class:`~lensengine.training.data.Augmenter`:
the eight flips/turns and raw-band noise, blur and sky jitter), hard-negative
mining (the negatives the network scored highest in the last epoch are seen
more often in the next) and L2-SP (Li et al. 2018: a penalty
``l2sp/2 · Σ‖w − w0‖²`` pulling the conv and linear weights towards the
published weights ``w0`` they started from).  A run is resumable exactly:
the checkpoint carries the model, the optimiser, every random state and the
best-so-far, and a resumed run reproduces an uninterrupted one bit for bit
(CPU, same precision and thread count).

Output directory (``--out runs/OU-66``)::

    config.json   the resolved TrainConfig
    last.pt       checkpoint after the latest epoch (resume from here)
    best.pt       checkpoint of the best validation epoch (``select_by``)
    log.csv       time, epoch, train/val loss and accuracy, validation AUROC and TPR at FPR 1 %,
                  data-wait fraction, img/s
    OU_66.onnx    the exported best weights (+ OU_66.pt state_dict)
"""

from __future__ import annotations

import copy
import csv
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, fields, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from threadpoolctl import threadpool_limits
from torch import nn

from lensengine.engine.specs import MODEL_NAMES, get_spec
from lensengine.training.checkpoint import (capture_rng, export_checkpoint, load_checkpoint, restore_rng,
                                           save_checkpoint)
from lensengine.training.data import AUGMENT_MODES, Augmenter, BatchLoader, CutoutSet, load_cutouts, split_indices
from lensengine.training.networks import build_model

log = logging.getLogger(__name__)

__all__ = ["TrainConfig", "TrainResult", "FAMILY_BATCH", "train", "train_all", "resolve_device",
           "resolve_precision", "cpu_has_bf16", "measure_throughput", "make_augmenter", "LOG_COLUMNS"]

#: The paper's batch sizes per architecture family (published code: 500 for both).
FAMILY_BATCH = {"OU-66": 250, "OU-200": 125}

LR_SCHEDULES = ("constant", "cosine")


def scheduled_lr(cfg: "TrainConfig", epoch: int, fraction: float = 0.0) -> float:
    """The learning rate ``fraction`` (0 ≤ f < 1) of the way through epoch ``epoch`` (0-based).

    ``cosine`` anneals from ``cfg.lr`` to 0 over ``cfg.epochs``, batch by batch; it
    depends only on where training is, so a resumed run follows the same curve.
    """
    if cfg.lr_schedule == "constant":
        return cfg.lr
    progress = min(max((epoch + fraction) / cfg.epochs, 0.0), 1.0)
    return 0.5 * cfg.lr * (1.0 + math.cos(math.pi * progress))


LOG_COLUMNS = ("time_utc", "elapsed_s", "epoch", "train_loss", "train_acc", "val_loss", "val_acc", "val_auroc",
               "val_tpr_fpr1", "val_stack_auroc", "val_stack_tpr_fpr1", "lr", "epoch_s", "train_s", "data_wait_frac",
               "img_per_s", "best", "l2sp", "n_hard")

# What decides the kept ("best") epoch.  A survey uses a lens finder at a false-positive rate of 1e-3 to
# 1e-2, and the validation loss on a lens-rich store does not rank epochs the way the sky does (stop 28:
# OU-66 on twice the training data had its lowest validation loss at epoch 1, its worst epoch on the
# judged sky mix; the validation store's own TPR at FPR 1 % ranked the epochs as the sky did).
SELECT_BY = ("tpr_fpr1", "auroc", "loss")
# Below this many validation negatives FPR 1 % allows no false positive at all: selection falls back to loss.
MIN_NEGATIVES_FPR1 = 100


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run; checkpoints carry it (as a dict)."""

    model: str = "OU-66"               # registry name (SPEC §3)
    epochs: int = 250                  # paper §3.2 (published code: 150)
    batch_size: int | None = None      # None: 250 for the OU-66 family, 125 for OU-200 (code: 500)
    lr: float = 3e-4                   # Adam learning rate (paper)
    lr_schedule: str = "constant"      # constant (paper) | cosine: per batch from lr down to 0 over the epochs
    weight_decay: float = 0.0          # Adam weight decay (paper: none)
    class_weights: bool = True         # CE weights: non-lens by the lens fraction, lens by the non-lens fraction
    seed: int = 0                      # torch init/dropout, shuffle generator, validation split
    shuffle: bool = True               # reshuffle the training set every epoch (seeded generator)
    augment: str = "full"              # none | flips (8 dihedral transforms per cutout) | full (flips + raw-band
                                       # noise/blur/sky jitter before preprocessing; needs the raw cache)
    aug_noise_max: float = 1.0         # extra noise rms U(0, this) x the cutout's border rms, per band
    aug_blur_max_px: float = 0.5       # Gaussian blur sigma U(0, this) native pixels, per band
    aug_gradient_max: float = 0.5      # linear sky gradient U(0, this) x border rms edge to edge, per band
    hard_negatives: float = 0.0        # fraction of training negatives with the highest P(lens) last epoch ...
    hard_negative_boost: int = 2       # ... seen this many times in the next epoch (hard_negatives 0: no mining)
    l2sp: float = 0.01                 # L2-SP strength towards the init_from weights (ignored without init_from)
    stack_scores: str = ""             # stack-aware training (training/stack_aware.py): a score table of the
                                       # training store with the other members' P; "" trains the network alone
    stack_file: str = ""               # the stack (""): the shipped models/ou_stack.json
    stack_weight: float = 0.5          # loss = (1 - w) CE(network) + w BCE(the stack with this network in it)
    stack_val_scores: str = ""         # a score table of the validation store: select_by then ranks epochs by
                                       # the stack's figure with this network in it, not the network's own
    val_fraction: float = 0.1          # split off the training store when no validation store is given
    max_train: int | None = None       # use at most this many training cutouts (store order)
    max_val: int | None = None         # use at most this many validation cutouts
    min_arc_snr: float | None = None   # leave training lenses with arc S/N below this out (a --val store
                                       # keeps all; a split of the training store is filtered before it)
    early_stop: int | None = None      # stop after this many epochs without a better validation epoch
    select_by: str = "tpr_fpr1"        # tpr_fpr1 | auroc | loss: the validation figure that picks the kept
                                       # epoch (ties: lower loss); too few negatives for FPR 1 %: loss
    max_time_min: float | None = None  # stop before an epoch would end past this budget (per invocation)
    precision: str = "auto"            # auto | fp32 | bf16 | fp16 (fp16: CUDA only, with a grad scaler)
    val_precision: str = "fp32"        # validation in fp32 so the kept weights are judged as exported
    device: str = "auto"               # auto | cpu | cuda | cuda:N
    channels_last: bool = True         # NHWC kernels: faster on CPU (oneDNN/AMX) and tensor cores
    cache: str = "auto"                # data held as "prepared" inputs, "raw" bands, or auto by memory
    max_memory_gb: float = 6.0         # budget for the prepared cache when cache="auto"
    prefetch: int = 3                  # batches assembled ahead on background threads
    loader_workers: int = 1            # threads assembling batches (more on a GPU machine with spare cores)
    num_threads: int | None = None     # torch intra-op threads (None: torch default)
    init_from: str = ""                # "": He-normal init; else a directory of the published OU_*_Weights.pt
                                       # to fine-tune from (recorded in the exported model's config)
    train_store: str = ""              # informational: where the data came from
    val_store: str = ""

    def resolved(self) -> "TrainConfig":
        """A copy with the family's default batch size filled in and values checked."""
        spec = get_spec(self.model)
        bs = self.batch_size or FAMILY_BATCH[spec.family]
        if bs < 1 or self.epochs < 1 or self.lr <= 0:
            raise ValueError(f"batch size {bs}, epochs {self.epochs} and lr {self.lr} must be positive")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise ValueError(f"precision must be auto, fp32, bf16 or fp16, got {self.precision!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}")
        if self.select_by not in SELECT_BY:
            raise ValueError(f"select_by must be one of {', '.join(SELECT_BY)}, got {self.select_by!r}")
        if self.augment not in AUGMENT_MODES:
            raise ValueError(f"augment must be one of {', '.join(AUGMENT_MODES)}, got {self.augment!r}")
        if not 0 <= self.hard_negatives < 1 or self.hard_negative_boost < 1:
            raise ValueError(f"hard_negatives must be in [0, 1) and hard_negative_boost >= 1, got "
                             f"{self.hard_negatives} and {self.hard_negative_boost}")
        if self.l2sp < 0:
            raise ValueError(f"l2sp must be >= 0, got {self.l2sp}")
        if not 0 <= self.stack_weight <= 1:
            raise ValueError(f"stack_weight must be in [0, 1], got {self.stack_weight}")
        if self.augment == "full" and self.cache == "prepared":
            raise ValueError("augment 'full' jitters the raw bands before preprocessing: use cache 'raw' or "
                             "'auto', not 'prepared' (or augment 'flips')")
        return replace(self, batch_size=bs)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values.setdefault("select_by", "loss")  # checkpoints before stop 28 kept the lowest validation loss
        if isinstance(values.get("augment"), bool):  # checkpoints before the sky recipe: a per-batch flag
            values["augment"] = "flips" if values["augment"] else "none"
        return cls(**values)


# Fields a resumed run may change; the others must match the checkpoint.
_RESUMABLE_CHANGES = {"epochs", "early_stop", "max_time_min", "num_threads", "prefetch", "loader_workers",
                      "device", "cache", "max_memory_gb", "train_store", "val_store", "select_by"}


@dataclass
class TrainResult:
    out_dir: Path
    checkpoint: Path
    best_checkpoint: Path
    onnx: Path | None
    best_epoch: int
    best_val_loss: float
    epochs_run: int
    stop_reason: str
    history: list


# --- devices and precision ---------------------------------------------------------------------------

def cpu_has_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """True when ``cpuinfo`` lists AMX-BF16 or AVX512-BF16 (bf16 autocast is then fast on CPU).

    Without them oneDNN emulates bf16 and autocast is slower than fp32 (AVX2-only AMD EPYC, 2 cores:
    OU-66 training steps 6.9 img/s bf16 against 27.7 fp32), so ``precision="auto"`` picks fp32 there.
    """
    try:
        with open(cpuinfo) as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"amx_bf16", "avx512_bf16"})
    except OSError:
        pass
    return False


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    return dev


def resolve_precision(precision: str, device: torch.device) -> str:
    """auto -> bf16 on CUDA (fp16 if the GPU lacks bf16) and on CPUs with AMX/AVX512-BF16, else fp32."""
    if precision == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if cpu_has_bf16() else "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("fp16 autocast is offered on CUDA only; use bf16 or fp32 on the CPU")
    return precision


def _autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return torch.autocast(device.type, enabled=False)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


# --- one epoch -------------------------------------------------------------------------------------

def _to_device(x: np.ndarray, device: torch.device, channels_last: bool) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(x)).to(device, non_blocking=True)
    return t.contiguous(memory_format=torch.channels_last) if channels_last else t


def make_augmenter(cfg: TrainConfig) -> Augmenter | None:
    """The training-batch augmenter the config asks for (None for augment "none")."""
    if cfg.augment == "none":
        return None
    return Augmenter(cfg.augment, get_spec(cfg.model).bands, noise_max=cfg.aug_noise_max,
                     blur_max_px=cfg.aug_blur_max_px, gradient_max=cfg.aug_gradient_max)


def _l2sp_anchor(net: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(weight, frozen copy) for every conv and linear weight: the w0 of L2-SP (biases are left free)."""
    return [(m.weight, m.weight.detach().clone()) for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def _l2sp_penalty(anchor) -> torch.Tensor:
    return sum(((w - w0) ** 2).sum() for w, w0 in anchor)


def _epoch_order(n: int, labels: np.ndarray, cfg: TrainConfig, gen: torch.Generator, scores) -> np.ndarray:
    """This epoch's training order: every cutout once, plus the hardest negatives ``boost - 1`` more times.

    The hard negatives are the top ``hard_negatives`` fraction of the training
    negatives by the P(lens) they got in the previous epoch (ties broken by row).
    """
    rows = np.arange(n)
    if cfg.hard_negatives > 0 and scores is not None and cfg.hard_negative_boost > 1:
        neg = np.flatnonzero(labels == 0)
        k = int(math.ceil(cfg.hard_negatives * neg.size))
        hardest = neg[np.argsort(-scores[neg], kind="stable")[:k]]
        rows = np.concatenate([rows] + [hardest] * (cfg.hard_negative_boost - 1))
    if not cfg.shuffle:
        return rows
    return rows[torch.randperm(rows.size, generator=gen).numpy()]


def _stack_loss(logits, y, offsets, w, coef: float) -> torch.Tensor:
    """The stack's class-weighted binary cross-entropy: this network's log-odds with its weight ``coef``
    beside the fixed ``offsets`` of the other members (rows without one, NaN, count for nothing)."""
    has = torch.isfinite(offsets)
    z = coef * (logits[:, 1] - logits[:, 0]) + torch.nan_to_num(offsets)
    w = w * has
    per = nn.functional.binary_cross_entropy_with_logits(z, y.float(), reduction="none") * w
    return per.sum() / w.sum().clamp_min(1e-12)


def _run_epoch(net, data: CutoutSet, order, cfg: TrainConfig, device, precision, criterion, optimizer=None,
               scaler=None, progress=None, task=None, augmenter=None, aug_seed: int = 0, anchor=None,
               lr_at=None, offsets=None) -> dict:
    """Train (optimizer given) or evaluate over ``order``; returns loss, accuracy, timings.

    With hard-negative mining, training also returns ``scores``: the P(lens) each
    training row got in its last forward pass of the epoch (NaN if unseen); evaluation
    always returns them (the validation figures).
    ``anchor`` (L2-SP) adds ``l2sp/2 · Σ‖w − w0‖²`` to the training loss; the
    logged loss stays the cross-entropy alone, comparable with validation.
    ``lr_at(fraction)`` sets the learning rate before each step (a schedule).
    ``offsets`` (stack-aware training: ``(log-odds per row of data, coef)``) mixes the stack's loss into
    the training loss, ``stack_weight`` of it (:func:`_stack_loss`).
    """
    training = optimizer is not None
    net.train(training)
    loader = BatchLoader(data, order, cfg.batch_size, prefetch=cfg.prefetch,
                         augmenter=augmenter if training else None, seed=aug_seed, workers=cfg.loader_workers)
    loss_sum = weight_sum = penalty_sum = 0.0
    correct = n = batches = 0
    keep = not training or cfg.hard_negatives > 0  # the validation figures, or hard-negative mining
    scores = np.full(len(data), np.nan, dtype=np.float32) if keep else None
    n_batches = math.ceil(len(order) / cfg.batch_size)
    t0 = time.perf_counter()
    with torch.set_grad_enabled(training):
        for x_np, y_np in loader:
            x = _to_device(x_np, device, cfg.channels_last)
            y = torch.from_numpy(y_np).to(device)
            with _autocast(device, precision):
                logits = net(x)
            per = criterion(logits.float(), y)
            w = criterion.weight[y] if criterion.weight is not None else torch.ones_like(per)
            loss = per.sum() / w.sum()
            if training and offsets is not None:
                row_offsets, coef = offsets
                off = torch.from_numpy(row_offsets[order[n:n + len(y_np)]]).to(device)
                loss = (1 - cfg.stack_weight) * loss + cfg.stack_weight * _stack_loss(logits.float(), y, off, w, coef)
            if scores is not None:
                scores[order[n:n + len(y_np)]] = logits.detach().float().softmax(1)[:, 1].cpu().numpy()
            if training:
                if anchor:
                    penalty = _l2sp_penalty(anchor)
                    loss = loss + 0.5 * cfg.l2sp * penalty
                    penalty_sum += float(penalty.detach())
                if lr_at is not None:
                    for group in optimizer.param_groups:
                        group["lr"] = lr_at(batches / n_batches)
                optimizer.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    loss.backward()
                    optimizer.step()
            loss_sum += float(per.detach().sum())
            weight_sum += float(w.sum())
            correct += int((logits.detach().argmax(1) == y).sum())
            n += len(y_np)
            batches += 1
            if progress is not None:
                progress.update(task, advance=1, loss=f"loss {loss_sum / max(weight_sum, 1e-12):.4f}")
    seconds = time.perf_counter() - t0
    return {"loss": loss_sum / weight_sum if weight_sum else float("nan"),
            "acc": correct / n if n else float("nan"), "seconds": seconds,
            "wait_frac": loader.wait_s / seconds if seconds > 0 else 0.0,
            "img_per_s": n / seconds if seconds > 0 else float("nan"),
            "l2sp": 0.5 * cfg.l2sp * penalty_sum / batches if (anchor and batches) else 0.0, "scores": scores}


# --- data ----------------------------------------------------------------------------------------

def _load_data(cfg: TrainConfig, data, val, spec) -> tuple[CutoutSet, CutoutSet, dict]:
    # augment "full" perturbs raw bands, so the training set must keep them (validation is never augmented)
    train_cache = "raw" if cfg.augment == "full" else cfg.cache
    if val is not None:
        train_set, rep = load_cutouts(data, spec, limit=cfg.max_train, cache=train_cache,
                                      max_memory_gb=cfg.max_memory_gb, min_arc_snr=cfg.min_arc_snr)
        val_set, vrep = load_cutouts(val, spec, limit=cfg.max_val, cache=cfg.cache,
                                     max_memory_gb=cfg.max_memory_gb / 4)
        reports = {"train": rep.as_dict(), "val": vrep.as_dict()}
    else:
        limit = None
        if cfg.max_train is not None:
            limit = math.ceil(cfg.max_train / (1 - cfg.val_fraction)) + 1
        full, rep = load_cutouts(data, spec, limit=limit, cache=train_cache, max_memory_gb=cfg.max_memory_gb,
                                 min_arc_snr=cfg.min_arc_snr)
        tr, va = split_indices(len(full), cfg.val_fraction, cfg.seed)
        if cfg.max_train is not None:
            tr = tr[: cfg.max_train]
        if cfg.max_val is not None:
            va = va[: cfg.max_val]
        train_set, val_set = full.subset(tr), full.subset(va)
        reports = {"train": rep.as_dict(), "split": {"val_fraction": cfg.val_fraction, "seed": cfg.seed,
                                                     "n_train": len(tr), "n_val": len(va)}}
    for name, s in (("training", train_set), ("validation", val_set)):
        if len(s) == 0:
            raise ValueError(f"no usable labelled cutouts for {spec.name} in the {name} data")
    f = train_set.lens_fraction
    if not 0 < f < 1:
        raise ValueError(f"the training data for {spec.name} hold only one class (lens fraction {f}); "
                         "training needs lenses and non-lenses")
    reports.update({"n_train": len(train_set), "n_val": len(val_set), "lens_fraction": f,
                    "val_lens_fraction": val_set.lens_fraction, "cache": train_set.mode})
    return train_set, val_set, reports


def _stack_offsets(cfg: TrainConfig, scores: str, store, cutouts: CutoutSet, what: str
                   ) -> tuple[np.ndarray, float] | None:
    """The stack's ``(offset per row of cutouts (float32, NaN: none), this network's stack weight)`` from the
    score table ``scores`` of ``store``, or None without a table."""
    if not scores:
        return None
    from lensengine.training.stack_aware import shipped_stack_file, stack_offsets

    table, coef = stack_offsets(scores, cfg.stack_file or shipped_stack_file(), cfg.model, store)
    log.info("%s: %s, its stack coefficient %.3f, offsets for %d of %d rows", cfg.model, what, coef,
             int(np.isfinite(table[cutouts.rows]).sum()), len(cutouts))
    return table[cutouts.rows].astype(np.float32), coef


def stack_val_figures(labels, scores, offsets: np.ndarray, coef: float) -> dict[str, float]:
    """``val_stack_auroc`` and ``val_stack_tpr_fpr1``: :func:`val_figures` of the stack's log-odds
    ``offset + coef * logit(P)`` (P clipped as the engine's stack clips it; rows without an offset left out)."""
    from lensengine.engine.stack import logit

    z = offsets.astype(np.float64) + coef * logit(scores)
    return {k.replace("val_", "val_stack_", 1): v for k, v in val_figures(labels, z).items()}


# --- logging -------------------------------------------------------------------------------------

def val_figures(labels, scores) -> dict[str, float]:
    """``val_auroc`` and ``val_tpr_fpr1`` of a validation pass; NaN where the set cannot give one
    (one class only; fewer than :data:`MIN_NEGATIVES_FPR1` negatives for the TPR)."""
    from lensengine.training.metrics import auroc, threshold_at_fpr

    y, p = np.asarray(labels), np.asarray(scores, np.float64)
    ok = np.isfinite(p)
    y, p = y[ok], p[ok]
    neg, lens = p[y == 0], p[y == 1]
    out = {"val_auroc": float("nan"), "val_tpr_fpr1": float("nan")}
    if neg.size and lens.size:
        out["val_auroc"] = float(auroc(y, p))
        if neg.size >= MIN_NEGATIVES_FPR1:
            out["val_tpr_fpr1"] = float(np.mean(lens > threshold_at_fpr(neg, 1e-2)[0]))
    return out


def selection_used(select_by: str, labels) -> str:
    """The figure that can pick the kept epoch on this validation set: ``select_by``, or ``loss``
    when the set has no lenses, no negatives, or (for ``tpr_fpr1``) too few negatives."""
    y = np.asarray(labels)
    n_neg, n_lens = int(np.sum(y == 0)), int(np.sum(y == 1))
    if select_by == "loss" or n_lens == 0 or n_neg == 0:
        return "loss"
    return "loss" if select_by == "tpr_fpr1" and n_neg < MIN_NEGATIVES_FPR1 else select_by


def selection_key(row: dict, used: str, stack: bool = False) -> tuple | None:
    """How good a logged epoch is by ``used`` (larger is better; ties go to the lower loss), the stack's
    figure with ``stack``; None when the row does not have the figure."""
    loss = float(row.get("val_loss", float("nan")))
    if not math.isfinite(loss):
        return None
    if used == "loss":
        return (-loss,)
    value = row.get(f"val_stack_{used}" if stack else f"val_{used}")
    if value is None or value == "" or not math.isfinite(float(value)):
        return None
    return (float(value), -loss)


def _write_log(path: Path, history: list) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=LOG_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in history:
            writer.writerow(row)
    os.replace(tmp, path)


def _progress(enabled: bool):
    """The epoch bar; its ``loss`` field is text, empty until a batch has given a running loss."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(stderr=True)
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[loss]}"), TimeRemainingColumn(), console=console,
                    disable=not (enabled and console.is_terminal), transient=True)


# --- the run ---------------------------------------------------------------------------------------

def train(config: TrainConfig, data, out_dir, *, val=None, resume: bool = False, export: bool = True,
          progress: bool = True, stop_after: int | None = None) -> TrainResult:
    """Train ``config.model`` on store ``data`` (validation: store ``val`` or a split); write into ``out_dir``.

    ``resume`` continues from ``out_dir/last.pt``.  ``stop_after`` ends this invocation after that
    many epochs (as an interruption would; used by tests and schedulers).
    """
    cfg = replace(config.resolved(), train_store=str(data), val_store=str(val or ""))
    if cfg.stack_val_scores and val is None:
        raise ValueError("stack_val_scores (--stack-val-scores) is the score table of the validation store: give "
                         "a validation store (--val)")
    spec = get_spec(cfg.model)
    out = Path(out_dir)
    last_path, best_path = out / "last.pt", out / "best.pt"
    ckpt = None
    if resume and last_path.is_file():
        ckpt = load_checkpoint(last_path)
        old = TrainConfig.from_dict(ckpt["config"])
        changed = {f.name for f in fields(TrainConfig)
                   if getattr(old, f.name) != getattr(cfg, f.name)} - _RESUMABLE_CHANGES
        if changed:
            raise ValueError(f"cannot resume {last_path}: {sorted(changed)} differ from the checkpoint "
                             f"({ {k: getattr(old, k) for k in sorted(changed)} } there, "
                             f"{ {k: getattr(cfg, k) for k in sorted(changed)} } now)")
        if cfg.lr_schedule != "constant" and old.epochs != cfg.epochs:
            raise ValueError(f"cannot resume {last_path} with --epochs {cfg.epochs}: its {cfg.lr_schedule} "
                             f"learning-rate schedule spans the {old.epochs} epochs it was started with")
        done = ckpt["epoch"] >= cfg.epochs or (cfg.early_stop is not None
                                                and ckpt["epoch"] - ckpt["best_epoch"] >= cfg.early_stop)
        if done:  # nothing left to train: do not reload the data
            log.info("%s: %s already finished (%d epochs, best at %d)", spec.name, last_path, ckpt["epoch"],
                     ckpt["best_epoch"])
            reason = "epochs" if ckpt["epoch"] >= cfg.epochs else \
                f"early stop: no better validation epoch for {cfg.early_stop} epochs"
            onnx_path = (export_checkpoint(best_path, out / f"{spec.file_stem}.onnx")
                         if export and best_path.is_file() else None)
            return TrainResult(out, last_path, best_path, onnx_path, ckpt["best_epoch"], ckpt["best_val_loss"],
                               ckpt["epoch"], reason, list(ckpt.get("history") or []))
    elif last_path.is_file():
        raise FileExistsError(f"{last_path} exists: pass --resume to continue that run or choose another --out")
    out.mkdir(parents=True, exist_ok=True)

    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    val_precision = "fp32" if cfg.val_precision == "fp32" else precision

    train_set, val_set, data_report = _load_data(cfg, data, val, spec)
    offsets = _stack_offsets(cfg, cfg.stack_scores, data, train_set,
                             f"stack-aware training (weight {cfg.stack_weight:.2f})")
    val_offsets = _stack_offsets(cfg, cfg.stack_val_scores, val, val_set,
                                 f"epochs ranked by the stack's validation {cfg.select_by}")
    f = data_report["lens_fraction"]
    weights = torch.tensor([f, 1.0 - f] if cfg.class_weights else [1.0, 1.0], dtype=torch.float32, device=device)
    criterion = nn.CrossEntropyLoss(weight=weights, reduction="none")

    torch.manual_seed(cfg.seed)
    net = build_model(spec)
    if cfg.init_from:  # also on resume: the starting weights (published or a fine-tune) are the L2-SP anchor w0
        from lensengine.training.export import load_published, published_weights_path

        net.load_state_dict(load_published(cfg.init_from, spec.name).state_dict())
        log.info("%s: initialised from %s", spec.name, published_weights_path(cfg.init_from, spec.name))
    net = net.to(device)
    if cfg.channels_last:
        net = net.to(memory_format=torch.channels_last)
    anchor = _l2sp_anchor(net) if (cfg.init_from and cfg.l2sp > 0) else None
    augmenter = make_augmenter(cfg)
    optimizer = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
    gen = torch.Generator().manual_seed(cfg.seed)

    epoch, best_epoch, best_val, best_state, history, since_best = 0, 0, math.inf, None, [], 0
    select = selection_used(cfg.select_by, val_set.labels)
    if select != cfg.select_by:
        log.warning("%s: the validation set (%d cutouts, %d negatives) cannot rank epochs by %s: the kept epoch is "
                    "the lowest validation loss", spec.name, len(val_set), int(np.sum(np.asarray(val_set.labels) == 0)),
                    cfg.select_by)
    best_key = None
    hard_scores = None  # P(lens) of every training row in the last epoch (hard-negative mining)
    if ckpt is not None:
        net.load_state_dict(ckpt["model_state"])
        if ckpt.get("hard_scores") is not None:
            hard_scores = ckpt["hard_scores"].numpy()
            if len(hard_scores) != len(train_set):  # a moved store may be resumed; another one starts mining afresh
                log.warning("%s: the training store has %d cutouts, the checkpoint's mining scores %d: hard-negative "
                            "mining restarts from this epoch's scores", spec.name, len(train_set), len(hard_scores))
                hard_scores = None
        optimizer.load_state_dict(ckpt["optimizer_state"])
        if scaler is not None and ckpt.get("scaler_state"):
            scaler.load_state_dict(ckpt["scaler_state"])
        restore_rng(ckpt["rng"], gen)
        epoch, best_epoch, best_val = ckpt["epoch"], ckpt["best_epoch"], ckpt["best_val_loss"]
        best_state, history = ckpt["best_state"], list(ckpt.get("history") or [])
        # the kept epoch, ranked by this run's figure (a checkpoint that ranked by another is re-ranked;
        # if its row lacks the figure, the next epoch replaces it)
        best_key = selection_key(next((r for r in history if r.get("epoch") == best_epoch), {}), select,
                                 val_offsets is not None)
        since_best = epoch - best_epoch
        log.info("%s: resuming from epoch %d (best %.5f at epoch %d)", spec.name, epoch, best_val, best_epoch)
    (out / "config.json").write_text(json.dumps({**asdict(cfg), "precision_used": precision,
                                                 "device_used": str(device), "select_by_used": select,
                                                 "data": data_report}, indent=2))
    log.info("%s: %d training / %d validation cutouts (lens fraction %.3f), batch %d, %s on %s",
             spec.name, len(train_set), len(val_set), f, cfg.batch_size, precision, device)

    t_start = time.perf_counter()
    run_t0 = (history[-1]["elapsed_s"] if history else 0.0)
    stop_reason, epochs_this_call = "epochs", 0
    val_order = np.arange(len(val_set))
    # NumPy's BLAS only serves the batch threads, which run beside torch's own: one BLAS thread each.
    # A multi-threaded OpenBLAS spin-waits when the cores are busy (measured: 9.7 s instead of 0.43 s
    # to preprocess an OU-66 batch of 250 on 2 loaded cores).
    with _progress(progress) as bar, threadpool_limits(limits=1, user_api="blas"):
        while epoch < cfg.epochs:
            if cfg.early_stop is not None and since_best >= cfg.early_stop:
                stop_reason = f"early stop: no better validation epoch for {cfg.early_stop} epochs"
                break
            if stop_after is not None and epochs_this_call >= stop_after:
                stop_reason = "interrupted"
                break
            if cfg.max_time_min is not None and history:
                used = time.perf_counter() - t_start
                if used + float(history[-1]["epoch_s"]) > cfg.max_time_min * 60:
                    stop_reason = f"time budget of {cfg.max_time_min} min"
                    break
            t_epoch = time.perf_counter()
            order = _epoch_order(len(train_set), train_set.labels, cfg, gen, hard_scores)
            n_hard = len(order) - len(train_set)
            # one seed per epoch from the shuffle generator; each batch derives its own from (seed, batch)
            aug_seed = int(torch.randint(0, 2**62, (1,), generator=gen)) if augmenter is not None else 0
            task = bar.add_task(f"{spec.name} epoch {epoch + 1}/{cfg.epochs}", total=math.ceil(len(order) / cfg.batch_size),
                                loss="")
            lr_start = scheduled_lr(cfg, epoch)
            tr = _run_epoch(net, train_set, order, cfg, device, precision, criterion, optimizer, scaler,
                            bar, task, augmenter=augmenter, aug_seed=aug_seed, anchor=anchor,
                            lr_at=lambda f, e=epoch: scheduled_lr(cfg, e, f), offsets=offsets)
            if cfg.hard_negatives > 0:
                # rows the epoch did not reach keep their previous score
                fresh = tr["scores"]
                hard_scores = fresh if hard_scores is None else np.where(np.isnan(fresh), hard_scores, fresh)
            bar.remove_task(task)
            va = _run_epoch(net, val_set, val_order, cfg, device, val_precision, criterion)
            figures = val_figures(val_set.labels, va["scores"])
            if val_offsets is not None:
                figures.update(stack_val_figures(val_set.labels, va["scores"], *val_offsets))
            epoch += 1
            epochs_this_call += 1
            key = selection_key({"val_loss": va["loss"], **figures}, select, val_offsets is not None)
            improved = key is not None and (best_key is None or key > best_key)
            if improved:
                best_val, best_epoch, best_key, since_best = va["loss"], epoch, key, 0
                best_state = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in net.state_dict().items()}
            else:
                since_best += 1
            epoch_s = time.perf_counter() - t_epoch
            row = {"time_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                   "elapsed_s": round(run_t0 + time.perf_counter() - t_start, 2), "epoch": epoch,
                   "train_loss": tr["loss"], "train_acc": tr["acc"], "val_loss": va["loss"], "val_acc": va["acc"],
                   **figures, "lr": lr_start, "epoch_s": round(epoch_s, 3), "train_s": round(tr["seconds"], 3),
                   "data_wait_frac": round(tr["wait_frac"], 4), "img_per_s": round(tr["img_per_s"], 1),
                   "best": int(improved), "l2sp": round(tr["l2sp"], 6), "n_hard": n_hard}
            history.append(row)
            stack_note = ("" if val_offsets is None else f" | stack AUROC {figures['val_stack_auroc']:.3f} "
                          f"TPR@FPR1% {figures['val_stack_tpr_fpr1']:.3f}")
            log.info("%s epoch %d: train loss %.4f acc %.3f | val loss %.4f acc %.3f AUROC %.3f TPR@FPR1%% %.3f%s%s | "
                     "%.0f img/s, data wait %.1f%%", spec.name, epoch, tr["loss"], tr["acc"], va["loss"], va["acc"],
                     figures["val_auroc"], figures["val_tpr_fpr1"], stack_note, " *" if improved else "",
                     tr["img_per_s"], 100 * tr["wait_frac"])
            state = {
                "model": spec.name, "config": asdict(cfg), "precision_used": precision, "epoch": epoch,
                "model_state": {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()},
                "optimizer_state": optimizer.state_dict(),
                "scaler_state": scaler.state_dict() if scaler is not None else None,
                "best_state": best_state, "best_epoch": best_epoch, "best_val_loss": best_val,
                "select_by_used": select, "rng": capture_rng(gen), "history": history, "data": data_report, "stop_reason": None,
                "hard_scores": torch.from_numpy(hard_scores.copy()) if hard_scores is not None else None,
            }
            save_checkpoint(last_path, state)
            if improved:
                save_checkpoint(best_path, {**state, "optimizer_state": {}, "rng": {}, "hard_scores": None})
            _write_log(out / "log.csv", history)

    if epoch >= cfg.epochs:
        stop_reason = "epochs"
    if history:  # record why this invocation stopped
        ck = load_checkpoint(last_path)
        ck["stop_reason"] = stop_reason
        save_checkpoint(last_path, ck)
    log.info("%s: stopped (%s) after %d epochs; kept epoch %d (by %s; validation loss %.5f)",
             spec.name, stop_reason, epoch, best_epoch, select, best_val)
    onnx_path = None
    if export and best_path.is_file() and stop_reason != "interrupted":
        onnx_path = export_checkpoint(best_path, out / f"{spec.file_stem}.onnx")
    return TrainResult(out, last_path, best_path, onnx_path, best_epoch, best_val, epoch, stop_reason,
                       copy.deepcopy(history))


def train_all(config: TrainConfig, data, out_root, *, models=MODEL_NAMES, val=None, resume: bool = False,
              export: bool = True, progress: bool = True) -> dict[str, TrainResult]:
    """Train each model in turn into ``out_root/<MODEL>/`` (batch size per family unless set).

    With ``resume`` a model whose run already ended (epochs, early stop) is only re-exported, an
    unfinished one continues and one not started yet starts, so the same command can be repeated
    session after session under ``max_time_min``.
    """
    results = {}
    for name in models:
        cfg = replace(config, model=name)
        results[name] = train(cfg, data, Path(out_root) / name, val=val, resume=resume, export=export,
                              progress=progress)
    return results


# --- throughput ----------------------------------------------------------------------------------

def measure_throughput(model: str, precision: str = "fp32", batch_size: int | None = None, steps: int = 5,
                       warmup: int = 2, device: str = "auto", channels_last: bool = True) -> float:
    """Images per second of full training steps (forward, backward, Adam) on random inputs."""
    spec = get_spec(model)
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    bs = batch_size or FAMILY_BATCH[spec.family]
    torch.manual_seed(0)
    net = build_model(spec).to(dev)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(net.parameters(), lr=3e-4)
    x = torch.rand(bs, spec.channels, spec.stamp, spec.stamp, device=dev)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 2, (bs,), device=dev)
    crit = nn.CrossEntropyLoss()
    t0 = 0.0
    for i in range(warmup + steps):
        if i == warmup:
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        with _autocast(dev, prec):
            logits = net(x)
        loss = crit(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return bs * steps / (time.perf_counter() - t0)
