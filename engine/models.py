"""ONNX model files and their contract: metadata, hashing, discovery, checks.

Every lensengine model is one self-describing ONNX file: input ``cutout``
(N, C, S, S) float32 already normalised (SPEC §4), output ``p_lens`` (N,), a
dynamic batch axis, and ``lensengine.*`` metadata (model name, ordered bands,
stamp size, pixel scale, normalisation, architecture, source, training config,
metrics, content hash).  This module reads that metadata without torch and
refuses a model whose contract does not match what a caller provides.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from lensengine.engine.specs import FAMILY_STAMP, MODEL_NAMES

__all__ = [
    "INPUT_NAME",
    "OUTPUT_NAME",
    "META_PREFIX",
    "NORMALISATION",
    "ModelEntry",
    "ContractError",
    "read_metadata",
    "load_entry",
    "discover_models",
    "default_models_dir",
    "check_bands_available",
    "file_sha256",
]

INPUT_NAME = "cutout"
OUTPUT_NAME = "p_lens"
META_PREFIX = "lensengine."
NORMALISATION = "per-cutout per-band min-max to [0,1] after skimage-resize (bilinear, reflect, anti-aliased)"


class ContractError(ValueError):
    """A model's contract does not match what the caller provides."""


@dataclass(frozen=True)
class ModelEntry:
    """A model the engine can run: its name, ONNX path and input contract."""

    name: str
    path: Path
    bands: tuple[str, ...]
    stamp: int
    architecture: str = ""
    source: str = ""
    sha256: str = ""
    metadata: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def channels(self) -> int:
        return len(self.bands)

    def as_spec(self):
        """The :class:`ModelSpec` view used by the preprocessor."""
        from lensengine.engine.specs import ModelSpec

        family = self.architecture or next(f for f, s in FAMILY_STAMP.items() if s == self.stamp)
        return ModelSpec(self.name, family, self.bands, 0)


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_metadata(path: str | Path) -> dict[str, str]:
    """The ``lensengine.*`` metadata of an ONNX file (prefix removed)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    try:
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ContractError(f"{path}: not a loadable ONNX model ({exc})") from exc
    meta = sess.get_modelmeta().custom_metadata_map
    inputs = sess.get_inputs()
    outputs = sess.get_outputs()
    if [i.name for i in inputs] != [INPUT_NAME] or [o.name for o in outputs] != [OUTPUT_NAME]:
        raise ContractError(
            f"{path}: expected one input {INPUT_NAME!r} and one output {OUTPUT_NAME!r}, found inputs "
            f"{[i.name for i in inputs]} and outputs {[o.name for o in outputs]}"
        )
    out = {k[len(META_PREFIX):]: v for k, v in meta.items() if k.startswith(META_PREFIX)}
    out["_input_shape"] = json.dumps(inputs[0].shape)
    return out


def load_entry(path: str | Path) -> ModelEntry:
    """Read one ONNX file into a :class:`ModelEntry`, checking its metadata is self-consistent."""
    path = Path(path)
    meta = read_metadata(path)
    missing = [k for k in ("model", "bands", "stamp") if k not in meta]
    if missing:
        raise ContractError(f"{path}: missing lensengine metadata {missing}; re-export it with `lensengine models export`")
    bands = tuple(json.loads(meta["bands"]))
    stamp = int(meta["stamp"])
    shape = json.loads(meta["_input_shape"])
    if len(shape) != 4 or shape[1] != len(bands) or shape[2] != stamp or shape[3] != stamp:
        raise ContractError(
            f"{path}: metadata says bands {list(bands)} at {stamp}x{stamp} but the graph input is {shape}"
        )
    return ModelEntry(
        name=meta["model"],
        path=path,
        bands=bands,
        stamp=stamp,
        architecture=meta.get("architecture", ""),
        source=meta.get("source", ""),
        sha256=file_sha256(path),
        metadata={k: v for k, v in meta.items() if not k.startswith("_")},
    )


def default_models_dir() -> Path:
    """Where the shipped default models live (the ``lensengine.models`` package)."""
    return Path(str(resources.files("lensengine.models")))


def discover_models(directory: str | Path) -> list[ModelEntry]:
    """All lensengine ONNX models in ``directory``, in the paper's order then by name."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ContractError(f"model directory {directory} does not exist")
    entries = [load_entry(p) for p in sorted(directory.glob("*.onnx"))]
    names = [e.name for e in entries]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ContractError(f"{directory}: more than one file claims model(s) {dupes}")
    order = {n: i for i, n in enumerate(MODEL_NAMES)}
    return sorted(entries, key=lambda e: (order.get(e.name, len(order)), e.name))


def check_bands_available(entry: ModelEntry, available: tuple[str, ...] | list[str], where: str) -> None:
    """Refuse a model that reads a band the input does not have, naming both sides."""
    missing = [b for b in entry.bands if b not in available]
    if missing:
        raise ContractError(
            f"model {entry.name} ({entry.path.name}) reads bands {list(entry.bands)} but {where} "
            f"provides {list(available)}: missing {missing}"
        )
