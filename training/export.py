"""Export networks to self-describing ONNX files, and import the published weights.

One ONNX file per network (single file, no external data): input ``cutout``
(N, C, S, S) float32, already normalised; output ``p_lens`` (N,); dynamic batch
axis ``batch``; opset 17; ``lensengine.*`` metadata (see
:mod:`lensengine.engine.models`).  The torch weights are written next to each
ONNX file (``<stem>.pt``) because the interpretability plugins need gradients.
"""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from dataclasses import asdict, is_dataclass
from pathlib import Path

import torch

from lensengine import __version__
from lensengine.engine.models import INPUT_NAME, META_PREFIX, NORMALISATION, OUTPUT_NAME
from lensengine.engine.specs import MODEL_SPECS, ModelSpec, get_spec
from lensengine.training.networks import LensCNN, PLensModel, build_model

log = logging.getLogger(__name__)

__all__ = [
    "OPSET",
    "weights_sha256",
    "export_onnx",
    "published_weights_path",
    "load_published",
    "import_published",
    "load_torch_model",
]

OPSET = 17


def weights_sha256(net: torch.nn.Module) -> str:
    """A content hash of the weights: SHA-256 over every tensor in state_dict order."""
    h = hashlib.sha256()
    for key, tensor in net.state_dict().items():
        h.update(key.encode())
        h.update(tensor.detach().to(torch.float32).contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


def _jsonable(value):
    if value is None:
        return None
    if is_dataclass(value):
        value = asdict(value)
    return json.dumps(value, sort_keys=True, default=str)


def export_onnx(
    net: LensCNN,
    spec: ModelSpec,
    path: str | Path,
    *,
    source: str,
    training_config=None,
    metrics: dict | None = None,
    extra: dict | None = None,
) -> Path:
    """Write ``net`` (logits) as a P(lens) ONNX model with the lensengine metadata.

    Also writes the state_dict next to it as ``<stem>.pt``.  Returns the ONNX path.
    """
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if net.in_channels != spec.channels or net.family != spec.family:
        raise ValueError(
            f"network is {net.family} with {net.in_channels} channels but spec {spec.name} expects "
            f"{spec.family} with bands {list(spec.bands)}"
        )
    model = PLensModel(net).eval().cpu()
    example = torch.zeros(2, spec.channels, spec.stamp, spec.stamp)
    tmp = path.with_suffix(".tmp.onnx")
    with warnings.catch_warnings():
        # the TorchScript exporter is deprecated in torch >= 2.9 but exports
        # this plain CNN without onnxscript; the result is checked below
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (example,),
            str(tmp),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,
        )
    proto = onnx.load(str(tmp))
    tmp.unlink()
    meta = {
        "model": spec.name,
        "bands": json.dumps(list(spec.bands)),
        "stamp": str(spec.stamp),
        "pixel_scale": str(spec.pixel_scale),
        "normalisation": NORMALISATION,
        "architecture": spec.family,
        "source": source,
        "lensengine_version": __version__,
        "sha256": weights_sha256(net),
    }
    for key, value in (("training_config", training_config), ("metrics", metrics)):
        if value is not None:
            meta[key] = _jsonable(value)
    for key, value in (extra or {}).items():
        meta[key] = value if isinstance(value, str) else _jsonable(value)
    del proto.metadata_props[:]
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = META_PREFIX + key, value
    proto.producer_name = "lensengine"
    proto.producer_version = __version__
    onnx.checker.check_model(proto)
    onnx.save_model(proto, str(path), save_as_external_data=False)
    torch.save(net.state_dict(), path.with_suffix(".pt"))
    log.info("exported %s to %s", spec.name, path)
    return path


def published_weights_path(weights_dir: str | Path, name: str) -> Path:
    """``OU-JYH`` -> ``<dir>/OU_JYH_Weights.pt`` (the authors' file names)."""
    return Path(weights_dir) / f"{get_spec(name).file_stem}_Weights.pt"


def load_published(weights_dir: str | Path, name: str) -> LensCNN:
    """Load one of the paper's seven state_dicts strictly into our network.

    The published OU-VIS trunk is called ``VIS_layer``; it is renamed to ``layer``.
    """
    path = published_weights_path(weights_dir, name)
    if not path.is_file():
        raise FileNotFoundError(f"published weights for {name} not found: expected {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = {("layer" + k[len("VIS_layer"):] if k.startswith("VIS_layer.") else k): v for k, v in state.items()}
    net = build_model(name)
    net.load_state_dict(state, strict=True)
    return net.eval()


def import_published(weights_dir: str | Path, out_dir: str | Path, names=None) -> list[Path]:
    """Export the paper's published weights as lensengine ONNX models into ``out_dir``."""
    out = []
    for name in names or MODEL_SPECS:
        spec = get_spec(name)
        net = load_published(weights_dir, name)
        out.append(
            export_onnx(
                net,
                spec,
                Path(out_dir) / f"{spec.file_stem}.onnx",
                source="published (Wilde et al. 2022, MIT licence)",
                extra={"weights_file": published_weights_path(weights_dir, name).name},
            )
        )
    return out


def load_torch_model(onnx_or_pt: str | Path, name: str | None = None) -> LensCNN:
    """Load the torch weights kept next to an exported ONNX model (for gradients)."""
    path = Path(onnx_or_pt)
    pt = path.with_suffix(".pt")
    if name is None:
        from lensengine.engine.models import load_entry

        name = load_entry(path.with_suffix(".onnx")).name
    net = build_model(name)
    net.load_state_dict(torch.load(pt, map_location="cpu", weights_only=True), strict=True)
    return net.eval()
