"""Fixtures for the engine tests: small stores with known bad cutouts, tiny real models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lensengine.catalogs.flags import Flag


def make_store(path: Path, *, tiles=("T0", "T1"), n_per_tile=48, chunk_size=16, seed=0, bands=None,
               bad: bool = True):
    """A store of random survey-like cutouts; with ``bad`` it holds one of each bad-input kind.

    Bad cutouts (tile T0): row 1 NaN pixel in VIS, row 2 constant J band, row 3 a missing H band
    (all-NaN, flagged MISSING_BAND by the writer, as ingestion does).  Object IDs are
    1000 * tile index + row.
    """
    from lensengine.catalogs.store import CutoutBatch, SurveyStore

    rng = np.random.default_rng(seed)
    kwargs = {} if bands is None else {"bands": bands}
    store = SurveyStore.create(path, survey="engine test", chunk_size=chunk_size,
                               truth_columns={"label": "int8", "theta_e": "float32"}, **kwargs)
    for t, tile in enumerate(tiles):
        n = n_per_tile
        vis = rng.gamma(2.0, 3.0, (n, 200, 200)).astype(np.float32)
        nisp = rng.gamma(2.0, 40.0, (n, 3, 66, 66)).astype(np.float32)
        flags = np.zeros(n, np.uint32)
        if bad and t == 0:
            vis[1, 50, 50] = np.nan
            nisp[2, 1] = 5.0
            nisp[3, 2] = np.nan
            flags[3] = np.uint32(Flag.MISSING_BAND)
        batch = CutoutBatch(object_id=1000 * t + np.arange(n), ra=rng.uniform(150, 151, n),
                            dec=rng.uniform(2, 3, n), vis=vis if store.has_vis else None,
                            nisp=nisp if store.has_nisp else None, flags=flags,
                            truth={"label": (np.arange(n) % 2).astype(np.int8),
                                   "theta_e": rng.uniform(0.5, 2, n).astype(np.float32)})
        store.append(tile, batch)
    return store


def corrupt_chunk(store_path: Path, tile: str, index: int) -> Path:
    """Overwrite the VIS shard of one chunk with garbage bytes."""
    from lensengine.catalogs._zarr_layout import chunk_file

    path = chunk_file(Path(store_path), tile, "vis", index, 3)
    size = path.stat().st_size
    path.write_bytes(np.random.default_rng(1).integers(0, 256, size, dtype=np.uint8).tobytes())
    return path


def _export_random_models(out: Path, names, seed: int) -> Path:
    """Real ONNX models of the given networks, randomly initialised with a fixed seed."""
    torch = pytest.importorskip("torch")
    from lensengine.engine.specs import MODEL_SPECS
    from lensengine.training.export import export_onnx
    from lensengine.training.networks import build_model

    torch.manual_seed(seed)
    for name in names:
        spec = MODEL_SPECS[name]
        export_onnx(build_model(name), spec, out / f"{spec.file_stem}.onnx", source="test (random init)")
    return out


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> Path:
    """Three real ONNX models: OU-J, OU-JYH (66 px) and OU-VIS (200 px)."""
    return _export_random_models(tmp_path_factory.mktemp("tiny-models"), ("OU-J", "OU-JYH", "OU-VIS"), 7)


@pytest.fixture
def store_with_bad_cutouts(tmp_path) -> Path:
    path = tmp_path / "survey.zarr"
    make_store(path)
    corrupt_chunk(path, "T1", 1)
    return path


@pytest.fixture(scope="session")
def seven_models(tmp_path_factory) -> Path:
    """All seven networks as real ONNX models."""
    from lensengine.engine.specs import MODEL_NAMES

    return _export_random_models(tmp_path_factory.mktemp("seven-models"), MODEL_NAMES, 11)
