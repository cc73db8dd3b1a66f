"""Tiny stores and tiny ONNX models for the reliability tests, built with the onnx helpers (no torch).

A model here is ``p = clip(scale * mean(x) + offset)`` over its input cutout,
so it is cheap, deterministic and can be made to misbehave on purpose (NaN,
5.0, a fixed batch axis, bad metadata), with any bands and any stamp.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

TRUTH = {"label": "int8", "theta_e": "float32", "kind": "str"}


def onnx_model(path: Path, name: str, bands, stamp: int, *, scale: float = 1.0, offset: float = 0.0,
               batch="batch", meta: dict | None = None, architecture: str | None = None) -> Path:
    """Write a lensengine-style ONNX model: input ``cutout`` (N, C, S, S), output ``p_lens`` (N,).

    ``batch`` names the batch axis (an int fixes it); ``meta`` overrides metadata values verbatim;
    ``architecture`` defaults to the paper's family name of the stamp (66, 200) or ``test-net``.
    """
    if architecture is None:
        architecture = {66: "OU-66", 200: "OU-200"}.get(stamp, "test-net")
    import onnx
    from onnx import TensorProto, helper

    channels = len(bands)
    nodes = [
        helper.make_node("ReduceMean", ["cutout"], ["m"], axes=[1, 2, 3], keepdims=0),
        helper.make_node("Mul", ["m", "scale"], ["s"]),
        helper.make_node("Add", ["s", "offset"], ["p_lens"]),
    ]
    inits = [helper.make_tensor("scale", TensorProto.FLOAT, [], [scale]),
             helper.make_tensor("offset", TensorProto.FLOAT, [], [offset])]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("cutout", TensorProto.FLOAT, [batch, channels, stamp, stamp])],
        [helper.make_tensor_value_info("p_lens", TensorProto.FLOAT, [batch])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    values = {"model": name, "bands": json.dumps(list(bands)), "stamp": str(stamp), "architecture": architecture,
              "source": "reliability test"}
    values.update(meta or {})
    for key, value in values.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = "lensengine." + key, value
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(path))
    return path


def seven_models(directory: Path) -> Path:
    """The paper's seven model names with their real bands and stamps (tiny graphs)."""
    from lensengine.engine.specs import MODEL_SPECS

    for i, spec in enumerate(MODEL_SPECS.values()):
        onnx_model(directory / f"{spec.file_stem}.onnx", spec.name, spec.bands, spec.stamp,
                   scale=0.6 + 0.05 * i, offset=0.02 * i)
    return directory


def fit_ensemble(path: Path) -> Path:
    """A small fitted OU-T-SNE on synthetic seven-model scores (about a second)."""
    from lensengine.engine._tsne_synth import synthetic_scores
    from lensengine.engine.ou_tsne import OUTSNE

    X, y = synthetic_scores(200, 0, noise=0.7)
    OUTSNE(grid_size=10, n_iter=150, random_state=0).fit(X, y).save(path)
    return path


def make_store(path: Path, *, n: int = 24, chunk_size: int = 8, seed: int = 0, vis=None, nisp=None) -> Path:
    """One tile of survey-like cutouts with truth; row 1 has a NaN VIS pixel (a bad band for VIS models)."""
    from lensengine.catalogs.store import CutoutBatch, SurveyStore

    rng = np.random.default_rng(seed)
    if vis is None:
        vis = rng.gamma(2.0, 3.0, (n, 200, 200)).astype(np.float32)
        vis[1, 10, 10] = np.nan
    if nisp is None:
        nisp = rng.gamma(2.0, 40.0, (n, 3, 66, 66)).astype(np.float32)
    store = SurveyStore.create(path, survey="reliability test", chunk_size=chunk_size, truth_columns=TRUTH)
    store.append("T0", CutoutBatch(
        object_id=np.arange(n, dtype=np.int64) + 100, ra=rng.uniform(150, 151, n), dec=rng.uniform(2, 3, n),
        vis=vis, nisp=nisp, flags=np.zeros(n, np.uint32),
        truth={"label": (np.arange(n) % 2).astype(np.int8), "theta_e": rng.uniform(0.5, 2, n).astype(np.float32),
               "kind": np.array(["ring", "arc"] * (n // 2))}))
    return path


def corrupt_chunk(store_path: Path, tile: str, index: int) -> None:
    """Overwrite the VIS shard of one chunk with garbage bytes (the chunk becomes unreadable)."""
    from lensengine.catalogs._zarr_layout import chunk_file

    path = chunk_file(Path(store_path), tile, "vis", index, 3)
    path.write_bytes(np.random.default_rng(1).integers(0, 256, path.stat().st_size, dtype=np.uint8).tobytes())
