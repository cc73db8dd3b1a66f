"""``store from-fits`` writes a store whole or not at all (issue 16).

Before: a failed ingestion left an empty store that blocked the next try ("exists: pass --overwrite") and
that ``store validate`` called valid.  Now a failure leaves nothing (local: the store is built in a hidden
sibling and renamed into place), a failed ``--overwrite`` keeps the old store, a failed ``--append``
removes its tile, a killed build's leftovers are cleaned up by the next one, and a store still marked
``incomplete`` (what a killed write to object storage leaves) is refused by open and by validate.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from click.testing import CliRunner

from lensengine.catalogs.store import IncompleteStoreError, SurveyStore


def _header(n: int, scale: float) -> fits.Header:
    return fits.Header({"CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CRVAL1": 150.1, "CRVAL2": 2.2,
                        "CRPIX1": (n + 1) / 2, "CRPIX2": (n + 1) / 2, "CDELT1": -scale / 3600,
                        "CDELT2": scale / 3600, "CUNIT1": "deg", "CUNIT2": "deg"})


def _cutouts(folder: Path, n: int, *, broken_last: bool = False, seed: int = 0) -> Path:
    """``n`` cutout files (VIS and J, with WCS); with ``broken_last`` the last one is not FITS at all."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        path = folder / f"c{i:02d}.fits"
        if broken_last and i == n - 1:
            path.write_bytes(b"SIMPLE  = this is not a FITS file" * 3)
            continue
        fits.HDUList([fits.PrimaryHDU(header=fits.Header({"OBJID": 100 + i})),
                      fits.ImageHDU(rng.gamma(2.0, 5.0, (200, 200)).astype(np.float32), header=_header(200, 0.1),
                                    name="VIS_FLUX"),
                      fits.ImageHDU(rng.gamma(2.0, 5.0, (66, 66)).astype(np.float32), header=_header(66, 0.3),
                                    name="NIR_J_FLUX")]).writeto(path)
    return folder


def _from_fits(cli_root, inputs: Path, out: Path, *extra: str):
    # --chunk-size 1: one cutout per ingestion task and per append, so a late failure follows committed data
    return CliRunner().invoke(cli_root, ["store", "from-fits", str(inputs), "--out", str(out), "--chunk-size", "1",
                                         *extra])


def _siblings(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name != out.name and out.name in p.name)


def test_a_failed_ingestion_leaves_nothing_and_the_next_try_succeeds(tmp_path, cli_root):
    out = tmp_path / "s.zarr"
    bad = _cutouts(tmp_path / "bad", 3, broken_last=True)
    result = _from_fits(cli_root, bad, out)
    assert result.exit_code == 2, result.output
    assert not out.exists() and _siblings(out) == []  # no store, no hidden partial folder
    validate = CliRunner().invoke(cli_root, ["store", "validate", str(out)])
    assert validate.exit_code == 2 and "found nothing" in validate.output
    # the next try needs no --overwrite
    good = _cutouts(tmp_path / "good", 3)
    result = _from_fits(cli_root, good, out)
    assert result.exit_code == 0, result.output
    assert SurveyStore.open(out).total_cutouts() == 3 and _siblings(out) == []


def test_a_failed_overwrite_keeps_the_old_store_and_a_failed_append_removes_its_tile(tmp_path, cli_root):
    out = tmp_path / "s.zarr"
    assert _from_fits(cli_root, _cutouts(tmp_path / "good", 2), out).exit_code == 0
    before = SurveyStore.open(out).read_chunk("fits", 1).vis
    bad = _cutouts(tmp_path / "bad", 3, broken_last=True, seed=1)
    result = _from_fits(cli_root, bad, out, "--overwrite")
    assert result.exit_code == 2, result.output
    kept = SurveyStore.open(out)
    assert kept.tiles == ["fits"] and kept.total_cutouts() == 2
    np.testing.assert_array_equal(kept.read_chunk("fits", 1).vis, before)
    assert _siblings(out) == []

    result = _from_fits(cli_root, bad, out, "--append", "--tile", "more")
    assert result.exit_code == 2, result.output
    assert SurveyStore.open(out).tiles == ["fits"]  # the half-written tile is gone
    assert CliRunner().invoke(cli_root, ["store", "validate", str(out)]).exit_code == 0

    result = _from_fits(cli_root, _cutouts(tmp_path / "new", 2, seed=2), out, "--overwrite")
    assert result.exit_code == 0, result.output
    assert SurveyStore.open(out).read_chunk("fits", 0).object_id.tolist() == [100]
    assert _siblings(out) == []


def test_a_killed_build_is_cleaned_up_and_a_marked_store_is_refused(tmp_path, cli_root):
    out = tmp_path / "s.zarr"
    # what a build killed part-way leaves on a local disk: a hidden sibling of a process that is gone
    dead = subprocess.Popen(["true"])
    dead.wait()
    leftover = tmp_path / f".s.zarr.partial-{dead.pid}"
    SurveyStore.create(leftover, survey="killed", incomplete=True)
    good = _cutouts(tmp_path / "good", 1)
    assert _from_fits(cli_root, good, out).exit_code == 0
    assert not leftover.exists() and _siblings(out) == []

    # what a killed write leaves at a URL (no rename there): a store still carrying the incomplete mark
    marked = tmp_path / "marked.zarr"
    SurveyStore.create(marked, survey="cut off", incomplete=True)
    with pytest.raises(IncompleteStoreError, match="unfinished store"):
        SurveyStore.open(marked)
    validate = CliRunner().invoke(cli_root, ["store", "validate", str(marked), "--json"])
    assert validate.exit_code == 1, validate.output
    assert [p["kind"] for p in json.loads(validate.output)] == ["incomplete-store"]
    info = CliRunner().invoke(cli_root, ["store", "info", str(marked)])
    assert info.exit_code == 2 and "unfinished store" in info.output
    # ... which the next write replaces without --overwrite; a complete store still needs it
    assert _from_fits(cli_root, good, marked).exit_code == 0
    assert "incomplete" not in SurveyStore.open(marked).attrs
    again = _from_fits(cli_root, good, marked)
    assert again.exit_code == 2 and "--overwrite" in again.output


def test_a_build_of_a_live_process_is_left_alone(tmp_path):
    """Two builds beside each other: the second must not delete the first's folder while it runs."""
    busy = tmp_path / f".s.zarr.partial-{os.getppid()}"
    busy.mkdir()
    with SurveyStore.build(tmp_path / "s.zarr", survey="x") as store:
        assert store.path != tmp_path / "s.zarr"  # built aside, renamed at the end
    assert busy.exists() and (tmp_path / "s.zarr" / "zarr.json").is_file()
