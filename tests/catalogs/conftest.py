"""Fixtures for the store and catalogue tests: small random batches and stores."""

from __future__ import annotations

import numpy as np
import pytest

from lensengine.catalogs.store import CutoutBatch, SurveyStore


def make_batch(rng: np.random.Generator, n: int, start: int = 0, truth: bool = True) -> CutoutBatch:
    return CutoutBatch(
        object_id=np.arange(start, start + n, dtype=np.int64),
        ra=rng.uniform(150, 151, n), dec=rng.uniform(1, 2, n),
        vis=rng.normal(1.0, 0.1, (n, 200, 200)).astype(np.float32),
        nisp=rng.normal(1.0, 0.1, (n, 3, 66, 66)).astype(np.float32),
        flags=np.zeros(n, dtype=np.uint32),
        truth={"label": rng.integers(0, 2, n).astype(np.int8), "theta_e": rng.uniform(0.5, 2, n),
               "kind": np.array(["lens", "nonlens"] * (n // 2) + ["lens"] * (n % 2))} if truth else {},
    )


@pytest.fixture
def batch_factory(rng):
    return lambda n, start=0, truth=True: make_batch(rng, n, start, truth)


@pytest.fixture
def small_store(tmp_path, rng):
    """A 40-cutout store in chunks of 16 (three chunks, the last one partial), with truth columns."""
    store = SurveyStore.create(tmp_path / "s.zarr", survey="test", chunk_size=16,
                               truth_columns={"label": "int8", "theta_e": "float64", "kind": "str"})
    batches = [make_batch(rng, 25), make_batch(rng, 15, start=25)]
    for b in batches:
        store.append("t0", b)
    return store, CutoutBatch.concatenate(batches)


@pytest.fixture
def cli_root():
    """A bare click group with this package's commands (independent of other plugins)."""
    import click

    from lensengine.catalogs.commands import register_commands

    @click.group()
    def root():
        """Test root."""

    register_commands(root)
    return root
