"""Score tables (Parquet), candidate catalogues (FITS), IAU names and the known-lens cross-match."""

from __future__ import annotations

import astropy.units as u
import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from click.testing import CliRunner

from lensengine.catalogs.catalog import (ScoreTableWriter, iau_name, read_catalog, read_scores, score_column,
                                         standard_provenance, write_candidates)
from lensengine.catalogs.crossmatch import crossmatch_known
from lensengine.catalogs.flags import Flag


def score_batch(rng, n, start=0):
    return {
        "OBJECT_ID": np.arange(start, start + n, dtype=np.int64),
        "TILE": np.array(["t0"] * n),
        "CHUNK": np.full(n, start // 10, dtype=np.int32),
        "RA": rng.uniform(140, 150, n), "DEC": rng.uniform(-5, 5, n),
        "P_OU_66": rng.uniform(0, 1, n).astype(np.float32),
        "P_OU_200": np.where(np.arange(n) % 7 == 0, np.nan, rng.uniform(0, 1, n)).astype(np.float32),
        "P_ENSEMBLE": rng.uniform(0, 1, n).astype(np.float32),
        "FLAGS": np.where(np.arange(n) % 5 == 0, np.uint32(Flag.EDGE_CLIPPED), np.uint32(0)).astype(np.uint32),
        "FLAG_TEXT": np.array(["OK"] * n),
    }


def test_score_column_names():
    assert score_column("OU-66") == "P_OU_66"
    assert score_column("OU-JYH") == "P_OU_JYH"
    assert score_column("ensemble") == "P_ENSEMBLE"


def test_score_table_incremental_round_trip(tmp_path, rng):
    path = tmp_path / "scores.parquet"
    batches = [score_batch(rng, 10, 0), score_batch(rng, 10, 10), score_batch(rng, 5, 20)]
    with ScoreTableWriter(path, metadata={"store": "s.zarr"}) as writer:
        for b in batches:
            writer.write(b)
            assert not path.exists()  # only the temporary file until close
    table = read_scores(path)
    assert len(table) == 25 and table.meta["store"] == "s.zarr"
    np.testing.assert_array_equal(table["OBJECT_ID"], np.arange(25))
    assert table["P_OU_66"].dtype == np.float32 and table["FLAGS"].dtype == np.uint32
    assert table["RA"].unit == u.deg and table["TILE"][3] == "t0"
    assert np.isnan(table["P_OU_200"][0])
    assert "OU-66" in table["P_OU_66"].description
    with pytest.raises(ValueError, match="missing"):
        with ScoreTableWriter(tmp_path / "bad.parquet") as w:
            w.write(batches[0])
            w.write({"OBJECT_ID": np.arange(3)})
    assert not (tmp_path / "bad.parquet").exists() and list(tmp_path.glob(".bad*")) == []
    (tmp_path / "junk.parquet").write_bytes(b"not parquet")
    with pytest.raises(ValueError, match="junk.parquet"):
        read_scores(tmp_path / "junk.parquet")


def test_candidates_round_trip(tmp_path, rng):
    scores = Table(score_batch(rng, 40))
    scores["RA"].unit = u.deg
    provenance = standard_provenance(
        models=[("OU-66", "ab" * 32), ("OU-200", "cd" * 32)], store="/data/survey.zarr",
        command="lensengine run --tiles /data/survey.zarr --threshold 0.5 " * 3,
        extra={"SWVER": ("lensengine 0.1.0", "software version")})
    path = tmp_path / "cands.fits"
    out = write_candidates(scores, path, threshold=0.5, provenance=provenance)
    expected = np.sort(scores["P_ENSEMBLE"][scores["P_ENSEMBLE"] >= 0.5])[::-1]
    assert len(out) == len(expected)
    cat = read_catalog(path)
    np.testing.assert_allclose(cat["P_ENSEMBLE"], expected)
    np.testing.assert_array_equal(cat["RANK"], np.arange(1, len(expected) + 1))
    assert cat["RA"].unit == u.deg and cat["DEC"].unit == u.deg
    assert cat["P_OU_66"].dtype == np.float32
    assert cat["NAME"][0].startswith("LENS J")
    assert cat["RA"].info.description == "right ascension (ICRS)"
    assert cat.meta["SHA1"][0] == "ab" * 32 and cat.meta["SWVER"] == ("lensengine 0.1.0", "software version")
    assert cat.meta["CMDLINE"][0].startswith("lensengine run") and cat.meta["MODEL2"][0] == "OU-200"
    assert cat.meta["SOFTWARE"][0].startswith("lensengine ") and cat.meta["STORE"][0] == "/data/survey.zarr"
    assert cat.meta["THRESH"][0] == 0.5 and cat.meta["NCAND"][0] == len(expected) and cat.meta["NSCORED"][0] == 40
    header = fits.getheader(path, 1)
    assert all(len(k) <= 8 for k in header)
    assert list(tmp_path.glob(".cands*")) == []
    with pytest.raises(ValueError, match="8 characters"):
        write_candidates(scores, tmp_path / "x.fits", threshold=0.5, provenance={"SOFTWARES": ("x", "y")})
    with pytest.raises(ValueError, match="scalar"):
        write_candidates(scores, tmp_path / "x.fits", threshold=0.5, provenance={"MODELS": ({"a": 1}, "y")})
    assert not (tmp_path / "x.fits").exists()


def test_iau_names_truncate():
    assert iau_name([146.736167], [10.114667]) == ["LENS J094656.68+100652.8"]
    assert iau_name([0.0], [-0.05]) == ["LENS J000000.00-000300.0"]
    assert iau_name([359.99999], [-89.99999]) == ["LENS J235959.99-895959.9"]


def test_crossmatch_and_cli(tmp_path, rng, cli_root):
    scores = Table(score_batch(rng, 20))
    scores["P_ENSEMBLE"][:3] = [0.99, 0.98, 0.97]
    path = tmp_path / "c.fits"
    cat = write_candidates(scores, path, threshold=0.9, provenance={})
    known = Table({"name": ["Jackpot", "far away"], "RA": [cat["RA"][1].value + 0.5 / 3600, 10.0],
                   "DEC": [cat["DEC"][1].value, 10.0], "zlens": [0.222, 0.5]})
    known.write(tmp_path / "known.csv")
    matched = crossmatch_known(read_catalog(path), tmp_path / "known.csv", radius_arcsec=2.0)
    assert list(matched["KNOWN_LENS"]) == ["", "Jackpot", ""][: len(matched)] + [""] * (len(matched) - 3)
    assert matched["KNOWN_SEP"][1].to_value(u.arcsec) == pytest.approx(0.5 * np.cos(np.radians(cat["DEC"][1].value)),
                                                                        rel=1e-3)
    result = CliRunner().invoke(cli_root, ["catalog", "crossmatch", str(path), str(tmp_path / "known.csv"),
                                           "--out", str(tmp_path / "m.fits")])
    assert result.exit_code == 0, result.output
    assert "1 of" in result.output
    again = read_catalog(tmp_path / "m.fits")
    assert again["KNOWN_LENS"][1] == "Jackpot" and again.meta["NKNOWN"][0] == 1
    info = CliRunner().invoke(cli_root, ["catalog", "info", str(tmp_path / "m.fits")])
    assert info.exit_code == 0 and "KNOWN_LENS" in info.output and "THRESH" in info.output
    with ScoreTableWriter(tmp_path / "s.parquet") as w:
        w.write(score_batch(rng, 4))
    info = CliRunner().invoke(cli_root, ["catalog", "info", str(tmp_path / "s.parquet")])
    assert info.exit_code == 0 and "4 rows" in info.output
    bad = CliRunner().invoke(cli_root, ["catalog", "info", str(tmp_path / "known.csv")])
    assert bad.exit_code == 2


def test_crossmatch_cli_with_lenscat_and_a_missing_list(tmp_path, rng, cli_root):
    from lensengine.catalogs.crossmatch import lenscat_file

    scores = Table(score_batch(rng, 6))
    scores["P_ENSEMBLE"][:2] = [0.99, 0.98]
    path = tmp_path / "c.fits"
    write_candidates(scores, path, threshold=0.9, provenance={})
    missing = CliRunner().invoke(cli_root, ["catalog", "crossmatch", str(path), str(tmp_path / "nope.csv")])
    assert missing.exit_code == 2 and "nope.csv is not a file" in missing.output
    try:
        _, version = lenscat_file()
    except ValueError as exc:
        pytest.skip(f"lenscat not installed: {exc}")
    result = CliRunner().invoke(cli_root, ["catalog", "crossmatch", str(path), "lenscat", "--json"])
    assert result.exit_code == 0, result.output
    again = read_catalog(path)
    assert "KNOWN_LENS" in again.colnames and again.meta["KNOWNCAT"][0] == f"lenscat {version}"
