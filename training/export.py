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
    "DihedralMean",
    "TTA_NOTE",
    "export_tta",
]

OPSET = 17

#: The ``lensengine.tta`` metadata of a model exported with test-time augmentation.
TTA_NOTE = "dihedral8: P = logistic of the mean log-odds over the 8 flips and rotations of the cutout"


class DihedralMean(torch.nn.Module):
    """P(lens) of a network from its mean log-odds over the eight flips and rotations of each cutout.

    The eight views are the dihedral group of the square: the identity, the two mirror flips, the half turn and
    the same four of the transposed cutout.  They are scored in one batch of 8N; the log-odds of a two-class
    network is the difference of its logits, so with one view this is exactly :class:`PLensModel`.  The
    networks are trained with these eight transforms as augmentation (``--augment``), and they are exact on the
    preprocessed stamp: resampling and min-max scaling commute with them.
    """

    def __init__(self, net: LensCNN):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        t = x.transpose(2, 3)
        views = torch.cat([x, x.flip(3), x.flip(2), x.flip(2).flip(3), t, t.flip(3), t.flip(2), t.flip(2).flip(3)])
        logits = self.net(views)
        return torch.sigmoid((logits[:, 1] - logits[:, 0]).reshape(8, n).mean(0))


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
    tta: bool = False,
) -> Path:
    """Write ``net`` (logits) as a P(lens) ONNX model with the lensengine metadata.

    ``extra`` adds metadata keys (it cannot overwrite the model's own).  ``tta`` exports :class:`DihedralMean`
    (eight views per cutout, seven to nine times the cost) and records :data:`TTA_NOTE` as ``lensengine.tta``.  Also writes the state_dict next to it as ``<stem>.pt`` (the
    network's own weights either way).  Returns the ONNX path.
    """
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if net.in_channels != spec.channels or net.family != spec.family:
        raise ValueError(
            f"network is {net.family} with {net.in_channels} channels but spec {spec.name} expects "
            f"{spec.family} with bands {list(spec.bands)}"
        )
    model = (DihedralMean(net) if tta else PLensModel(net)).eval().cpu()
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
    # ``extra`` adds keys; it cannot overwrite the file's own facts below
    meta = {key: value if isinstance(value, str) else _jsonable(value) for key, value in (extra or {}).items()}
    meta.update({
        "model": spec.name,
        "bands": json.dumps(list(spec.bands)),
        "stamp": str(spec.stamp),
        "pixel_scale": str(spec.pixel_scale),
        "normalisation": NORMALISATION,
        "architecture": spec.family,
        "source": source,
        "lensengine_version": __version__,
        "sha256": weights_sha256(net),
    })
    for key, value in (("training_config", training_config), ("metrics", metrics)):
        if value is not None:
            meta[key] = _jsonable(value)
    if tta:
        meta["tta"] = TTA_NOTE
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


def export_tta(src: str | Path, out: str | Path) -> Path:
    """Write the test-time-augmented version of the lensengine model ``src`` (its ``.pt`` beside it) to ``out``.

    Same name, bands, stamp and weights; the source line says what was added and the other metadata
    (training configuration, metrics, checkpoint) is carried over.  Refuses a model that is already one.
    """
    from lensengine.engine.models import load_entry, read_metadata

    src, out = Path(src), Path(out)
    if src.resolve() == out.resolve():
        raise ValueError(f"{out}: write the test-time-augmented model to another file than its source")
    entry = load_entry(src)
    meta = read_metadata(src)
    if "tta" in meta:
        raise ValueError(f"{src}: already test-time augmented ({meta['tta']})")
    if not src.with_suffix(".pt").is_file():
        raise FileNotFoundError(f"{src}: its torch weights {src.with_suffix('.pt').name} are not beside it")
    spec = get_spec(entry.name) if entry.name in MODEL_SPECS else entry.as_spec()
    net = load_torch_model(src, entry.name)
    extra = {k: v for k, v in meta.items() if not k.startswith("_")}  # export_onnx rewrites its own keys
    source = f"{meta.get('source', 'unknown')}; test-time augmented by lensengine models tta"
    return export_onnx(net, spec, out, source=source, extra=extra, tta=True)
