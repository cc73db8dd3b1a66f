"""Shared fixtures.  Tests that need ../shared skip with a reason when it is absent."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LENSENGINE_SHARED", REPO.parent / "shared"))
WEIGHTS = SHARED / "published-weights"
REAL = SHARED / "real"
BENCHMARKS = REPO / "benchmarks"


def load_script(path: Path, name: str):
    """Import a file that is not part of a package (a benchmark script, another test's helpers) as a module."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20220503)


@pytest.fixture(scope="session")
def published_weights_dir() -> Path:
    if not (WEIGHTS / "OU_66_Weights.pt").is_file():
        pytest.skip(f"published weights not found in {WEIGHTS} (../shared is absent)")
    return WEIGHTS


@pytest.fixture(scope="session")
def real_dir() -> Path:
    if not REAL.is_dir():
        pytest.skip(f"real imaging not found in {REAL} (../shared is absent)")
    return REAL


@pytest.fixture(scope="session")
def published_onnx_dir(tmp_path_factory, published_weights_dir) -> Path:
    """The seven published networks imported as lensengine ONNX models (once per session)."""
    pytest.importorskip("torch")
    from lensengine.training.export import import_published

    out = tmp_path_factory.mktemp("published-models")
    import_published(published_weights_dir, out)
    return out
