"""Every column of a run's candidate catalogue (FITS) and score table (Parquet) says what it holds.

Issue 16: only RA/DEC had units; truth columns (θ_E, σ_v, magnitudes, PSF FWHM) had none, ROW, TSNE_*
and ERROR had no description, TRUTH_LABEL was boolean in FITS (astropy writes int8 as logical) and the
SHA-256 cards' comments were cut to one letter.  The test runs ``lensengine run`` on a small store that
carries every truth column of the simulator and of the real-imaging check, with the OU-T-SNE ensemble
(so its columns are there too), and reads both outputs back with astropy and pyarrow.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
N = 8


def _truth_columns() -> dict[str, str]:
    from lensengine.training.realcheck import TRUTH_COLUMNS as REAL
    from lensengine.training.simulate import TRUTH_COLUMNS as SIM

    return {**SIM, **{k: v for k, v in REAL.items() if k not in SIM}}


def _store(path: Path) -> Path:
    """N survey-like cutouts whose truth columns are the simulator's and the real check's (known values)."""
    from lensengine.catalogs.store import CutoutBatch, SurveyStore

    rng = np.random.default_rng(3)
    columns = _truth_columns()
    store = SurveyStore.create(path, survey="units test", chunk_size=N, truth_columns=columns)
    truth = {}
    for name, dtype in columns.items():
        if dtype == "str":
            truth[name] = np.array([f"{name}-{i}" for i in range(N)], dtype=object)
        else:
            truth[name] = (np.arange(N) % 4 - 1).astype(dtype)  # -1, 0, 1, 2: an int8 column must keep them
    truth["label"] = (np.arange(N) % 2).astype(np.int8)
    store.append("T0", CutoutBatch(object_id=np.arange(N), ra=rng.uniform(150, 151, N), dec=rng.uniform(2, 3, N),
                                   vis=rng.gamma(2.0, 3.0, (N, 200, 200)).astype(np.float32),
                                   nisp=rng.gamma(2.0, 40.0, (N, 3, 66, 66)).astype(np.float32),
                                   flags=np.zeros(N, np.uint32), truth=truth))
    return path


@pytest.fixture(scope="module")
def run_outputs(tmp_path_factory):
    from lensengine.engine.cli import _register_plugin_commands, cli

    tmp = tmp_path_factory.mktemp("units")
    store = _store(tmp / "survey.zarr")
    out = tmp / "cands.fits"
    _register_plugin_commands()
    result = CliRunner().invoke(cli, ["-q", "run", "--tiles", str(store), "--out", str(out), "--threshold", "0",
                                      "--ensemble", str(REPO / "models" / "ou_tsne_sky.npz"), "--no-dashboard"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return out, tmp / "cands_scores.parquet"


def _parquet_fields(path: Path):
    """The score table's fields as written: of the file, or of every part of a run's dataset folder."""
    import pyarrow.parquet as pq

    files = [path] if path.is_file() else sorted(path.rglob("*.parquet"))
    assert files, f"no Parquet file at {path}"
    return [field for f in files for field in pq.read_schema(f)]


def test_every_fits_column_has_a_unit_or_is_dimensionless_and_a_description(run_outputs):
    from astropy.io import fits

    from lensengine.catalogs.catalog import column_unit, describe_column

    fits_path, _ = run_outputs
    with fits.open(fits_path) as hdul:
        header = hdul[1].header
        names = hdul[1].columns.names
    assert {"ROW", "ERROR", "P_OU_TSNE", "TSNE_CELL", "TSNE_X", "TSNE_Y", "TRUTH_THETA_E", "TRUTH_MAG_VIS",
            "TRUTH_OFFSET_X"} <= set(names)
    for i, name in enumerate(names, start=1):
        unit = header.get(f"TUNIT{i}", "")
        assert unit or column_unit(name) == "", f"{name}: no unit and not dimensionless by design"
        assert header.comments[f"TTYPE{i}"] == describe_column(name) != "", f"{name}: description missing or cut"
    units = {name: header.get(f"TUNIT{i}", "") for i, name in enumerate(names, start=1)}
    assert units["RA"] == units["DEC"] == "deg"
    assert units["TRUTH_THETA_E"] == units["TRUTH_PSF_FWHM_VIS"] == units["TRUTH_X_LENS"] == "arcsec"
    assert units["TRUTH_SIGMA_V"] == "km s-1"
    assert units["TRUTH_MAG_LENS_VIS"] == units["TRUTH_MAG_SOURCE_H"] == units["TRUTH_DEPTH_OFFSET"] == "mag"


def test_every_parquet_column_has_a_unit_or_is_dimensionless_and_a_description(run_outputs):
    import astropy.units as u

    from lensengine.catalogs.catalog import column_unit, read_scores

    _, parquet_path = run_outputs
    for field in _parquet_fields(parquet_path):
        meta = {k.decode(): v.decode() for k, v in (field.metadata or {}).items()}
        assert meta.get("description"), f"{field.name}: no description"
        assert meta.get("unit") or column_unit(field.name) == "", f"{field.name}: no unit, not dimensionless"
    table = read_scores(parquet_path)
    assert table["TRUTH_THETA_E"].unit == u.arcsec and table["TRUTH_SIGMA_V"].unit == u.km / u.s


def test_truth_label_is_an_integer_in_both_outputs_with_the_same_values(run_outputs):
    import pyarrow.types as pat

    from lensengine.catalogs.catalog import read_catalog, read_scores

    fits_path, parquet_path = run_outputs
    cat = read_catalog(fits_path)
    scores = read_scores(parquet_path)
    label_field = next(f for f in _parquet_fields(parquet_path) if f.name == "TRUTH_LABEL")
    assert pat.is_signed_integer(label_field.type)
    assert cat["TRUTH_LABEL"].dtype.kind == "i", cat["TRUTH_LABEL"].dtype  # not bool
    assert len(cat) == N
    by_id = {int(i): k for k, i in enumerate(scores["OBJECT_ID"])}
    rows = [by_id[int(i)] for i in cat["OBJECT_ID"]]
    for name in ("TRUTH_LABEL", "TRUTH_ATTEMPTS", "TRUTH_N_DEFLECTORS"):  # int8 in the store: -1..2 kept
        np.testing.assert_array_equal(np.asarray(cat[name]), np.asarray(scores[name])[rows])
    assert set(np.asarray(cat["TRUTH_ATTEMPTS"]).tolist()) == {-1, 0, 1, 2}


def test_provenance_comments_are_whole(run_outputs):
    from astropy.io import fits

    from lensengine.catalogs.catalog import read_catalog

    fits_path, _ = run_outputs
    meta = read_catalog(fits_path).meta
    assert len(meta["SHA1"][0]) == 64 and meta["SHA1"][1] == "SHA-256 of model 1"
    with fits.open(fits_path) as hdul:
        header = hdul[1].header
    cards = [c for c in header.cards if c.keyword.startswith("SHA")]
    assert cards and all(c.comment == "" for c in cards)  # no room on the card: the comment is a COMMENT card
    assert "SHA7: SHA-256 of model 7" in [str(t) for t in header["COMMENT"]]
