"""Training checkpoints: save, load, and export to a lensengine ONNX model.

A checkpoint is one ``torch.save`` file (loadable with ``weights_only=True``:
only tensors, numbers, strings, lists and dicts) holding

* ``format`` (:data:`CHECKPOINT_FORMAT`), ``model`` (registry name), ``config`` (the
  :class:`~lensengine.training.train.TrainConfig` as a dict);
* ``model_state`` and ``optimizer_state`` after ``epoch`` completed epochs;
* ``best_state``, ``best_epoch``, ``best_val_loss``: the weights of the best
  validation epoch so far by ``select_by_used`` (TPR at FPR 1 %, AUROC or the
  loss; checkpoints before stop 28: the loss) and that epoch's loss (what gets exported);
* ``rng``: the torch CPU (and CUDA) generator states, the shuffling generator
  (which also seeds each epoch's augmentation), NumPy's global state, so a
  resumed run continues exactly;
* ``hard_scores``: the P(lens) of every training cutout in the last epoch
  (hard-negative mining; None when mining is off);
* ``history`` (per-epoch log rows), ``data`` (load reports), ``stop_reason``.

Files are written to a temporary name and renamed: a crash never leaves half a checkpoint.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch

from lensengine.engine.specs import get_spec

log = logging.getLogger(__name__)

__all__ = ["CHECKPOINT_FORMAT", "save_checkpoint", "load_checkpoint", "export_checkpoint",
           "capture_rng", "restore_rng", "checkpoint_metrics"]

CHECKPOINT_FORMAT = 1


def capture_rng(shuffle: torch.Generator | None = None) -> dict:
    """The random states a run depends on (torch CPU/CUDA, the shuffle generator, NumPy)."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"name": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if shuffle is not None:
        state["shuffle"] = shuffle.get_state()
    return state


def restore_rng(state: dict, shuffle: torch.Generator | None = None) -> None:
    """Inverse of :func:`capture_rng`."""
    torch.set_rng_state(state["torch"])
    npst = state["numpy"]
    np.random.set_state((npst["name"], npst["keys"].numpy().astype(np.uint32), npst["pos"],
                         npst["has_gauss"], npst["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if shuffle is not None and "shuffle" in state:
        shuffle.set_state(state["shuffle"])


def save_checkpoint(path: str | Path, checkpoint: dict) -> Path:
    """Write ``checkpoint`` atomically (temporary file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    checkpoint = {"format": CHECKPOINT_FORMAT, **checkpoint}
    tmp = path.with_name(path.name + ".tmp")
    torch.save(checkpoint, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | Path) -> dict:
    """Read a checkpoint written by :func:`save_checkpoint`, checking its format and model."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or "model_state" not in ckpt or "model" not in ckpt:
        raise ValueError(f"{path} is not a lensengine training checkpoint (no model/model_state)")
    if ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: checkpoint format {ckpt.get('format')} but this lensengine reads "
                         f"format {CHECKPOINT_FORMAT}")
    get_spec(ckpt["model"])  # a clear error for an unknown model name
    return ckpt


def checkpoint_metrics(ckpt: dict) -> dict:
    """The summary numbers an exported model carries in its metadata."""
    history = ckpt.get("history") or []
    best = next((row for row in history if row.get("epoch") == ckpt.get("best_epoch")), {})
    out = {
        "best_epoch": ckpt.get("best_epoch"),
        "best_val_loss": ckpt.get("best_val_loss"),
        "selected_by": ckpt.get("select_by_used", "loss"),
        "val_accuracy": best.get("val_acc"),
        "val_auroc": best.get("val_auroc"),
        "val_tpr_fpr1": best.get("val_tpr_fpr1"),
        "train_loss": best.get("train_loss"),
        "epochs_run": ckpt.get("epoch"),
        "stop_reason": ckpt.get("stop_reason"),
    }
    for key in ("data",):
        if ckpt.get(key):
            out[key] = ckpt[key]
    return out


def export_checkpoint(checkpoint_path: str | Path, out_path: str | Path) -> Path:
    """Export the best weights of a training checkpoint as a self-describing ONNX model.

    Returns the ONNX path (the torch state_dict is written beside it as ``<stem>.pt``).
    """
    from lensengine.training.export import export_onnx
    from lensengine.training.networks import build_model

    ckpt = load_checkpoint(checkpoint_path)
    spec = get_spec(ckpt["model"])
    net = build_model(spec)
    net.load_state_dict(ckpt.get("best_state") or ckpt["model_state"], strict=True)
    net.eval()
    config = ckpt.get("config") or {}
    source = "trained here (fine-tuned from the published weights)" if config.get("init_from") else "trained here"
    return export_onnx(net, spec, out_path, source=source, training_config=ckpt.get("config"),
                       metrics=checkpoint_metrics(ckpt),
                       extra={"checkpoint": Path(checkpoint_path).name})
