"""The candidate gallery: display stretches, the PNG writer, the page's data, known lenses, grade import."""

from __future__ import annotations

import json
import struct
import zlib

import numpy as np
import pytest
from click.testing import CliRunner

from lensengine.plugins import _gallery_images as I


def _cli():
    from lensengine.engine.cli import _register_plugin_commands, cli

    _register_plugin_commands()
    return cli


def _lens_vis(rng, *, arc_amp=6.0, arc_radius=8.0, noise=1.0, size=200):
    """A bright round galaxy (exponential profile) with a thin 120-degree arc of ``arc_amp`` sigma, plus noise.

    Returns the image, the radius and the angle (degrees) of every pixel from the centre.
    """
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    r, angle = np.hypot(xx, yy), np.degrees(np.arctan2(yy, xx))
    galaxy = 400.0 * np.exp(-r / 3.0)
    arc = arc_amp * np.exp(-0.5 * ((r - arc_radius) / 0.8) ** 2) * (np.abs(angle - 90) < 60)
    return galaxy + arc + rng.normal(0, noise, (size, size)), r, angle


def make_gallery_inputs(tmp_path, n=12, seed=3, explain_png=True):
    """A tiny store (``n`` lens-like cutouts, chunks of 8) and a catalogue of all of them; returns paths.

    Scores: P_OU_66 falls with the row, P_OU_200 rises, the ensemble is their mean; row 2 is flagged; every
    row has an OU-T-SNE cell; row 0 carries an EXPLAIN figure when ``explain_png``.
    """
    from astropy.table import Table

    from lensengine.catalogs.catalog import standard_provenance, write_candidates
    from lensengine.catalogs.flags import Flag, describe
    from lensengine.catalogs.store import CutoutBatch, SurveyStore

    rng = np.random.default_rng(seed)
    vis = np.stack([_lens_vis(rng)[0] for _ in range(n)]).astype(np.float32)
    nisp = rng.gamma(2.0, 5.0, (n, 3, 66, 66)).astype(np.float32)
    store = tmp_path / "tiny.zarr"
    s = SurveyStore.create(store, survey="gallery test", chunk_size=8)
    ra = 150.0 + 0.01 * np.arange(n)
    dec = np.full(n, 2.0)
    s.append("T0", CutoutBatch(object_id=np.arange(n, dtype=np.int64) + 500, ra=ra, dec=dec, vis=vis, nisp=nisp,
                               flags=np.zeros(n, np.uint32)))
    s.finish()
    flags = np.zeros(n, np.uint32)
    flags[2] = int(list(Flag)[0])
    p66 = np.linspace(0.99, 0.6, n).astype(np.float32)
    p200 = np.linspace(0.55, 0.95, n).astype(np.float32)
    scores = Table({"OBJECT_ID": np.arange(n, dtype=np.int64) + 500, "TILE": np.array(["T0"] * n),
                    "CHUNK": (np.arange(n) // 8).astype(np.int32), "ROW": np.arange(n, dtype=np.int64),
                    "RA": ra, "DEC": dec, "P_OU_66": p66, "P_OU_200": p200,
                    "P_ENSEMBLE": ((p66 + p200) / 2).astype(np.float32),
                    "TSNE_CELL": np.arange(n, dtype=np.int32) % 5, "FLAGS": flags,
                    "FLAG_TEXT": np.array([describe(int(f)) for f in flags])})
    catalog = tmp_path / "candidates.fits"
    write_candidates(scores, catalog, threshold=0.5, provenance=standard_provenance(store=store))
    if explain_png:
        from lensengine.catalogs.catalog import read_catalog, write_table

        cat = read_catalog(catalog)
        (tmp_path / "candidates_explain" / "OU_66").mkdir(parents=True)
        I.write_png(tmp_path / "candidates_explain" / "OU_66" / f"{int(cat['OBJECT_ID'][0])}_gradcam.png",
                    np.linspace(0, 1, 64).reshape(8, 8))
        cat["EXPLAIN"] = [f"candidates_explain/OU_66/{int(cat['OBJECT_ID'][0])}_gradcam.png"] + [""] * (n - 1)
        write_table(cat, catalog)
    return store, catalog


def page_data(index):
    """The JSON the page embeds (gallery settings and rows)."""
    text = index.read_text(encoding="utf-8")
    start = text.index('<script id="gallery-data" type="application/json">') + len(
        '<script id="gallery-data" type="application/json">')
    return json.loads(text[start:text.index("</script>", start)].replace("<\\/", "</"))


def _read_png(path):
    """Decode the PNGs write_png makes (8-bit grey or RGB, Sub filter) back to an array, top row first."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    w, h, depth, color = struct.unpack(">IIBB", data[16:26])
    pos, idat = 8, b""
    while pos < len(data):
        length = struct.unpack(">I", data[pos:pos + 4])[0]
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        assert zlib.crc32(kind + body) & 0xFFFFFFFF == struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])[0]
        if kind == b"IDAT":
            idat += body
        pos += 12 + length
    channels = 3 if color == 2 else 1
    raw = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(h, 1 + w * channels)
    assert depth == 8 and (raw[:, 0] == 1).all()
    rows = raw[:, 1:].reshape(h, w, channels).astype(np.int64)
    return (np.cumsum(rows, axis=1) % 256).astype(np.uint8).squeeze()


# --- stretches and PNG ---------------------------------------------------------------


def test_png_round_trip_grey_and_rgb(tmp_path, rng):
    grey = rng.uniform(0, 1, (13, 17))
    rgb = rng.uniform(0, 1, (9, 11, 3))
    n = I.write_png(tmp_path / "g.png", grey)
    I.write_png(tmp_path / "c.png", rgb)
    assert n == (tmp_path / "g.png").stat().st_size
    np.testing.assert_array_equal(_read_png(tmp_path / "g.png"), I.to_uint8(grey)[::-1])
    np.testing.assert_array_equal(_read_png(tmp_path / "c.png"), I.to_uint8(rgb)[::-1])
    with pytest.raises(ValueError, match="bad.png"):
        I.write_png(tmp_path / "bad.png", np.zeros((4, 4, 2)))


def test_lens_subtraction_removes_the_lens_light_and_keeps_the_arc(rng):
    img, r, angle = _lens_vis(rng, arc_amp=6.0, arc_radius=8.0)
    view = I.lens_subtracted(img)
    sky = np.median(view[r > 40])
    on_arc = view[(r > 7.5) & (r < 8.5) & (np.abs(angle - 90) < 50)].mean()
    off_arc = view[(r > 7.5) & (r < 8.5) & (np.abs(angle + 90) < 50)].mean()  # same radius, no arc
    between = view[(r > 11) & (r < 13)].mean()  # the galaxy is still ~10 sigma bright here
    assert on_arc - sky > 0.3, "a 6-sigma arc must stand out once the lens light is gone"
    assert abs(off_arc - sky) < 0.08 and abs(between - sky) < 0.08, "the smooth lens light must be gone"
    asinh = I.asinh_stretch(img)
    assert 0 <= asinh.min() and asinh.max() == 1.0
    assert asinh[(r > 11) & (r < 13)].mean() > asinh[r > 40].mean() + 0.2  # the envelope is visible in asinh


def test_lens_light_model_follows_an_elongated_offset_galaxy(rng):
    yy, xx = np.mgrid[:120, :120].astype(float)
    dx, dy = xx - 70.0, yy - 52.0  # 1" right of and 0.8" below the centre
    c, s = np.cos(np.radians(30)), np.sin(np.radians(30))
    major, minor = dx * c + dy * s, -dx * s + dy * c
    galaxy = 300.0 * np.exp(-np.sqrt(major ** 2 * 0.5 + minor ** 2 / 0.5) / 4.0)
    img = galaxy + rng.normal(0, 1.0, galaxy.shape)
    resid = img - I.lens_light_model(img)
    bright = galaxy > 5.0
    assert np.abs(resid[bright]).mean() < 0.25 * np.abs(galaxy[bright] - galaxy[bright].mean()).mean()
    assert np.abs(resid[bright].mean()) < 0.05 * galaxy[bright].mean()  # no overall bias


def test_asinh_stretch_handles_nan_and_constant_images():
    img = np.ones((20, 20))
    img[3, 3] = np.nan
    out = I.asinh_stretch(img)
    assert np.isfinite(out).all() and out[3, 3] == 0.0
    assert np.isfinite(I.lens_subtracted(np.full((30, 30), 5.0))).all()


def test_lupton_rgb_keeps_colour_when_saturated():
    h = np.zeros((10, 10))
    h[5, 5] = 1000.0
    out = I.lupton_rgb(h, h / 2, h / 4)
    assert out.shape == (10, 10, 3) and out.max() <= 1.0 and out.min() >= 0.0
    r, g, b = out[5, 5]
    assert r == pytest.approx(1.0) and g == pytest.approx(0.5) and b == pytest.approx(0.25)
    assert out[..., 2][0, 0] == 0 and I.lupton_rgb(None, h, None)[5, 5, 0] == 0


# --- building the gallery ---------------------------------------------------------------


def test_gallery_top_sort_views_and_explain(tmp_path):
    store, catalog = make_gallery_inputs(tmp_path)
    result = CliRunner().invoke(_cli(), ["gallery", str(catalog), "--tiles", str(store), "--out",
                                         str(tmp_path / "g"), "--top", "5", "--sort", "P_OU_200"])
    assert result.exit_code == 0, result.output
    assert "5 of 12 candidates" in result.output and "kB per candidate" in result.output
    data = page_data(tmp_path / "g" / "index.html")
    rows = data["rows"]
    assert [r["oid"] for r in rows] == [511, 510, 509, 508, 507]  # highest P_OU_200 first
    assert data["gallery"]["default_sort"] == "P_OU_200"
    assert data["gallery"]["score_columns"] == ["P_OU_66", "P_OU_200", "P_ENSEMBLE"]
    for r in rows:
        for view in ("vis", "hp", "rgb"):
            png = tmp_path / "g" / r["img"][view]
            assert png.is_file() and png.stat().st_size > 100
        assert r["tsne"] == (r["oid"] - 500) % 5
    assert _read_png(tmp_path / "g" / rows[0]["img"]["vis"]).shape == (120, 120)  # central 12" of VIS
    assert _read_png(tmp_path / "g" / rows[0]["img"]["rgb"]).shape == (40, 40, 3)

    full = CliRunner().invoke(_cli(), ["gallery", "build", str(catalog), "--tiles", str(store), "--out",
                                       str(tmp_path / "g")])  # a rebuild of the same folder
    assert full.exit_code == 0, full.output
    rows = page_data(tmp_path / "g" / "index.html")["rows"]
    assert [r["rank"] for r in rows] == sorted(r["rank"] for r in rows) and len(rows) == 12
    flagged = [r for r in rows if r["flags"]]
    assert len(flagged) == 1 and flagged[0]["oid"] == 502 and flagged[0]["flag_text"]
    explained = [r for r in rows if r["explain"]]
    assert len(explained) == 1 and explained[0]["explain"][0][0] == "gradcam"
    assert (tmp_path / "g" / explained[0]["explain"][0][1]).is_file()
    assert len(list((tmp_path / "g" / "img").glob("*.png"))) == 36


def test_gallery_finds_cutouts_by_object_id_without_row_and_tile_columns(tmp_path):
    from lensengine.catalogs.catalog import read_catalog, write_table
    from lensengine.plugins.gallery import build_gallery

    store, catalog = make_gallery_inputs(tmp_path, n=4, explain_png=False)
    cat = read_catalog(catalog)
    cat.remove_columns(["ROW", "TILE"])
    cat = cat[::-1]  # not in store order
    write_table(cat, catalog)
    result = build_gallery(catalog, store, tmp_path / "g", sort="RANK")
    rows = page_data(result.index)["rows"]
    assert [r["tile"] for r in rows] == ["T0"] * 4
    first = _read_png(tmp_path / "g" / rows[0]["img"]["vis"])
    again = build_gallery(catalog, store, tmp_path / "g2", sort="RANK", top=1)
    assert np.array_equal(_read_png(tmp_path / "g2" / page_data(again.index)["rows"][0]["img"]["vis"]), first)
    from lensengine.catalogs.store import SurveyStore

    oid = rows[0]["oid"]
    vis = SurveyStore.open(store).read("T0", oid - 500, oid - 499).vis[0]
    expected = I.to_uint8(I.asinh_stretch(vis[40:160, 40:160]))[::-1]
    np.testing.assert_array_equal(first, expected)  # the picture of this very object


def test_gallery_refuses_a_foreign_folder_and_a_bad_sort(tmp_path):
    store, catalog = make_gallery_inputs(tmp_path, n=4, explain_png=False)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("x")
    bad = CliRunner().invoke(_cli(), ["gallery", str(catalog), "--tiles", str(store), "--out", str(tmp_path / "mine")])
    assert bad.exit_code == 2 and "not a lensengine gallery" in bad.output
    assert (tmp_path / "mine" / "thesis.tex").is_file()
    bad = CliRunner().invoke(_cli(), ["gallery", str(catalog), "--tiles", str(store), "--out", str(tmp_path / "g"),
                                      "--sort", "P_NOPE"])
    assert bad.exit_code == 2 and "P_NOPE" in bad.output


def test_gallery_known_lenses_from_a_list_and_from_lenscat(tmp_path):
    from lensengine.catalogs.crossmatch import crossmatch_known, lenscat_file
    from lensengine.plugins.gallery import build_gallery

    store, catalog = make_gallery_inputs(tmp_path, n=4, explain_png=False)
    (tmp_path / "known.csv").write_text("name,RA [deg],DEC [deg]\nJackpot,150.0200003,2.0000002\nFar,10.0,-5.0\n")
    result = build_gallery(catalog, store, tmp_path / "g", known=str(tmp_path / "known.csv"), known_radius=1.0)
    rows = {r["oid"]: r for r in page_data(result.index)["rows"]}
    assert result.n_known == 1 and rows[502]["known"] == "Jackpot" and rows[502]["known_sep"] < 0.01
    assert all(not rows[o]["known"] for o in (500, 501, 503))

    try:
        path, version = lenscat_file()
    except ValueError as exc:
        pytest.skip(f"lenscat not installed: {exc}")
    from astropy.table import Table

    first = Table.read(path, format="csv")[0]
    from lensengine.catalogs.catalog import read_catalog

    cat = read_catalog(catalog)
    cat["RA"][1] = float(first["RA [deg]"]) * cat["RA"].unit
    cat["DEC"][1] = float(first["DEC [deg]"]) * cat["DEC"].unit
    matched = crossmatch_known(cat, "lenscat", radius_arcsec=2.0)
    assert matched["KNOWN_LENS"][1] == str(first["name"])
    assert (matched["KNOWN_LENS"] != "").sum() == 1
    assert matched.meta["KNOWNCAT"][0] == f"lenscat {version}"


# --- grades ---------------------------------------------------------------


def _export(entries, **extra):
    return json.dumps({"format": "lensengine-grades", "version": 1, "catalog": "candidates.fits",
                       "exported": "2026-12-01T12:00:00.000Z", "grades": entries, **extra})


def test_import_grades_json_and_csv_write_the_grade_column(tmp_path):
    from lensengine.catalogs.catalog import read_catalog

    store, catalog = make_gallery_inputs(tmp_path, n=6, explain_png=False)
    before = read_catalog(catalog)
    grades = tmp_path / "g.json"
    grades.write_text(_export([{"tile": "T0", "object_id": 501, "grade": "A"},
                               {"tile": "T0", "object_id": 504, "grade": "x"},
                               {"tile": "T0", "object_id": 503, "grade": ""}]))
    result = CliRunner().invoke(_cli(), ["gallery", "import-grades", str(grades), str(catalog)])
    assert result.exit_code == 0, result.output
    assert "2 candidates graded (A 1, B 0, C 0, X 1)" in result.output
    after = read_catalog(catalog)
    grade = {int(o): str(g) for o, g in zip(after["OBJECT_ID"], after["GRADE"])}
    assert grade == {500: "", 501: "A", 502: "", 503: "", 504: "X", 505: ""}
    assert after.meta["NGRADED"][0] == 2 and after.meta["GRADEFIL"][0] == "g.json"
    assert len(after.meta["GRADESHA"][0]) == 64 and after.meta["GRADEEXP"][0] == "2026-12-01T12:00:00"
    assert after.meta["THRESH"] == before.meta["THRESH"] and list(after["RANK"]) == list(before["RANK"])
    assert "visual grade" in after["GRADE"].info.description

    csv_path = tmp_path / "g.csv"
    csv_path.write_text("TILE,OBJECT_ID,NAME,GRADE,GRADED\nT0,500,\"LENS J1, odd\",B,2026\nT0,505,x,C,2026\n")
    out = tmp_path / "graded.fits"
    result = CliRunner().invoke(_cli(), ["gallery", "import-grades", str(csv_path), str(catalog), "--out", str(out)])
    assert result.exit_code == 0, result.output
    again = read_catalog(out)
    assert {int(o): str(g) for o, g in zip(again["OBJECT_ID"], again["GRADE"]) if g} == {500: "B", 505: "C"}


@pytest.mark.parametrize("entries, message", [
    ([{"tile": "T0", "object_id": 501, "grade": "D"}], "grade 'D' is not one of A, B, C, X"),
    ([{"tile": "T0", "object_id": 999, "grade": "A"}], "not in"),
    ([{"tile": "T0", "object_id": "five", "grade": "A"}], "not an integer"),
])
def test_import_grades_rejects_bad_files_and_writes_nothing(tmp_path, entries, message):
    store, catalog = make_gallery_inputs(tmp_path, n=3, explain_png=False)
    before = catalog.read_bytes()
    grades = tmp_path / "g.json"
    grades.write_text(_export(entries))
    result = CliRunner().invoke(_cli(), ["gallery", "import-grades", str(grades), str(catalog)])
    assert result.exit_code == 2 and message in result.output and "g.json" in result.output
    assert catalog.read_bytes() == before
    grades.write_text('{"grades": []}')
    result = CliRunner().invoke(_cli(), ["gallery", "import-grades", str(grades), str(catalog)])
    assert result.exit_code == 2 and "not a lensengine grades export" in result.output
