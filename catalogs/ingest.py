"""FITS ingestion into a survey store (``lensengine store from-fits``).

Three input layouts (docs/store-format.md, "Ingestion"):

``bologna``  the Euclid lens-finding challenge: ``ROOT/EUC_VIS/imageEUC_VIS-<ID>.fits``,
             ``ROOT/EUC_Y/imageEUC_Y-<ID>.fits``, ``EUC_J``, ``EUC_H``;
``cutouts``  one multi-extension FITS file per cutout, bands in named HDUs (``VIS_FLUX``,
             ``NIR_Y_FLUX``, ``NIR_J_FLUX``, ``NIR_H_FLUX``) or any HDU mapped with ``--band``;
``mosaic``   one FITS image with a WCS per band plus a source catalogue (FITS or CSV with RA/Dec).

In all three, every band is cut to a 20" x 20" stamp centred on the source
(WCS position, or the image centre for cutout files) and resampled with exact
area-weighted rebinning (flux-conserving, :mod:`lensengine.catalogs._resample`)
to 0.1" (VIS, 200 x 200) and 0.3" (NISP, 66 x 66).

A new store appears whole or not at all (:meth:`SurveyStore.build`): a failed
or killed ingestion leaves nothing that blocks the next try or passes for a
store.  ``--append`` adds a tile; if that fails, the tile is removed again.  A stamp reaching beyond
its image is filled with a sky-like level and flagged ``EDGE_CLIPPED``.  A
missing band is filled from the nearest available band in wavelength
(:data:`FILL_ORDER`, the paper's Table 2 rule) and flagged ``BAND_DUPLICATED``.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lensengine.catalogs import _fits_sources as src
from lensengine.catalogs._resample import cut_and_resample
from lensengine.catalogs.flags import Flag
from lensengine.catalogs._location import Location
from lensengine.catalogs.store import CutoutBatch, SurveyStore, as_location
from lensengine.catalogs.vocabulary import BANDS, NATIVE_STAMP, NISP_BANDS, PIXEL_SCALE

__all__ = ["FILL_ORDER", "IngestResult", "make_cutout", "ingest_fits", "detect_layout"]

log = logging.getLogger(__name__)

#: For a missing band, the bands to copy from, nearest in wavelength first
#: (VIS 0.72 um, Y 1.08, J 1.37, H 1.77): missing Y <- J, J <- Y, H <- J, VIS <- Y.
FILL_ORDER = {
    "VIS": ("Y", "J", "H"),
    "Y": ("J", "VIS", "H"),
    "J": ("Y", "H", "VIS"),
    "H": ("J", "Y", "VIS"),
}
LAYOUTS = ("bologna", "cutouts", "mosaic")


@dataclass
class IngestResult:
    store: Path | str
    tile: str
    layout: str
    n_cutouts: int
    flag_counts: dict[str, int] = field(default_factory=dict)


def make_cutout(bands: dict[str, src.BandImage], duplicate: bool = True):
    """Build one cutout's (vis (200,200), nisp (3,66,66), flags) from its band images.

    A band without an image is copied from the nearest available one
    (:data:`FILL_ORDER`), resampled to the missing band's grid, and the
    cutout is flagged ``BAND_DUPLICATED``; with ``duplicate=False`` it is left
    all-NaN and flagged ``MISSING_BAND``.
    """
    flags = np.uint32(0)
    planes = {}
    for band in BANDS:
        source = bands.get(band)
        if source is None and duplicate:
            donor = next((b for b in FILL_ORDER[band] if b in bands), None)
            if donor is not None:
                source = bands[donor]
                flags |= np.uint32(Flag.BAND_DUPLICATED)
        n = NATIVE_STAMP[band]
        if source is None:
            planes[band] = np.full((n, n), np.nan, dtype=np.float32)
            flags |= np.uint32(Flag.MISSING_BAND)
            continue
        stamp, clipped = cut_and_resample(source.image, source.centre_xy, source.scale, PIXEL_SCALE[band], n)
        if clipped:
            flags |= np.uint32(Flag.EDGE_CLIPPED)
        planes[band] = stamp
    return planes["VIS"], np.stack([planes[b] for b in NISP_BANDS]), flags


def detect_layout(inputs: list[Path], catalog: Path | None) -> str:
    if catalog is not None:
        return "mosaic"
    if len(inputs) == 1 and inputs[0].is_dir() and any(p.is_dir() and p.name.upper().startswith("EUC_")
                                                       for p in inputs[0].iterdir()):
        return "bologna"
    return "cutouts"


def _fits_files(inputs: list[Path]) -> list[Path]:
    files: list[Path] = []
    for p in inputs:
        if p.is_dir():
            files += sorted(q for q in p.iterdir() if q.name.lower().endswith((".fits", ".fit", ".fits.gz")))
        elif p.is_file():
            files.append(p)
        else:
            raise ValueError(f"input {p} does not exist")
    if not files:
        raise ValueError(f"no FITS files in {', '.join(map(str, inputs))}")
    return files


def _task(job: tuple) -> list[tuple]:
    """Run one ingestion task (a picklable tuple) and return cutout records."""
    kind, args, duplicate = job
    if kind == "bologna":
        dirs, ids, start, scales = args
        sources = [src.read_bologna(dirs, cid, start + k, scales) for k, cid in enumerate(ids)]
    elif kind == "cutouts":
        files, start, names, scales, radec = args
        sources = [src.read_mef(f, start + k, names, scales, radec) for k, f in enumerate(files)]
    else:
        mosaics, ids, ra, dec, scales = args
        sources = src.read_mosaic_sources(mosaics, ids, ra, dec, scales)
    return [(s.object_id, s.ra, s.dec, *make_cutout(s.bands, duplicate)) for s in sources]


def _plan(layout: str, inputs: list[Path], names, scales, catalog, columns, radec, per_task: int, duplicate):
    """The list of tasks for a layout, and the total number of cutouts."""
    if layout == "bologna":
        if len(inputs) != 1 or not inputs[0].is_dir():
            raise ValueError("the bologna layout takes one directory holding EUC_VIS, EUC_Y, EUC_J, EUC_H")
        dirs, ids = src.bologna_ids(inputs[0], names)
        jobs = [("bologna", (dirs, ids[i:i + per_task], i, scales), duplicate) for i in range(0, len(ids), per_task)]
        return jobs, len(ids)
    if layout == "cutouts":
        files = _fits_files(inputs)
        if radec is not None and len(files) != 1:
            raise ValueError("--ra/--dec apply to a single cutout file only")
        jobs = [("cutouts", (files[i:i + per_task], i, names, scales, radec), duplicate)
                for i in range(0, len(files), per_task)]
        return jobs, len(files)
    if catalog is None:
        raise ValueError("the mosaic layout needs --catalog (FITS or CSV with RA/Dec)")
    mosaics = src.mosaic_bands(_fits_files(inputs), names)
    ids, ra, dec = src.read_catalog_positions(catalog, *columns)
    jobs = [("mosaic", (mosaics, ids[i:i + per_task], ra[i:i + per_task], dec[i:i + per_task], scales), duplicate)
            for i in range(0, len(ids), per_task)]
    return jobs, len(ids)


def ingest_fits(inputs, store_path, *, layout: str = "auto", tile: str = "fits", catalog=None,
                band_map: dict[str, str] | None = None, pixel_scales: dict[str, float] | None = None,
                ra_col: str | None = None, dec_col: str | None = None, id_col: str | None = None,
                radec: tuple[float, float] | None = None, survey: str = "fits", chunk_size: int = 1024,
                codec: str = "lossless", append: bool = False, overwrite: bool = False, duplicate: bool = True,
                workers: int = 1, progress: bool = True, command: str | None = None) -> IngestResult:
    """Ingest FITS images into a survey store (a local path or an fsspec URL); returns what was written.

    Raises ValueError for bad input (unknown layout, unmapped bands, a missing
    pixel scale, an unreadable catalogue), FileExistsError when the store
    exists and neither ``append`` nor ``overwrite`` is given.
    """
    inputs = [Path(p) for p in ([inputs] if isinstance(inputs, (str, Path)) else inputs)]
    catalog = Path(catalog) if catalog is not None else None
    if layout == "auto":
        layout = detect_layout(inputs, catalog)
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}: expected one of {', '.join(LAYOUTS)} or auto")
    names = src.band_names(band_map)
    per_task = max(1, min(256, chunk_size))
    jobs, total = _plan(layout, inputs, names, pixel_scales, catalog, (ra_col, dec_col, id_col), radec,
                        per_task, duplicate)
    from lensengine import __version__

    provenance = {"software": f"lensengine {__version__}", "ingest_layout": layout,
                  "inputs": [str(p) for p in inputs], "catalog": str(catalog) if catalog else None,
                  "band_map": dict(band_map or {}), "pixel_scales": dict(pixel_scales or {}),
                  "resampling": "exact area-weighted rebinning (flux-conserving), 20 arcsec stamps",
                  "missing_band_rule": "duplicate nearest band in wavelength" if duplicate else "NaN + MISSING_BAND",
                  "command": command}
    store_path = as_location(store_path)
    if append and Location(store_path).exists():
        store = SurveyStore.open(store_path, mode="a")
        if tile in store.tiles:
            raise ValueError(f"tile {tile!r} already exists in {store_path}; choose another --tile")
        try:
            counts, n = _fill(store, tile, jobs, total, layout, workers, progress)
        except BaseException:
            if tile in store.tiles:
                store.remove_tile(tile)
            raise
    else:
        with SurveyStore.build(store_path, survey=survey, chunk_size=chunk_size, codec=codec,
                               provenance=provenance, overwrite=overwrite) as store:
            counts, n = _fill(store, tile, jobs, total, layout, workers, progress)
    return IngestResult(store_path, tile, layout, n, counts)


def _fill(store: SurveyStore, tile: str, jobs, total: int, layout: str, workers: int,
          progress: bool) -> tuple[dict[str, int], int]:
    """Run the ingestion tasks and append their cutouts to ``tile``; returns the flag counts and the cutouts written."""
    chunk_size = store.chunk_size
    counts = {f.name: 0 for f in Flag if f.value}
    buffer: list[tuple] = []

    def flush(final: bool) -> None:
        while len(buffer) >= chunk_size or (final and buffer):
            rows, buffer[:] = buffer[:chunk_size], buffer[chunk_size:]
            cols = list(zip(*rows))
            store.append(tile, CutoutBatch(object_id=np.array(cols[0], np.int64), ra=np.array(cols[1], np.float64),
                                           dec=np.array(cols[2], np.float64), vis=np.stack(cols[3]),
                                           nisp=np.stack(cols[4]), flags=np.array(cols[5], np.uint32)))

    with _progress(progress, total, f"ingesting {layout}") as advance:
        results = _run(jobs, workers)
        for records in results:
            for rec in records:
                for f in Flag:
                    if f.value and int(rec[5]) & f.value:
                        counts[f.name] += 1
            buffer.extend(records)
            flush(final=False)
            advance(len(records))
        flush(final=True)
    return {k: v for k, v in counts.items() if v}, store.n_cutouts(tile)


def _run(jobs, workers: int):
    if workers <= 1 or len(jobs) <= 1:
        return map(_task, jobs)
    return _run_parallel(jobs, workers)


def _run_parallel(jobs, workers: int):
    import multiprocessing

    # spawn, not fork: the parent runs zarr's event-loop thread, and forking a threaded process can deadlock
    pool = cf.ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
    try:
        yield from pool.map(_task, jobs)
    finally:
        pool.shutdown(cancel_futures=True)


class _progress:
    """A rich progress bar, silent when disabled or not on a terminal; yields ``advance(n)``."""

    def __init__(self, enabled: bool, total: int, label: str):
        self.bar = None
        if enabled and sys.stderr.isatty():
            from rich.progress import Progress

            self.bar = Progress(transient=True)
            self.task = self.bar.add_task(label, total=total)

    def __enter__(self):
        if self.bar is None:
            return lambda n: None
        self.bar.start()
        return lambda n: self.bar.advance(self.task, n)

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.stop()
        return False
