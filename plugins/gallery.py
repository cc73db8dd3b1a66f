"""Built-in plugin: ``lensengine gallery``, a static HTML page for looking at and grading candidates.

Every lens search ends with people looking at the candidates and grading them (A sure, B probable, C possible,
X not a lens, as in the Euclid Q1 and Space Warps gradings).  ``gallery build`` (or just ``gallery CATALOG``)
turns a candidate catalogue and its survey store into a folder that opens from disk in any browser, with no
server and no network: per candidate the VIS cutout under an arc-friendly asinh stretch, a lens-light-
subtracted VIS view, a Lupton colour composite of NISP H, J, Y, every model's score,
the ensemble, the decoded flags, the OU-T-SNE cell, the known-lens match and the ``--explain-top`` maps.
Grades typed in the browser are exported as JSON or CSV and written back into the catalogue's ``GRADE``
column by ``gallery import-grades``.  Documentation: docs/gallery.md.
"""

from __future__ import annotations

import csv
import datetime as _dt
import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np

from lensengine.engine.models import file_sha256
from lensengine.engine.options import echo_json, json_option, tiles_option
from lensengine.plugins import hookimpl

__all__ = ["build_gallery", "import_grades", "read_grades", "GalleryResult", "GRADES", "gallery_group"]

#: the visual grades (Euclid Q1 / Space Warps): sure lens, probable, possible, not a lens
GRADES = ("A", "B", "C", "X")
#: marks a folder this command wrote, so a rebuild may replace its images and nothing else
_MARKER = ".lensengine-gallery"
#: side of the displayed field in arcsec (the cutout centre); VIS is 0.1"/px and NISP 0.3"/px
DEFAULT_FIELD = 12.0
_VIEWS = (("vis", "VIS asinh"), ("hp", "VIS \u2212 lens light"), ("rgb", "NISP H J Y"))


@dataclass
class GalleryResult:
    """What :func:`build_gallery` wrote."""

    index: Path
    n_candidates: int
    n_catalog: int
    bytes_total: int
    n_known: int

    @property
    def bytes_per_candidate(self) -> float:
        return self.bytes_total / max(self.n_candidates, 1)


def _plain(values) -> np.ndarray:
    return np.asarray(getattr(values, "value", values))


def _finite_or_none(v):
    v = float(v)
    return v if math.isfinite(v) else None


def _sort_order(table, col: str) -> np.ndarray:
    """Row order for ``--sort``: RANK and NAME ascending, any other column descending; NaN last."""
    values = _plain(table[col])
    if col in ("RANK", "NAME") or values.dtype.kind in "USO":
        return np.argsort(values, kind="stable")
    v = values.astype(np.float64)
    return np.lexsort((np.arange(len(v)), -np.nan_to_num(v, nan=-np.inf)))


def _crop(img: np.ndarray, pixels: int) -> np.ndarray:
    s = img.shape[-1]
    pixels = min(max(pixels, 1), s)
    a = (s - pixels) // 2
    return img[..., a:a + pixels, a:a + pixels]


def _store_rows(table, store, catalog_path: Path) -> list[tuple[str, int]]:
    """(tile, row) of every catalogue row in the store; ROW when present, else the object ID looked up."""
    tiles = [str(t) for t in _plain(table["TILE"])] if "TILE" in table.colnames else [store.tiles[0]] * len(table)
    for t in sorted(set(tiles)):
        if t not in store.tiles:
            raise ValueError(f"{catalog_path}: tile {t!r} is not in the store {store.path} (tiles: "
                             f"{', '.join(store.tiles)}); is --tiles the store this catalogue was made from?")
    ids = _plain(table["OBJECT_ID"]).astype(np.int64)
    if "ROW" in table.colnames:
        rows = _plain(table["ROW"]).astype(np.int64)
    else:
        rows = np.full(len(table), -1, np.int64)
        for t in sorted(set(tiles)):
            index = store.read_index(t, 0, store.n_cutouts(t))
            where = {int(oid): i for i, oid in enumerate(index["object_id"])}
            for i in np.flatnonzero(np.array(tiles) == t):
                rows[i] = where.get(int(ids[i]), -1)
    out = []
    for i, (t, r) in enumerate(zip(tiles, rows)):
        if not 0 <= r < store.n_cutouts(t):
            raise ValueError(f"{catalog_path}: candidate {i + 1} (object {ids[i]}) is not in tile {t!r} of "
                             f"{store.path}")
        out.append((t, int(r)))
    return out


def _runs(members: list[int], places, gap: int = 32) -> list[list[int]]:
    """Split one chunk's candidates into runs of nearby rows, so a read never spans a long unused stretch."""
    members = sorted(members, key=lambda i: places[i][1])
    runs = [[members[0]]]
    for i in members[1:]:
        if places[i][1] - places[runs[-1][-1]][1] > gap:
            runs.append([])
        runs[-1].append(i)
    return runs


def _render_images(store, places, out_dir: Path, field_arcsec: float) -> tuple[list[dict], int]:
    """Write the three views of each candidate; ``[{view: relative path}]`` in candidate order, bytes written.

    Cutouts are read chunk by chunk (one read per store chunk holding candidates) so a large gallery decodes
    each chunk once.  A chunk that cannot be read leaves its candidates without images (the page says
    "no data") instead of stopping the gallery.
    """
    from lensengine.catalogs.store import ChunkReadError
    from lensengine.catalogs.vocabulary import PIXEL_SCALE
    from lensengine.plugins import _gallery_images as I

    img_dir = out_dir / "img"
    img_dir.mkdir(parents=True, exist_ok=True)
    images: list[dict] = [{} for _ in places]
    written = 0
    groups: dict[tuple[str, int], list[int]] = {}
    for i, (tile, row) in enumerate(places):
        groups.setdefault((tile, row // store.chunk_size), []).append(i)
    runs = [(tile, part) for (tile, _), members in sorted(groups.items()) for part in _runs(members, places)]
    vis_px = int(round(field_arcsec / PIXEL_SCALE["VIS"]))
    nisp_px = int(round(field_arcsec / PIXEL_SCALE["H"]))
    for tile, members in runs:
        lo = min(places[i][1] for i in members)
        hi = max(places[i][1] for i in members) + 1
        try:
            batch = store.read(tile, lo, hi)
        except ChunkReadError:
            continue
        bands = batch.bands()
        for i in members:
            k = places[i][1] - lo
            vis = bands.get("VIS")
            if vis is not None:
                v = _crop(vis[k], vis_px)
                written += I.write_png(img_dir / f"c{i:05d}_vis.png", I.asinh_stretch(v))
                written += I.write_png(img_dir / f"c{i:05d}_hp.png", I.lens_subtracted(v))
                images[i]["vis"] = f"img/c{i:05d}_vis.png"
                images[i]["hp"] = f"img/c{i:05d}_hp.png"
            planes = [bands.get(b) for b in ("H", "J", "Y")]
            if any(p is not None for p in planes):
                rgb = I.lupton_rgb(*[None if p is None else _crop(p[k], nisp_px) for p in planes])
                written += I.write_png(img_dir / f"c{i:05d}_rgb.png", rgb)
                images[i]["rgb"] = f"img/c{i:05d}_rgb.png"
    return images, written


def _copy_explain(table, catalog_path: Path, out_dir: Path) -> tuple[list[list], int]:
    """Copy the ``--explain-top`` figures named in the EXPLAIN column into the gallery; ``[[method, path]]``."""
    found: list[list] = [[] for _ in range(len(table))]
    if "EXPLAIN" not in table.colnames:
        return found, 0
    dest = out_dir / "explain"
    written = 0
    for i, cell in enumerate(_plain(table["EXPLAIN"])):
        for rel in [p for p in str(cell).split(";") if p.strip()]:
            src = catalog_path.parent / rel.strip()
            if src.suffix.lower() != ".png" or not src.is_file():
                continue
            dest.mkdir(parents=True, exist_ok=True)
            target = dest / f"c{i:05d}_{src.name}"
            shutil.copyfile(src, target)
            written += target.stat().st_size
            method = src.stem.split("_", 1)[1] if "_" in src.stem else src.stem
            found[i].append([method, f"explain/{target.name}"])
    return found, written


def _prepare_out(out_dir: Path) -> None:
    """Make ``out_dir`` ready: empty, or a previous gallery whose images and page are replaced."""
    if out_dir.exists() and any(out_dir.iterdir()):
        if not (out_dir / _MARKER).is_file():
            raise ValueError(f"{out_dir} exists and is not a lensengine gallery (no {_MARKER}): choose a new or "
                             f"empty folder")
        for sub in ("img", "explain"):
            shutil.rmtree(out_dir / sub, ignore_errors=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / _MARKER).write_text("written by lensengine gallery; a rebuild replaces img/, explain/ and "
                                   "index.html\n")


def build_gallery(catalog_path, store_path, out_dir, *, top: int | None = None, sort: str | None = None,
                  known: str | None = None, known_radius: float = 2.0,
                  field_arcsec: float = DEFAULT_FIELD) -> GalleryResult:
    """Write ``out_dir/index.html`` and its images for a candidate catalogue; see the module docstring.

    ``sort`` (default: the catalogue's SCORECOL, else RANK) orders the page and, with ``top``, picks the
    candidates shown.  ``known`` is ``"lenscat"`` or a FITS/CSV list of known lenses to cross-match within
    ``known_radius`` arcsec (the catalogue's own KNOWN_LENS column is used otherwise).  ``field_arcsec`` is
    the side of the central field shown.
    """
    from lensengine.catalogs.catalog import read_catalog
    from lensengine.catalogs.flags import describe
    from lensengine.catalogs.store import SurveyStore
    from lensengine.plugins._gallery_page import render_page

    catalog_path, out_dir = Path(catalog_path), Path(out_dir)
    table = read_catalog(catalog_path)
    n_catalog = len(table)
    scorecol = str(table.meta.get("SCORECOL", ("P_ENSEMBLE", ""))[0])
    if scorecol not in table.colnames:
        scorecol = "P_ENSEMBLE" if "P_ENSEMBLE" in table.colnames else "RANK"
    sort = sort or scorecol
    if sort not in table.colnames:
        raise ValueError(f"--sort {sort}: no such column in {catalog_path} (columns: {', '.join(table.colnames)})")
    if known:
        from lensengine.catalogs.crossmatch import crossmatch_known

        table = crossmatch_known(table, known, radius_arcsec=known_radius)
    table = table[_sort_order(table, sort)]
    if top is not None:
        table = table[:top]
    store = SurveyStore.open(store_path)
    places = _store_rows(table, store, catalog_path)
    _prepare_out(out_dir)
    images, written = _render_images(store, places, out_dir, field_arcsec)
    explain, explain_bytes = _copy_explain(table, catalog_path, out_dir)

    score_cols = [c for c in table.colnames if c.startswith("P_") and c != "P_ENSEMBLE"]
    if "P_ENSEMBLE" in table.colnames:
        score_cols.append("P_ENSEMBLE")
    flags = _plain(table["FLAGS"]).astype(np.int64)
    flag_text = ([str(t) for t in _plain(table["FLAG_TEXT"])] if "FLAG_TEXT" in table.colnames
                 else [describe(int(f)) for f in flags])
    known_names = [str(k) for k in _plain(table["KNOWN_LENS"])] if "KNOWN_LENS" in table.colnames else []
    known_sep = _plain(table["KNOWN_SEP"]) if "KNOWN_SEP" in table.colnames else None
    cells = _plain(table["TSNE_CELL"]) if "TSNE_CELL" in table.colnames else None
    rows = []
    for i in range(len(table)):
        rows.append({
            "k": f"{places[i][0]}:{int(table['OBJECT_ID'][i])}", "tile": places[i][0],
            "oid": int(table["OBJECT_ID"][i]), "name": str(table["NAME"][i]), "rank": int(table["RANK"][i]),
            "ra": _finite_or_none(_plain(table["RA"])[i]), "dec": _finite_or_none(_plain(table["DEC"])[i]),
            "s": {c: _finite_or_none(_plain(table[c])[i]) for c in score_cols},
            "flags": int(flags[i]), "flag_text": flag_text[i] if flags[i] else "",
            "known": known_names[i] if known_names else "",
            "known_sep": _finite_or_none(known_sep[i]) if known_sep is not None else None,
            "tsne": int(cells[i]) if cells is not None and int(cells[i]) >= 0 else None,
            "img": images[i], "explain": explain[i],
        })
    sha = file_sha256(catalog_path)
    run_id = str(table.meta.get("RUNID", (sha[:16], ""))[0])
    labels = {c: ("ensemble" if c == "P_ENSEMBLE" else c[2:].replace("_", "-")) for c in score_cols}
    gallery = {"catalog": catalog_path.name, "catalog_sha256": sha, "id": f"{catalog_path.name}:{run_id}",
               "stem": catalog_path.stem, "score_columns": score_cols, "labels": labels,
               "ensemble": "P_ENSEMBLE", "filter_column": scorecol if scorecol.startswith("P_") else
               (score_cols[-1] if score_cols else "P_ENSEMBLE"),
               "default_sort": sort if sort in ("RANK", "NAME", "FLAGS") or sort in score_cols else "RANK",
               "views": [list(v) for v in _VIEWS], "field_arcsec": field_arcsec}
    n_known = sum(1 for r in rows if r["known"])
    shown = f"top {len(rows)} by {sort}" if top is not None else f"all {len(rows)}"
    matched = f" ({table.meta['KNOWNCAT'][0]}, {known_radius:g}\u2033)" if known else ""
    built = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M")
    meta = (f"{catalog_path.name}: {shown} of {n_catalog} candidates; store {store.path}; "
            f"{n_known} match a known lens{matched}; built {built} UTC")
    views_help = (f"Views: central {field_arcsec:g}\u2033; VIS with a noise-scaled asinh stretch; VIS minus a "
                  f"smooth elliptical model of the central galaxy (arcs stay); NISP H, J, Y as red, green, blue "
                  f"(Lupton asinh). North up if the store's cutouts are.")
    page = render_page(gallery, rows, title=f"lensengine candidates: {catalog_path.name}", meta=meta,
                       views_help=views_help, filter_label=labels.get(gallery["filter_column"], "score"))
    index = out_dir / "index.html"
    tmp = out_dir / ".index.html.tmp"
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(index)
    total = written + explain_bytes + index.stat().st_size
    return GalleryResult(index=index, n_candidates=len(rows), n_catalog=n_catalog, bytes_total=total,
                         n_known=n_known)


# --- grades ---------------------------------------------------------------------------


def read_grades(path) -> tuple[list[dict], dict]:
    """Grades exported by the gallery: ``([{tile, object_id, grade}], info)`` from JSON or CSV.

    ``info`` holds what the file says about itself (catalogue, export date).  A grade outside A, B, C, X, a
    missing object ID or an unreadable file is a ValueError naming the file and the entry.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot read the grades file: {exc}") from exc
    info: dict = {}
    if text.lstrip().startswith("{"):
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from exc
        if doc.get("format") != "lensengine-grades" or not isinstance(doc.get("grades"), list):
            raise ValueError(f"{path}: not a lensengine grades export (expected format 'lensengine-grades' "
                             f"and a 'grades' list)")
        entries = doc["grades"]
        info = {k: doc.get(k) for k in ("catalog", "catalog_sha256", "exported")}
        where = "grades[{}]"
    else:
        entries = [{k.lower(): v for k, v in row.items() if k} for row in csv.DictReader(text.splitlines())]
        where = "line {}"
    out = []
    for n, entry in enumerate(entries):
        label = where.format(n + 2 if where.startswith("line") else n)
        if not isinstance(entry, dict):
            raise ValueError(f"{path}: {label} is not an object")
        grade = str(entry.get("grade") or "").strip().upper()
        if not grade:
            continue
        if grade not in GRADES:
            raise ValueError(f"{path}: {label}: grade {grade!r} is not one of {', '.join(GRADES)}")
        try:
            oid = int(entry.get("object_id"))
        except (TypeError, ValueError):
            raise ValueError(f"{path}: {label}: object_id {entry.get('object_id')!r} is not an integer") from None
        out.append({"tile": str(entry.get("tile") or ""), "object_id": oid, "grade": grade})
    return out, info


def import_grades(grades_path, catalog_path, out=None) -> dict:
    """Write the grades into the catalogue's ``GRADE`` column (empty = not graded), with provenance cards.

    Rows match on (TILE, OBJECT_ID), or OBJECT_ID alone when the grades carry no tile.  A grade for an object
    the catalogue lacks, or two different grades for one object, is a ValueError (nothing is written).  The
    catalogue is rewritten whole through a temporary file and a rename, so a crash leaves the old one.
    Cards: ``GRADEFIL`` (the grades file), ``GRADESHA`` (its SHA-256), ``GRADEDAT`` (import date),
    ``GRADEEXP`` (export date, JSON only), ``NGRADED``.  Returns counts per grade.
    """
    from lensengine.catalogs.catalog import read_catalog, write_table

    grades_path, catalog_path = Path(grades_path), Path(catalog_path)
    entries, info = read_grades(grades_path)
    table = read_catalog(catalog_path)
    ids = _plain(table["OBJECT_ID"]).astype(np.int64)
    tiles = [str(t) for t in _plain(table["TILE"])] if "TILE" in table.colnames else [""] * len(table)
    by_key = {(t, int(o)): i for i, (t, o) in enumerate(zip(tiles, ids))}
    by_id: dict[int, list[int]] = {}
    for i, o in enumerate(ids):
        by_id.setdefault(int(o), []).append(i)
    column = [""] * len(table)
    missing = []
    for e in entries:
        if e["tile"] and (e["tile"], e["object_id"]) in by_key:
            hits = [by_key[(e["tile"], e["object_id"])]]
        elif not e["tile"] or "TILE" not in table.colnames:
            hits = by_id.get(e["object_id"], [])
        else:
            hits = []
        if not hits:
            missing.append(f"{e['tile']}:{e['object_id']}" if e["tile"] else str(e["object_id"]))
            continue
        for i in hits:
            if column[i] and column[i] != e["grade"]:
                raise ValueError(f"{grades_path}: object {e['object_id']} is graded both {column[i]} and "
                                 f"{e['grade']}")
            column[i] = e["grade"]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise ValueError(f"{grades_path}: {len(missing)} graded object(s) not in {catalog_path}: {shown} "
                         f"(grades from another catalogue?)")
    table["GRADE"] = np.array(column, dtype="U1")
    table["GRADE"].info.description = "visual grade A, B, C or X (empty: not graded)"
    n = sum(1 for g in column if g)
    table.meta["GRADEFIL"] = (grades_path.name, "visual grades imported from this file")
    table.meta["GRADESHA"] = (file_sha256(grades_path), "SHA-256 of the grades file")
    table.meta["GRADEDAT"] = (_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"),
                              "UTC date the grades were imported")
    if info.get("exported"):
        table.meta["GRADEEXP"] = (str(info["exported"])[:19], "UTC date the grades were exported")
    table.meta["NGRADED"] = (n, "candidates with a visual grade")
    write_table(table, out or catalog_path)
    return {g: column.count(g) for g in GRADES}


# --- commands ---------------------------------------------------------------------------


class _DefaultBuild(click.Group):
    """``lensengine gallery CATALOG ...`` is short for ``lensengine gallery build CATALOG ...``."""

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["build", *args]
        return super().parse_args(ctx, args)


@click.group("gallery", cls=_DefaultBuild)
def gallery_group() -> None:
    """Look at and grade candidates in a browser: a static HTML gallery, and its grades back into the catalogue.

    \b
    Examples:
      lensengine gallery candidates.fits --tiles survey.zarr --out gallery/ --top 500 --known lenscat
      lensengine gallery import-grades candidates_grades.json candidates.fits
    """


@gallery_group.command("build")
@click.argument("catalog", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@tiles_option(exists=True, help="Survey store (zarr) the catalogue was made from.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for index.html and its images (new, empty, or an earlier gallery).")
@click.option("--top", type=click.IntRange(1), default=None, help="Only the first N candidates by --sort.")
@click.option("--sort", "sort", default=None, help="Column to order by [default: the catalogue's SCORECOL].")
@click.option("--known", default=None, metavar="lenscat|FILE",
              help="Cross-match known lenses: 'lenscat' (pip install lenscat; offline) or a FITS/CSV list.")
@click.option("--known-radius", type=click.FloatRange(0, min_open=True), default=2.0, show_default=True,
              help="Known-lens match radius (arcsec).")
@click.option("--field", "field_arcsec", type=click.FloatRange(1.0), default=DEFAULT_FIELD, show_default=True,
              help="Side of the central field shown (arcsec).")
@json_option(help="Print what was written (index, candidates, known lenses, bytes) as JSON on stdout.")
def gallery_build_cmd(catalog, store, out_dir, top, sort, known, known_radius, field_arcsec, as_json):
    """Write a static HTML gallery of CATALOG's candidates (opens from disk; no server, no network)."""
    try:
        result = build_gallery(catalog, store, out_dir, top=top, sort=sort, known=known, known_radius=known_radius,
                               field_arcsec=field_arcsec)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    if as_json:
        echo_json({"index": str(result.index), "candidates": result.n_candidates, "catalog": result.n_catalog,
                   "known": result.n_known, "bytes": result.bytes_total})
        return
    click.echo(f"wrote {result.index}: {result.n_candidates} of {result.n_catalog} candidates, "
               f"{result.n_known} known lenses, {result.bytes_total / 1e6:.1f} MB "
               f"({result.bytes_per_candidate / 1e3:.0f} kB per candidate); open it in a browser")


@gallery_group.command("import-grades")
@click.argument("grades", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("catalog", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Write here (default: in place).")
@json_option(help="Print the grade counts and the file written as JSON on stdout.")
def gallery_import_cmd(grades, catalog, out, as_json):
    """Write GRADES (the gallery's JSON or CSV export) into CATALOG's GRADE column, with provenance."""
    try:
        counts = import_grades(grades, catalog, out)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    if as_json:
        echo_json({"graded": dict(counts), "out": str(out or catalog)})
        return
    detail = ", ".join(f"{g} {n}" for g, n in counts.items())
    click.echo(f"{sum(counts.values())} candidates graded ({detail}); wrote {out or catalog}")


@hookimpl
def register_commands(cli):
    cli.add_command(gallery_group)
