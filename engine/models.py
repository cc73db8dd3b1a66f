"""ONNX model files and their contract: metadata, hashing, discovery, checks.

Every lensengine model is one self-describing ONNX file: input ``cutout``
(N, C, S, S) float32 already normalised (SPEC §4), output ``p_lens`` (N,), a
dynamic batch axis, and ``lensengine.*`` metadata (model name, ordered bands,
stamp size, pixel scale, normalisation, architecture, source, training config,
metrics, content hash).  This module reads that metadata without torch and
refuses a model whose contract does not match what a caller provides.

The contract is checked when a model is loaded (:func:`load_entry`), that is
when a command resolves its models, before any chunk is scored: every error
names the model file.  The stamp is the model's own (from its metadata and
graph), not a property of an architecture name, so a third-party network with
its own stamp and bands runs through the same preprocessing as the paper's.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from lensengine.engine.specs import BANDS, MODEL_NAMES, ModelSpec

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
    "check_entry",
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

    def as_spec(self) -> ModelSpec:
        """The :class:`ModelSpec` view used by the preprocessor: the model's own bands and stamp."""
        return ModelSpec(self.name, self.architecture, self.bands, 0, self.stamp)


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
    out["_output_shape"] = json.dumps(outputs[0].shape)
    return out


def _dynamic(dim) -> bool:
    """ONNX Runtime reports a named (symbolic) or unknown dimension as a string or None."""
    return dim is None or isinstance(dim, str)


def _parse_contract(path: Path, meta: dict[str, str]) -> tuple[tuple[str, ...], int]:
    """Bands and stamp from the metadata, checked against the graph; every error names ``path``."""
    try:
        bands = json.loads(meta["bands"])
    except ValueError:
        raise ContractError(f"{path}: metadata lensengine.bands must be a JSON list of band names such as "
                            f'["J", "Y", "H"], found {meta["bands"]!r}') from None
    if not (isinstance(bands, list) and bands and all(isinstance(b, str) for b in bands)):
        raise ContractError(f"{path}: metadata lensengine.bands must be a non-empty JSON list of band names, "
                            f"found {meta['bands']!r}")
    unknown = [b for b in bands if b not in BANDS]
    if unknown or len(set(bands)) != len(bands):
        raise ContractError(f"{path}: metadata lensengine.bands {bands} must name distinct survey bands "
                            f"from {list(BANDS)}" + (f"; unknown: {unknown}" if unknown else ""))
    try:
        stamp = int(meta["stamp"])
    except ValueError:
        raise ContractError(f"{path}: metadata lensengine.stamp must be an integer number of pixels, "
                            f"found {meta['stamp']!r}") from None
    if stamp < 1:
        raise ContractError(f"{path}: metadata lensengine.stamp must be a positive number of pixels, found {stamp}")
    shape = json.loads(meta["_input_shape"])
    if len(shape) != 4 or shape[1] != len(bands) or shape[2] != stamp or shape[3] != stamp:
        raise ContractError(
            f"{path}: metadata says bands {bands} at {stamp}x{stamp} but the graph input is {shape}"
        )
    out_shape = json.loads(meta["_output_shape"])
    if not _dynamic(shape[0]) or not out_shape or not _dynamic(out_shape[0]):
        raise ContractError(
            f"{path}: the batch axis must be dynamic (the engine scores batches of any size), but the graph "
            f"input is {shape} and output {out_shape}; export with a named batch axis (dynamic_axes)"
        )
    if len(out_shape) > 2 or (len(out_shape) == 2 and out_shape[1] != 1):
        raise ContractError(f"{path}: output {OUTPUT_NAME!r} must hold one P(lens) per cutout, shape (N,) or "
                            f"(N, 1); the graph output is {out_shape}")
    return tuple(bands), stamp


def load_entry(path: str | Path) -> ModelEntry:
    """Read one ONNX file into a :class:`ModelEntry`, checking its metadata is self-consistent."""
    path = Path(path)
    meta = read_metadata(path)
    missing = [k for k in ("model", "bands", "stamp") if k not in meta]
    if missing:
        raise ContractError(f"{path}: missing lensengine metadata {missing}; re-export it with `lensengine models export`")
    bands, stamp = _parse_contract(path, meta)
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


def check_entry(entry: ModelEntry, where: str) -> None:
    """Refuse a hand-made :class:`ModelEntry` (a plugin's) whose contract cannot be run, naming its file.

    :func:`load_entry` checks a model against its ONNX graph; this cheap check
    covers entries a plugin built itself: the file exists, the bands are
    distinct survey bands, the stamp a positive integer.
    """
    problems = []
    if not Path(entry.path).is_file():
        problems.append("the file does not exist")
    if not entry.bands or any(b not in BANDS for b in entry.bands) or len(set(entry.bands)) != len(entry.bands):
        problems.append(f"bands {list(entry.bands)} are not distinct survey bands from {list(BANDS)}")
    if not isinstance(entry.stamp, int) or isinstance(entry.stamp, bool) or entry.stamp < 1:
        problems.append(f"stamp {entry.stamp!r} is not a positive integer")
    if problems:
        raise ContractError(f"model {entry.name!r} ({entry.path}) from {where}: " + "; ".join(problems))


def check_bands_available(entry: ModelEntry, available: tuple[str, ...] | list[str], where: str) -> None:
    """Refuse a model that reads a band the input does not have, naming both sides."""
    missing = [b for b in entry.bands if b not in available]
    if missing:
        raise ContractError(
            f"model {entry.name} ({entry.path.name}) reads bands {list(entry.bands)} but {where} "
            f"provides {list(available)}: missing {missing}"
        )
