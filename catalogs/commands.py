"""The ``store`` and ``catalog`` command groups (added by the built-in plugin ``lensengine.plugins.catalog_commands``).

``lensengine store info|validate|from-fits|concat|top`` and ``lensengine catalog
info|crossmatch``.  Heavy modules are imported inside the commands so that
``lensengine --help`` stays fast.  Exit codes: 0 success (store valid), 1
problems found / job failed, 2 bad usage or bad input.

The options follow the CLI vocabulary (docs/cli.md, ``lensengine.engine.options``); this layer may
not import the engine, so ``--tiles`` and ``--json`` are declared here with the same names, help and
defaults, which ``tests/engine/test_cli_vocabulary.py`` checks.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import click

_JSON_HELP = "Print the results as JSON on stdout (logs and progress stay on stderr)."


class StoreLocation(click.ParamType):
    """A survey store: a local path (given back as a :class:`Path`) or an fsspec URL (``s3://``, ``gs://``,
    ``https://``; kept a string, since ``Path`` folds ``//``).  URL credentials come from the environment
    and the standard config files, never from options.  ``exists`` checks local paths only (a URL is
    checked when the store is opened).
    """

    name = "store"

    def __init__(self, exists: bool = False):
        self.exists = exists

    def convert(self, value, param, ctx):
        from lensengine.catalogs._location import as_location

        location = as_location(value)
        if self.exists and isinstance(location, Path) and not location.exists():
            self.fail(f"{location} does not exist", param, ctx)
        return location


#: The click type of every option or argument naming a survey store (``engine.options.tiles_option`` too).
STORE = StoreLocation()


def _json_option(help: str = _JSON_HELP):
    return click.option("--json", "as_json", is_flag=True, help=help)


def _store_input(func):
    """``STORE`` or ``--tiles STORE``: the store commands take their store either way (docs/cli.md)."""
    func = click.option("--tiles", "tiles", type=STORE, default=None, metavar="STORE",
                        help="Survey store (zarr) to read, e.g. survey.zarr (or give it as the argument).")(func)
    return click.argument("store", required=False, type=STORE)(func)


def _pick_store(store: Path | str | None, tiles: Path | str | None) -> Path | str:
    if store is not None and tiles is not None and store != tiles:
        raise click.UsageError(f"two stores given ({store} and --tiles {tiles}): give one")
    if store is None and tiles is None:
        raise click.UsageError("give the store: --tiles STORE (or STORE as the argument)")
    return store if store is not None else tiles


def _human_dtype(code: str) -> str:
    """``<f4`` -> ``float32``: what a reader expects to see for a truth column's type."""
    import numpy as np

    try:
        return np.dtype(code).name
    except TypeError:
        return str(code)


def _key_values(values: tuple[str, ...], option: str, convert=str) -> dict:
    out = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise click.UsageError(f"{option} {item!r}: expected BAND=VALUE, e.g. {option} VIS=F814W")
        try:
            out[key.strip().upper()] = convert(value.strip())
        except ValueError:
            raise click.UsageError(f"{option} {item!r}: {value!r} is not a valid value") from None
    return out


def _parse_radec(ra: str | None, dec: str | None) -> tuple[float, float] | None:
    if ra is None and dec is None:
        return None
    if ra is None or dec is None:
        raise click.UsageError("--ra and --dec go together")
    from astropy.coordinates import SkyCoord

    sexagesimal = ":" in ra or " " in ra.strip() or "h" in ra
    try:
        coord = SkyCoord(ra, dec, unit=("hourangle" if sexagesimal else "deg", "deg"), frame="icrs")
    except ValueError as exc:
        raise click.UsageError(f"--ra {ra!r} --dec {dec!r}: {exc}") from None
    return float(coord.ra.deg), float(coord.dec.deg)


@click.group("store")
def store_group() -> None:
    """Inspect, check and fill survey stores (zarr v3 cutout stores)."""


@store_group.command("info")
@_store_input
@_json_option()
def store_info_cmd(store: Path | None, tiles: Path | None, as_json: bool) -> None:
    """Print a store's metadata, tiles and sizes: `lensengine store info --tiles STORE` (or STORE)."""
    from lensengine.catalogs.validate import store_info

    store = _pick_store(store, tiles)
    try:
        info = store_info(store)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    if as_json:
        click.echo(json.dumps(info, indent=2, default=str))
        return
    click.echo(f"store        {info['path']}  (format {info['format']} v{info['format_version']})")
    click.echo(f"survey       {info['survey']}")
    scales = ", ".join(f"{band} {scale:g}\u2033/px" for band, scale in info["pixel_scales"].items())
    click.echo(f"bands        {', '.join(info['bands'])}  (pixel scales {scales})")
    click.echo(f"chunking     {info['chunk_size']} cutouts per shard, {info['inner_chunk']} per inner chunk")
    click.echo(f"codec        {info['codec']}")
    truth = ", ".join(f"{k} ({_human_dtype(v)})" for k, v in info["truth_columns"].items())
    click.echo(f"truth        {truth or 'none'}")
    click.echo(f"cutouts      {info['total_cutouts']} in {len(info['tiles'])} tiles, "
               f"{info['bytes_on_disk'] / 2**20:.1f} MiB on disk")
    for name, t in info["tiles"].items():
        pending = f"  UNFINISHED WRITE {t['pending']}" if t["pending"] else ""
        click.echo(f"  {name:24s} {t['n_cutouts']:9d} cutouts {t['n_chunks']:5d} chunks{pending}")


@store_group.command("validate")
@_store_input
@click.option("--no-pixels", is_flag=True, help="Skip the per-cutout NaN/constant checks.")
@_json_option(help="Print the problems as JSON on stdout (a list; empty when the store is valid).")
@click.pass_context
def store_validate_cmd(ctx: click.Context, store: Path | None, tiles: Path | None, no_pixels: bool,
                       as_json: bool) -> None:
    """Check shapes, dtypes, bands, chunking, missing or corrupt chunks and NaN/constant cutouts.

    `lensengine store validate --tiles STORE` (or STORE).  Exit 0 when valid, 1
    when problems were found (each named with tile, chunk and object id), 2
    when STORE is not a store.
    """
    from lensengine.catalogs.validate import validate_store

    store = _pick_store(store, tiles)
    quiet = bool((ctx.find_root().obj or {}).get("quiet"))
    bar = None
    if not quiet and sys.stderr.isatty():
        from rich.progress import Progress

        bar = Progress(transient=True)
        task = bar.add_task("validating", total=None)
        bar.start()

    def progress(tile: str, index: int, n_chunks: int) -> None:
        if bar is not None:
            bar.update(task, description=f"validating {tile}", completed=index + 1, total=n_chunks)

    try:
        problems = validate_store(store, check_pixels=not no_pixels, progress=progress)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    finally:
        if bar is not None:
            bar.stop()
    if as_json:
        click.echo(json.dumps([p.to_dict() for p in problems], indent=2))
    else:
        for p in problems:
            click.echo(str(p))
        click.echo(f"{store}: {'valid' if not problems else f'{len(problems)} problem(s)'}")
    ctx.exit(1 if problems else 0)


@store_group.command("from-fits")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--out", "out", required=True, type=STORE,
              help="Store to write (*.zarr): a local path, or an s3:// or gs:// URL (credentials from the "
                   "environment, e.g. AWS_PROFILE or AWS_ACCESS_KEY_ID; AWS_ENDPOINT_URL for S3-compatible servers).")
@click.option("--layout", type=click.Choice(["auto", "bologna", "cutouts", "mosaic"]), default="auto",
              show_default=True, help="Input layout (auto: mosaic with --catalog, bologna for EUC_* dirs).")
@click.option("--catalog", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Source catalogue (FITS/CSV with RA/Dec) for mosaics.")
@click.option("--band", "bands", multiple=True, metavar="BAND=NAME",
              help="Map an HDU name/index, FILTER value, file-name token or directory to VIS/Y/J/H (repeatable).")
@click.option("--pixel-scale", "scales", multiple=True, metavar="BAND=ARCSEC",
              help="Pixel scale of a band's input images (overrides the WCS; needed without one).")
@click.option("--ra", help="RA of a single cutout file without WCS (deg or hh:mm:ss).")
@click.option("--dec", help="Dec of a single cutout file without WCS (deg or dd:mm:ss).")
@click.option("--ra-col", help="Catalogue RA column (default: RA/ra/RAJ2000...).")
@click.option("--dec-col", help="Catalogue Dec column.")
@click.option("--id-col", help="Catalogue object-ID column (default: OBJECT_ID/ID, else the row number).")
@click.option("--tile", default="fits", show_default=True, help="Tile name to write.")
@click.option("--survey", default="fits", show_default=True, help="Survey name in the store metadata.")
@click.option("--chunk-size", default=1024, show_default=True, type=int, help="Cutouts per shard (task).")
@click.option("--codec", default="lossless", show_default=True, help="lossless, lossy or bitround:N.")
@click.option("--no-duplicate", is_flag=True, help="Leave missing bands NaN (MISSING_BAND) instead of copying.")
@click.option("--append", is_flag=True, help="Add a new tile to an existing store.")
@click.option("--overwrite", is_flag=True, help="Replace an existing store.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1),
              help="Processes reading files in parallel.")
@_json_option()
@click.pass_context
def from_fits_cmd(ctx, inputs, out, layout, catalog, bands, scales, ra, dec, ra_col, dec_col, id_col, tile,
                  survey, chunk_size, codec, no_duplicate, append, overwrite, workers, as_json) -> None:
    """Ingest FITS cutouts or mosaics into a survey store (20" stamps at 0.1"/0.3", flux-conserving).

    \b
    Examples:
      lensengine store from-fits challenge/ --out challenge.zarr            (EUC_VIS/imageEUC_VIS-<ID>.fits ...)
      lensengine store from-fits cutouts/*.fits --out cut.zarr              (VIS_FLUX, NIR_Y_FLUX ... HDUs)
      lensengine store from-fits vis.fits j.fits --catalog src.csv --out m.zarr --band VIS=F814W
    """
    from lensengine.catalogs.ingest import ingest_fits

    quiet = bool((ctx.find_root().obj or {}).get("quiet"))
    try:
        result = ingest_fits(list(inputs), out, layout=layout, tile=tile, catalog=catalog,
                             band_map=_key_values(bands, "--band"),
                             pixel_scales=_key_values(scales, "--pixel-scale", float),
                             ra_col=ra_col, dec_col=dec_col, id_col=id_col, radec=_parse_radec(ra, dec),
                             survey=survey, chunk_size=chunk_size, codec=codec, append=append, overwrite=overwrite,
                             duplicate=not no_duplicate, workers=workers, progress=not quiet,
                             command=" ".join(shlex.quote(a) for a in sys.argv))
    except (ValueError, FileExistsError, OSError) as exc:
        raise click.UsageError(str(exc)) from None
    if as_json:
        click.echo(json.dumps({"store": str(result.store), "tile": result.tile, "layout": result.layout,
                               "n_cutouts": result.n_cutouts, "flag_counts": dict(result.flag_counts)}, indent=2))
        return
    flags = ", ".join(f"{k} {v}" for k, v in result.flag_counts.items()) or "none"
    click.echo(f"wrote {result.n_cutouts} cutouts ({result.layout} layout) to {result.store} tile {result.tile}; "
               f"flags: {flags}")


@store_group.command("concat")
@click.argument("sources", nargs=-1, required=True, metavar="STORE[:N]...")
@click.option("--out", "out", required=True, type=STORE, help="New store to write, e.g. train.zarr.")
@click.option("--tile", default="cutouts", show_default=True, help="Name of the output's one tile.")
@click.option("--overwrite", is_flag=True, help="Replace an existing store.")
@_json_option()
@click.pass_context
def store_concat_cmd(ctx, sources, out, tile, overwrite, as_json) -> None:
    """Join stores into one: each whole, or its first N cutouts (STORE:N), in the order given.

    The stores must hold the same bands and truth columns; the output takes the first one's chunk
    size and codec, and records its sources in its provenance.  Used to build a training store from
    several simulations (and from mined hard negatives, see `lensengine store top`).

    \b
    Example:
      lensengine store concat --out train.zarr mix.zarr:6000 negatives.zarr:1000 hard.zarr
    """
    from lensengine.catalogs.store import ChunkReadError
    from lensengine.catalogs.subset import concat_stores, parse_part

    quiet = bool((ctx.find_root().obj or {}).get("quiet"))
    parts = [parse_part(text) for text in sources]
    try:
        n = concat_stores(out, parts, tile=tile, overwrite=overwrite,
                          command=" ".join(shlex.quote(a) for a in sys.argv),
                          progress=None if quiet or as_json else _progress_echo("joined"))
    except ChunkReadError as exc:
        raise click.ClickException(f"{_unreadable(exc)}; nothing was written to {out}") from None
    except (ValueError, FileExistsError, OSError) as exc:
        raise click.UsageError(str(exc)) from None
    if as_json:
        click.echo(json.dumps({"store": str(out), "tile": tile, "n_cutouts": n}, indent=2))
        return
    click.echo(f"wrote {n} cutouts from {len(parts)} store(s) to {out} tile {tile}")


@store_group.command("top")
@_store_input
@click.option("--scores", "scores", required=True, type=click.Path(exists=True, path_type=Path),
              help="The store's score table (`lensengine run --scores`, Parquet).")
@click.option("--by", "column", required=True, metavar="COLUMN",
              help="Score column that ranks the cutouts, e.g. P_OU_VIS or P_ENSEMBLE.")
@click.option("-n", "--top", "n", required=True, type=click.IntRange(1), help="How many cutouts to keep.")
@click.option("--out", "out", required=True, type=STORE, help="New store to write, e.g. hard.zarr.")
@click.option("--tile", default="cutouts", show_default=True, help="Name of the output's one tile.")
@click.option("--overwrite", is_flag=True, help="Replace an existing store.")
@_json_option()
def store_top_cmd(store, tiles, scores, column, n, out, tile, overwrite, as_json) -> None:
    """Keep the N cutouts of a store that a score column ranks highest (hard-negative mining).

    Scored on a pool of non-lenses, these are a network's hardest negatives: join them to a
    training store with `lensengine store concat`.  Rows are matched to the store by TILE and ROW
    (and checked by OBJECT_ID when the table has it); unscored rows (flagged cutouts) are never
    kept; ties go to the earlier row.  The output keeps store order and records the column and the
    lowest score kept in its provenance.

    \b
    Example:
      lensengine run --tiles pool.zarr --model OU-VIS --out pool.fits
      lensengine store top pool.zarr --scores pool_scores.parquet --by P_OU_VIS -n 1000 --out hard.zarr
    """
    from lensengine.catalogs.store import ChunkReadError
    from lensengine.catalogs.subset import top_cutouts

    source = _pick_store(store, tiles)
    try:
        result = top_cutouts(source, scores, column, n, out, tile=tile, overwrite=overwrite,
                             command=" ".join(shlex.quote(a) for a in sys.argv))
    except ChunkReadError as exc:
        raise click.ClickException(f"{_unreadable(exc)}; nothing was written to {out}") from None
    except (ValueError, FileExistsError, OSError) as exc:
        raise click.UsageError(str(exc)) from None
    if as_json:
        click.echo(json.dumps({"store": str(out), "tile": tile, **result}, indent=2))
        return
    short = f" (only {result['n_scored']} scored)" if result["n_written"] < n else ""
    lowest = "" if result["threshold"] is None else f", {column} down to {result['threshold']:.4g}"
    click.echo(f"wrote the top {result['n_written']} of {source} by {column}{short} to {out} tile {tile}{lowest}")


def _unreadable(exc) -> str:
    """What a :class:`ChunkReadError` says, with what to do about it (exit code 1: the job failed)."""
    return (f"could not read a source store's {exc} (`lensengine store validate` lists every bad chunk; "
            f"leave that store out or give only its first cutouts before the chunk, STORE:N)")


def _progress_echo(verb: str):
    """A progress callback printing every 10 000 cutouts on stderr (long joins stay visibly alive)."""
    state = {"next": 10_000}

    def report(n: int) -> None:
        if n >= state["next"]:
            click.echo(f"{verb} {n} cutouts ...", err=True)
            state["next"] = (n // 10_000 + 1) * 10_000

    return report


@click.group("catalog")
def catalog_group() -> None:
    """Inspect candidate catalogues and score tables; cross-match against known lenses."""


@catalog_group.command("info")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@_json_option()
def catalog_info_cmd(path: Path, as_json: bool) -> None:
    """Describe a candidate catalogue (FITS) or a score table (Parquet file or folder): columns, rows, provenance."""
    from lensengine.catalogs.catalog import describe_file

    try:
        if as_json:
            click.echo(json.dumps(_describe_json(path), indent=2, default=str))
        else:
            click.echo(describe_file(path))
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


def _describe_json(path: Path) -> dict:
    """What ``catalog info`` prints, as data: kind, rows, each column's type/unit/description, provenance."""
    from lensengine.catalogs.catalog import read_catalog, read_scores

    scores = path.suffix.lower() in (".parquet", ".pq")
    table = read_scores(path) if scores else read_catalog(path)
    provenance = ({k: v for k, v in table.meta.items()} if scores
                  else {k: v[0] if isinstance(v, tuple) else v for k, v in table.meta.items()})
    return {"path": str(path), "kind": "score table" if scores else "candidate catalogue", "rows": len(table),
            "columns": [{"name": name, "dtype": str(table[name].dtype),
                         "unit": str(table[name].unit) if getattr(table[name], "unit", None) else None,
                         "description": table[name].info.description or None} for name in table.colnames],
            "provenance": provenance}


@catalog_group.command("crossmatch")
@click.argument("catalog", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("known", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Write here (default: in place).")
@click.option("--radius", default=2.0, show_default=True, type=float, help="Match radius (arcsec).")
@_json_option()
def catalog_crossmatch_cmd(catalog: Path, known: Path, out: Path | None, radius: float, as_json: bool) -> None:
    """Fill the KNOWN_LENS column of a candidate catalogue from a list of known lenses.

    KNOWN is a FITS/CSV file with RA/Dec columns, or the word ``lenscat``: the lenscat catalogue of known
    lenses shipped inside its wheel (``pip install --no-deps lenscat``; works offline).
    """
    from lensengine.catalogs.catalog import read_catalog, write_table
    from lensengine.catalogs.crossmatch import LENSCAT, crossmatch_known

    if str(known) != LENSCAT and not known.is_file():
        raise click.BadParameter(f"{known} is not a file (give a FITS/CSV list of known lenses or 'lenscat')",
                                 param_hint="KNOWN")
    try:
        table = crossmatch_known(read_catalog(catalog), known, radius_arcsec=radius)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    write_table(table, out or catalog)
    n = int((table["KNOWN_LENS"] != "").sum())
    if as_json:
        click.echo(json.dumps({"matched": n, "candidates": len(table), "radius_arcsec": radius,
                               "out": str(out or catalog)}, indent=2))
        return
    click.echo(f"{n} of {len(table)} candidates match a known lens within {radius}\"; wrote {out or catalog}")


def register_commands(cli):
    """Add the ``store`` and ``catalog`` groups to ``cli`` (called by :mod:`lensengine.plugins.catalog_commands`)."""
    cli.add_command(store_group)
    cli.add_command(catalog_group)
