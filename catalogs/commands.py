"""The ``store`` and ``catalog`` command groups (added by the built-in plugin ``lensengine.plugins.catalog_commands``).

``lensengine store info|validate|from-fits`` and ``lensengine catalog
info|crossmatch``.  Heavy modules are imported inside the commands so that
``lensengine --help`` stays fast.  Exit codes: 0 success (store valid), 1
problems found / job failed, 2 bad usage or bad input.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import click



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
@click.argument("store", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def store_info_cmd(store: Path, as_json: bool) -> None:
    """Print a store's metadata, tiles and sizes."""
    from lensengine.catalogs.validate import store_info

    try:
        info = store_info(store)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    if as_json:
        click.echo(json.dumps(info, indent=2, default=str))
        return
    click.echo(f"store        {info['path']}  (format {info['format']} v{info['format_version']})")
    click.echo(f"survey       {info['survey']}")
    click.echo(f"bands        {', '.join(info['bands'])}  (pixel scales {info['pixel_scales']})")
    click.echo(f"chunking     {info['chunk_size']} cutouts per shard, {info['inner_chunk']} per inner chunk")
    click.echo(f"codec        {info['codec']}")
    click.echo(f"truth        {', '.join(f'{k}:{v}' for k, v in info['truth_columns'].items()) or 'none'}")
    click.echo(f"cutouts      {info['total_cutouts']} in {len(info['tiles'])} tiles, "
               f"{info['bytes_on_disk'] / 2**20:.1f} MiB on disk")
    for name, t in info["tiles"].items():
        pending = f"  UNFINISHED WRITE {t['pending']}" if t["pending"] else ""
        click.echo(f"  {name:24s} {t['n_cutouts']:9d} cutouts {t['n_chunks']:5d} chunks{pending}")


@store_group.command("validate")
@click.argument("store", type=click.Path(path_type=Path))
@click.option("--no-pixels", is_flag=True, help="Skip the per-cutout NaN/constant checks.")
@click.option("--json", "as_json", is_flag=True, help="Print the problems as JSON.")
@click.pass_context
def store_validate_cmd(ctx: click.Context, store: Path, no_pixels: bool, as_json: bool) -> None:
    """Check shapes, dtypes, bands, chunking, missing or corrupt chunks and NaN/constant cutouts.

    Exit 0 when valid, 1 when problems were found (each named with tile, chunk
    and object id), 2 when STORE is not a store.
    """
    from lensengine.catalogs.validate import validate_store

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
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="Store to write (*.zarr).")
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
@click.option("--workers", default=1, show_default=True, type=int, help="Processes reading files in parallel.")
@click.pass_context
def from_fits_cmd(ctx, inputs, out, layout, catalog, bands, scales, ra, dec, ra_col, dec_col, id_col, tile,
                  survey, chunk_size, codec, no_duplicate, append, overwrite, workers) -> None:
    """Ingest FITS cutouts or mosaics into a survey store (20" stamps at 0.1"/0.3", flux-conserving).

    \b
    Examples:
      lensengine store from-fits challenge/ --out challenge.zarr            (EUC_VIS/imageEUC_VIS-<ID>.fits ...)
      lensengine store from-fits cutouts/*.fits --out cut.zarr              (VIS_FLUX, NIR_Y_FLUX ... HDUs)
      lensengine store from-fits vis.fits j.fits --catalog src.csv --out m.zarr --band VIS=F814W
    """
    from lensengine.catalogs.ingest import ingest_fits

    if out.exists() and not (append or overwrite):
        raise click.UsageError(f"{out} exists: pass --overwrite to replace it or --append to add a tile")
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
    flags = ", ".join(f"{k} {v}" for k, v in result.flag_counts.items()) or "none"
    click.echo(f"wrote {result.n_cutouts} cutouts ({result.layout} layout) to {result.store} tile {result.tile}; "
               f"flags: {flags}")


@click.group("catalog")
def catalog_group() -> None:
    """Inspect candidate catalogues and score tables; cross-match against known lenses."""


@catalog_group.command("info")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def catalog_info_cmd(path: Path) -> None:
    """Describe a candidate catalogue (FITS) or a score table (Parquet): columns, rows, provenance."""
    from lensengine.catalogs.catalog import describe_file

    try:
        click.echo(describe_file(path))
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


@catalog_group.command("crossmatch")
@click.argument("catalog", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("known", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Write here (default: in place).")
@click.option("--radius", default=2.0, show_default=True, type=float, help="Match radius (arcsec).")
def catalog_crossmatch_cmd(catalog: Path, known: Path, out: Path | None, radius: float) -> None:
    """Fill the KNOWN_LENS column of a candidate catalogue from a list of known lenses (FITS/CSV, RA/Dec)."""
    from lensengine.catalogs.catalog import read_catalog, write_table
    from lensengine.catalogs.crossmatch import crossmatch_known

    try:
        table = crossmatch_known(read_catalog(catalog), known, radius_arcsec=radius)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    write_table(table, out or catalog)
    n = int((table["KNOWN_LENS"] != "").sum())
    click.echo(f"{n} of {len(table)} candidates match a known lens within {radius}\"; wrote {out or catalog}")


def register_commands(cli):
    """Add the ``store`` and ``catalog`` groups to ``cli`` (called by :mod:`lensengine.plugins.catalog_commands`)."""
    cli.add_command(store_group)
    cli.add_command(catalog_group)
